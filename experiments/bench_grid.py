"""Benchmark of learned time grids (``bj.learned_grid``) against fixed grids and BNS.

On the closed-form mixture of ``bench_bns`` (64-d, 32 components, std 0.05, CondOT) and on the
shipped digits model at guidance 2: for Euler, DPM-Solver++(2M) and UniPC at each NFE, the
held-out PSNR (R = 2) on the fixed grids ``uniform``, ``logsnr`` and ``edm``, then the grid
learned with the family's defaults (Adam 3e-2, cosine decay, 600 steps, batch 64) from the
solver's default grid and from its best fixed grid, with the training wall time; and BNS
(UniPC init, the family's default training) at the same NFE.

Run ``python experiments/bench_grid.py`` (``--quick``: NFE 4 and 8, 200 steps, small sets,
learned from the best fixed grid only; ``--nfe``, ``--steps`` override); the tables are printed
and written to ``runs/bench_grid.md``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp

import bespoke_jax as bj
from bespoke_jax import solvers
from bespoke_jax.app.report import atomic_write
from experiments.bench_bns import SIZES, fit, markdown, mixture_problem, noise_sets

ROOT = Path(__file__).resolve().parents[1]
NFES = (4, 6, 8, 10, 16)
SOLVERS = ("euler", "dpm_solver_pp", "unipc")


def fixed_grids(u, x_test, x1_test, nfe: int, name: str, scheduler, args=None) -> dict:
    """Held-out PSNR of solver ``name`` on each named grid."""
    out = {}
    fn = solvers.SOLVERS[name]
    for grid in solvers.GRIDS:
        run = jax.jit(lambda x, a, g=grid: fn(u, x, nfe=nfe, args=a, scheduler=scheduler, grid=g))
        out[grid] = float(bj.psnr(run(x_test, args), x1_test))
    return out


def problem_rows(problem: str, u, noise, x1_test, scheduler, args, nfes, steps, both_inits):
    """One row per (NFE, solver): fixed grids, learned grids, BNS at that NFE."""
    rows, data = [], {}
    for nfe in nfes:
        family = bj.bns(nfe, init="unipc", scheduler=scheduler)
        bns_psnr, bns_wall, _, _ = fit(family, u, *noise, x1_test, data, args, steps)
        for name in SOLVERS:
            fixed = fixed_grids(u, noise[2], x1_test, nfe, name, scheduler, args[2])
            best = max(fixed, key=fixed.get)
            row = {"model": problem, "NFE": nfe, "solver": name, **fixed, "best fixed": best}
            inits = {"learned (default init)": None, "learned (best init)": best}
            if not both_inits:
                inits = {"learned (best init)": best}
            for label, init_grid in inits.items():
                grid = bj.learned_grid(nfe, solver=name, scheduler=scheduler, init_grid=init_grid)
                value, wall, _, _ = fit(grid, u, *noise, x1_test, data, args, steps)
                row[label], row[f"{label} s"] = value, wall
            learned = max(row[label] for label in inits)
            row["gain over best fixed"] = learned - fixed[best]
            row["BNS"], row["BNS s"] = bns_psnr, bns_wall
            rows.append(row)
            print(f"{problem} NFE {nfe} {name}: {fixed[best]:.2f} -> {learned:.2f} dB", flush=True)
    return rows


def target_text(rows, nfe: int = 8, target: float = 2.0) -> str:
    """Which solvers gain ``target`` dB over their best fixed grid at ``nfe``."""
    at = [row for row in rows if row["NFE"] == nfe]
    if not at:
        return f"(No NFE {nfe} rows: the +{target:g} dB target is read at NFE {nfe}.)"
    met = [f"{r['solver']} on {r['model']} ({r['gain over best fixed']:+.2f})" for r in at
           if r["gain over best fixed"] >= target]  # fmt: skip
    missed = [f"{r['solver']} on {r['model']} ({r['gain over best fixed']:+.2f})" for r in at
              if r["gain over best fixed"] < target]  # fmt: skip
    return (
        f"Target at NFE {nfe}: a learned grid at least {target:g} dB over its solver's best "
        f"fixed grid. Met: {', '.join(met) or 'none'}. Missed: {', '.join(missed) or 'none'}."
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="NFE 4 and 8, 200 steps, small sets")
    parser.add_argument("--nfe", type=int, action="append", help="NFE values (repeatable)")
    parser.add_argument("--steps", type=int, help="training steps of every solver")
    options = parser.parse_args(argv)
    quick = options.quick
    sizes = (128, 128, 256) if quick else SIZES
    nfes = options.nfe or ((4, 8) if quick else NFES)
    steps = options.steps or (200 if quick else None)
    start = time.perf_counter()
    scheduler = bj.cond_ot()
    u, x_train, x_val, x_test, x1_test = mixture_problem(sizes)
    noise = (x_train, x_val, x_test)
    options = {"nfes": nfes, "steps": steps, "both_inits": not quick}
    rows = problem_rows("mixture", u, noise, x1_test, scheduler, (None,) * 3, **options)
    model = bj.pretrained("digits")
    noise = noise_sets(model.shape, sizes, seed=2)
    guided = tuple(model.args(jnp.arange(x.shape[0]) % 10, 2.0) for x in noise)
    x1 = bj.ground_truth(model.velocity, noise[2], args=guided[2], rtol=1e-7, atol=1e-7).x1
    u, scheduler = model.velocity, model.scheduler
    rows += problem_rows("digits w=2", u, noise, x1, scheduler, guided, **options)
    learned = [c for c in rows[0] if c.startswith("learned") and not c.endswith(" s")]
    columns = ["model", "NFE", "solver", *solvers.GRIDS, *learned, "gain over best fixed", "BNS"]
    costs = ["model", "NFE", "solver", *(f"{c} s" for c in learned), "BNS s"]
    text = "\n\n".join(
        [
            "## Learned time grids (held-out PSNR, dB, R = 2)",
            f"`python -m experiments.bench_grid{' --quick' if quick else ''}` "
            f"(NFE {', '.join(map(str, nfes))}, {steps or 'default'} steps): each solver on the "
            "fixed grids, then its grid learned from the best of them (Adam, the family's "
            "schedule); BNS (UniPC source) with the same steps.",
            markdown(rows, columns),
            target_text(rows),
            "### Training wall time (s)",
            markdown(rows, costs),
            f"Sizes (train, val, test) {sizes}; steps {steps or 'family defaults'}. "
            f"Total time: {time.perf_counter() - start:.0f} s.",
        ]
    )
    print(text)
    atomic_write(ROOT / "runs" / "bench_grid.md", text + "\n")


if __name__ == "__main__":
    main()
