"""What the benchmarks share: the benchmark mixture, independent noise sets, baseline scores."""

from __future__ import annotations

import jax

import bespoke_jax as bj
from bespoke_jax import solvers

# (label, solver, grid): every baseline on its default grid.
DEFAULT_RUNS = tuple((name, name, None) for name in solvers.NAMES)


def mixture_field(dim: int = 64):
    """The CondOT velocity of ``GaussianMixture.random(key(0), 32, dim, 0.05)``: the benchmark
    mixture (32 components, std 0.05) in dimension ``dim``."""
    return bj.GaussianMixture.random(jax.random.key(0), 32, dim, 0.05).velocity(bj.cond_ot())


def noise_sets(shape, sizes, seed: int = 1) -> list[jax.Array]:
    """Independent noise sets (training, validation, held-out test...), ``(n, *shape)`` each."""
    keys = jax.random.split(jax.random.key(seed), len(sizes))
    return [jax.random.normal(key, (n, *shape)) for key, n in zip(keys, sizes, strict=True)]


def baseline_psnrs(u, x0, x1, nfe: int, scheduler, args=None, runs=DEFAULT_RUNS) -> dict:
    """PSNR against ``x1`` of every ``(label, solver, grid)`` run that can spend ``nfe`` exactly,
    by label (jitted solves of ``x0``)."""
    out = {}
    for label, name, grid in runs:
        try:
            solvers.steps_for(name, nfe)
        except ValueError:
            continue
        solver = solvers.SOLVERS[name]

        @jax.jit
        def sample(x0, args, solver=solver, grid=grid):
            return solver(u, x0, nfe=nfe, args=args, scheduler=scheduler, grid=grid)

        out[label] = float(bj.psnr(sample(x0, args), x1))
    return out
