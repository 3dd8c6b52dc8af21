"""Ground truth: adaptive Dormand-Prince 5(4) solves of ``dx/dt = u_t(x)`` from t = 0 to 1.

Each sample gets its own step-size controller (``jax.vmap`` over single-sample solves): a
shared step over the batch lets the easiest samples set the accuracy of the hardest ones
(BENCHMARKS.md measures both; ``per_sample=False`` gives the shared one).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from bespoke_jax.core.args import batch_axes, take
from bespoke_jax.core.checks import (
    as_noise,
    check_count,
    check_field,
    check_save_ts,
    check_tolerances,
    checked_field,
    nonfinite_message,
)
from bespoke_jax.truth.progress import ChunkBar

# Samples per solve of a chunked solve (``ground_truth(progress=True)``, the sharded solve).
CHUNK_SIZE = 32

# Dopri5 is FSAL: 6 new stage evaluations per step after the first.
_EVALS_PER_STEP = 6


class GroundTruth(NamedTuple):
    """Result of ``ground_truth``.

    Attributes:
      x1: ``(B, *shape)``, the solution at t = 1.
      nfe: batched model calls the solve made (the largest per-sample count).
      nfe_per_sample: ``(B,)`` model calls each sample's own controller asked for.
      xs: ``(B, S, *shape)`` at ``save_ts`` (``None`` when not asked for).
      ts: the ``(S,)`` save times or ``None``.
    """

    x1: jax.Array
    nfe: int
    nfe_per_sample: np.ndarray
    xs: jax.Array | None = None
    ts: jax.Array | None = None


def _checked(u: Callable) -> Callable:
    u = checked_field(u)

    def field(t, x, args):
        out = u(t, x, args).astype(x.dtype)  # a bfloat16 network still gets a float32 solve
        return eqx.error_if(
            out,
            ~jnp.all(jnp.isfinite(out)),
            "The model returned NaN or inf during the ground-truth solve.",
        )

    return field


@functools.partial(
    jax.jit, static_argnames=("u", "rtol", "atol", "max_steps", "per_sample", "axes")
)
def solve_batch(u, x0, args, save_ts, *, rtol, atol, max_steps, per_sample, axes):
    """The jitted Dopri5 solve of a batch, unchecked: ``(x1 (B, *shape), xs (B, S, *shape) or
    None, steps (B,))``, ``steps`` accepted plus rejected.

    ``per_sample`` vmaps single-sample solves over the batch, with ``axes`` (``BatchAxes``) the
    vmap axis of each ``args`` leaf; else one solve with a shared step (``axes`` unused). The
    building block of ``ground_truth`` and of the sharded solve.
    """
    field = _checked(u)

    def solve(x, a):
        term = diffrax.ODETerm(lambda t, y, a: field(t, y, a))
        subs = [diffrax.SubSaveAt(t1=True)]
        if save_ts is not None:
            subs.append(diffrax.SubSaveAt(ts=save_ts))
        sol = diffrax.diffeqsolve(
            term,
            diffrax.Dopri5(),
            t0=0.0,
            t1=1.0,
            dt0=None,
            y0=x,
            args=a,
            stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
            saveat=diffrax.SaveAt(subs=subs),
            max_steps=max_steps,
        )
        steps = sol.stats["num_steps"] + sol.stats["num_rejected_steps"]
        xs = sol.ys[1] if save_ts is not None else None
        return sol.ys[0][-1], xs, steps

    if not per_sample:
        x1, xs, steps = solve(x0, args)
        xs = None if xs is None else jnp.swapaxes(xs, 0, 1)
        return x1, xs, jnp.full((x0.shape[0],), steps)

    leaves, treedef = jax.tree.flatten(args)
    mapped = axes.tree

    def single(x, leaves):
        a = jax.tree.unflatten(
            treedef,
            [leaf[None] if ax == 0 else leaf for leaf, ax in zip(leaves, mapped, strict=True)],
        )
        x1, xs, steps = solve(x[None], a)
        return x1[0], None if xs is None else xs[:, 0], steps

    return jax.vmap(single, in_axes=(0, list(mapped)))(x0, leaves)


def ground_truth(
    u: Callable,
    x0,
    *,
    args=None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    save_ts=None,
    max_steps: int = 4096,
    per_sample: bool = True,
    progress: bool = False,
) -> GroundTruth:
    """Solve ``dx/dt = u(t, x, args)`` from ``x(0) = x0`` to t = 1 adaptively (Dopri5).

    Args:
      u: the velocity field; ``x`` of shape ``(B, *shape)``.
      x0: ``(B, *shape)`` noise.
      args: the field's args; leaves with leading axis B are per-sample.
      rtol, atol: the PID controller's tolerances.
      save_ts: optional increasing ``(S,)`` times in [0, 1] at which to save the path.
      max_steps: accepted plus rejected steps allowed per sample.
      per_sample: each sample with its own step size (default) or one shared step.
      progress: solve in chunks of ``CHUNK_SIZE`` samples (one, with ``per_sample=False``) with
        a bar of the chunks solved and the model calls spent (``truth.progress.ChunkBar``).
        Each sample keeps its own controller, so the result is the same up to float rounding
        (XLA vectorises a chunk differently from the whole batch).

    Raises:
      ValueError: bad shapes or save times.
      RuntimeError: the model returned NaN/inf (with the time where it first did) or the
        solve did not converge within ``max_steps``.
    """
    check_field(u, "bj.ground_truth")
    x0 = as_noise(x0, args)
    rtol, atol = check_tolerances(rtol, atol)
    max_steps = check_count(
        "max_steps", max_steps, hint=" It bounds the adaptive steps per sample."
    )
    if save_ts is not None:
        save_ts = jnp.asarray(check_save_ts(save_ts, x0.dtype))
    axes_static = BatchAxes(args, x0.shape[0]) if per_sample else None
    options = dict(rtol=rtol, atol=atol, max_steps=max_steps, per_sample=per_sample)
    solve = functools.partial(solve_batch, u, save_ts=save_ts, axes=axes_static, **options)
    try:
        if progress:
            x1, xs, steps = _in_chunks(solve, x0, args, CHUNK_SIZE if per_sample else len(x0))
        else:
            x1, xs, steps = solve(x0, args)
        x1 = jax.block_until_ready(x1)
    except Exception as err:  # jax wraps the runtime error in a backend-specific type
        raise named_failure(err, u, x0, args, rtol=rtol, atol=atol, max_steps=max_steps) from None
    nfe_per_sample = model_calls(steps)
    return GroundTruth(x1, int(nfe_per_sample.max()), nfe_per_sample, xs, save_ts)


def _in_chunks(solve, x0: jax.Array, args, size: int):
    """``solve(x0, args)`` chunk by chunk of ``size`` samples (the last one padded with copies of
    the last sample), reporting each to a ``ChunkBar``."""
    n = x0.shape[0]
    parts = []
    with ChunkBar(-(-n // size)) as bar:
        for start in range(0, n, size):
            rows = np.minimum(np.arange(start, start + size), n - 1)
            x1, xs, steps = solve(x0[rows], take(args, rows, n))
            keep = min(size, n - start)
            parts.append((x1[:keep], None if xs is None else xs[:keep], steps[:keep]))
            bar.solved(model_calls(parts[-1][2]))
    x1, xs, steps = (None if p[0] is None else jnp.concatenate(p) for p in zip(*parts, strict=True))
    return x1, xs, steps


def model_calls(steps) -> np.ndarray:
    """Field evaluations of Dopri5 solves that took ``steps`` (accepted plus rejected) steps."""
    return np.asarray(steps) * _EVALS_PER_STEP + 1


def named_failure(err: Exception, u, x0, args, *, rtol, atol, max_steps) -> Exception:
    """The ``RuntimeError`` that names a failed ground-truth solve, or ``err`` itself."""
    text = str(err)
    if "NaN or inf" in text:
        return RuntimeError(nonfinite_message(u, jnp.asarray(x0), args, "ground truth"))
    if "maximum number of solver steps" in text:
        return RuntimeError(
            f"The ground-truth solve did not converge within max_steps={max_steps} "
            f"(rtol={rtol}, atol={atol}). Increase max_steps or loosen rtol/atol."
        )
    return err


class BatchAxes:
    """The vmap axis (0 or None) of each leaf of ``args`` (``batch_axes``), hashable for a static
    jit argument of ``solve_batch``."""

    def __init__(self, args, batch_size: int):
        self.tree = tuple(batch_axes(jax.tree.leaves(args), batch_size))

    def __hash__(self):
        return hash(self.tree)

    def __eq__(self, other):
        return isinstance(other, BatchAxes) and self.tree == other.tree
