"""Input validation and the naming of numerical failures, shared by every public entry point."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np


def require_scheduler(what: str, scheduler) -> None:
    """``ValueError`` naming the ``scheduler`` argument that ``what`` needs, when it is missing."""
    if scheduler is None:
        raise ValueError(f"{what} needs the model's `scheduler` argument (e.g. bj.cond_ot()).")


def check_batch_shape(x, name: str = "x0", owner: str | None = None) -> None:
    """``x`` (the argument ``name`` of ``owner``) has a batch axis: shape ``(B, *shape)``."""
    if np.ndim(x) < 2:
        prefix = "" if owner is None else f"{owner}: "
        raise ValueError(
            f"{prefix}{name} must be a batch of shape (B, *sample_shape), got shape "
            f"{np.shape(x)}; add a leading batch axis ({name}[None]) for a single sample."
        )


def check_batch(x, args, name: str = "x0") -> None:
    """``x`` is a batch ``(B, *shape)`` of finite floats."""
    check_batch_shape(x, name)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"{name} must be a floating-point array, got dtype {x.dtype}.")
    if not isinstance(x, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(x))):
        raise ValueError(f"{name} contains NaN or inf values.")


def check_save_ts(save_ts, dtype) -> np.ndarray:
    """``save_ts`` as a NumPy array of ``dtype``: strictly increasing, 1-D, inside [0, 1]."""
    ts = np.asarray(save_ts, dtype=dtype)
    if ts.ndim != 1 or np.any(np.diff(ts) <= 0) or ts[0] < 0 or ts[-1] > 1:
        raise ValueError("save_ts must be a strictly increasing 1-D array inside [0, 1].")
    return ts


def first_nonfinite(u: Callable, x0, args, num_steps: int = 64):
    """Walk an Euler path of ``u`` from ``x0``; the first ``(t, sample index)`` where ``u`` or
    the state is NaN/inf, or ``None`` when the whole path is finite."""
    step = jax.jit(lambda t, x: u(t, x, args))
    x = x0
    h = 1.0 / num_steps
    for i in range(num_steps):
        t = jnp.asarray(i * h, dtype=x0.dtype)
        v = step(t, x)
        bad = ~np.asarray(jnp.all(jnp.isfinite(v.reshape(v.shape[0], -1)), axis=-1))
        if bad.any():
            return float(t), int(np.argmax(bad))
        x = x + h * v
    return None


def nonfinite_message(u: Callable, x0, args, where: str) -> str:
    """A message naming where a model first returned NaN/inf along an Euler path from ``x0``."""
    found = first_nonfinite(u, x0, args)
    if found is None:
        return (
            f"The model returned NaN or inf during {where}, at a point off the coarse Euler path "
            f"used to locate it; check the model near t = 0 and t = 1 and its args."
        )
    t, index = found
    return (
        f"The model returned NaN or inf during {where}: first at t = {t:.4f} for sample {index}. "
        f"Check the model (and its args) at that time; eps- and x1-prediction fields are "
        f"singular at the ends of some schedulers (docs/schedulers.md#singular-ends)."
    )
