"""Input validation and the naming of numerical failures, shared by every public entry point."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

# The largest NFE a learned family accepts: BNS holds O(nfe^2) coefficients and sampling keeps
# all nfe velocities; learned solvers are for few steps, and 256 is far past where they help.
MAX_LEARNED_NFE = 256
# The largest NFE a baseline accepts: its grid and scan are O(nfe).
MAX_NFE = 100_000
# |w| above this is no guidance scale but an overflow waiting to happen.
MAX_GUIDANCE = 1e3
DATA_RANGE_HINT = " It is R of PSNR, the span of the data (2 for data in [-1, 1])."


def require_scheduler(what: str, scheduler) -> None:
    """``ValueError`` naming the ``scheduler`` argument that ``what`` needs, when it is missing."""
    if scheduler is None:
        raise ValueError(f"{what} needs the model's `scheduler` argument (e.g. bj.cond_ot()).")


def check_field(u, owner: str) -> None:
    """``ValueError`` when ``u`` cannot be called as ``u(t, x, args)``, read off its signature.

    ``owner`` names where the field was given (``"bj.train"``). A callable whose signature
    cannot be read (a builtin) is not checked.
    """
    if not callable(u):
        raise ValueError(
            f"{owner}: the velocity field must be a function u(t, x, args), got {type(u).__name__}."
        )
    try:
        signature = inspect.signature(u)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(None, None, None)
    except TypeError:
        name = getattr(u, "__name__", type(u).__name__)
        raise ValueError(
            f"{owner}: the velocity field must be u(t, x, args), three positional arguments, "
            f"but it is {name}{signature}. Take args even when unused: "
            f"def u(t, x, args): ... (or lambda t, x, args: ...)."
        ) from None


def check_batch_shape(x, name: str = "x0", owner: str | None = None) -> None:
    """``x`` (the argument ``name`` of ``owner``) has a batch axis: shape ``(B, *shape)``."""
    if np.ndim(x) < 2:
        prefix = "" if owner is None else f"{owner}: "
        raise ValueError(
            f"{prefix}{name} must be a batch of shape (B, *sample_shape), got shape "
            f"{np.shape(x)}; add a leading batch axis ({name}[None]) for a single sample."
        )


def check_batch(x, args, name: str = "x0") -> None:
    """``x`` is a non-empty batch ``(B, *shape)`` of finite real floats."""
    check_batch_shape(x, name)
    if 0 in np.shape(x):
        raise ValueError(f"{name} is empty (shape {np.shape(x)}): give at least one sample.")
    dtype = jnp.result_type(x)
    if jnp.issubdtype(dtype, jnp.complexfloating):
        raise ValueError(
            f"{name} must be real floating point, got dtype {dtype} (complex): velocity fields "
            f"here are real; pass jnp.real({name}) if that is what you mean."
        )
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(
            f"{name} must be real floating point, got dtype {dtype}: noise is continuous; pass "
            f"{name}.astype(jnp.float32)."
        )
    if not isinstance(x, jax.core.Tracer) and not np.all(np.isfinite(np.asarray(x))):
        raise ValueError(f"{name} contains NaN or inf values.")
    check_args(args)


def as_noise(x, args=None, name: str = "x0") -> jax.Array:
    """``x`` checked (``check_batch``) as a JAX array; float16 and bfloat16 become float32 (the
    solver's state and output), other floats keep their precision."""
    x = x if isinstance(x, jax.Array) else jnp.asarray(x)
    check_batch(x, args, name)
    if jnp.finfo(x.dtype).bits < 32:
        x = x.astype(jnp.float32)
    return x


def check_args(args) -> None:
    """Concrete float leaves of ``args`` are finite; ``|args["guidance"]| <= MAX_GUIDANCE``."""
    if isinstance(args, dict) and "guidance" in args:
        w = args["guidance"]
        if not isinstance(w, jax.core.Tracer):
            w = np.asarray(w, dtype=np.float64)
            if not np.all(np.abs(w) <= MAX_GUIDANCE):
                raise ValueError(f"guidance must be finite with |w| <= {MAX_GUIDANCE:g}, got {w}.")
    for path, leaf in jax.tree_util.tree_flatten_with_path(args)[0]:
        if isinstance(leaf, jax.core.Tracer) or not jnp.issubdtype(
            jnp.result_type(leaf), jnp.inexact
        ):
            continue
        if not np.all(np.isfinite(np.asarray(leaf))):
            raise ValueError(f"args{jax.tree_util.keystr(path)} contains NaN or inf values.")


def check_positive(name: str, value, hint: str = "") -> float:
    """``value`` as a float when it is a finite positive number, else a ``ValueError``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not (np.isfinite(number) and number > 0):
        raise ValueError(f"{name} must be a finite positive number, got {value!r}.{hint}")
    return number


def check_tolerances(rtol, atol) -> tuple[float, float]:
    """Adaptive-solve tolerances: both finite and positive."""
    hint = " Typical ground-truth tolerances are 1e-5."
    return check_positive("rtol", rtol, hint), check_positive("atol", atol, hint)


def check_count(name: str, value, low: int = 1, high: int | None = None, hint: str = "") -> int:
    """``value`` as an int in ``[low, high]``, else a ``ValueError`` naming the bounds."""
    integer = isinstance(value, int | np.integer) and not isinstance(value, bool)
    if not integer or value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be an integer {bounds}, got {value!r}.{hint}")
    return int(value)


def check_train_settings(steps, learning_rate, data_range, rtol=1e-5, atol=1e-5) -> None:
    """``bj.train``'s numbers: ``steps >= 1``, a finite positive learning rate (when a number),
    ``data_range > 0``, positive tolerances."""
    if steps is not None:
        check_count("steps", steps, hint=" It is the number of optimisation steps.")
    if isinstance(learning_rate, int | float | np.number):
        check_positive("learning_rate", learning_rate, " Typical Adam rates are 1e-4 to 1e-2.")
    check_positive("data_range", data_range, DATA_RANGE_HINT)
    check_tolerances(rtol, atol)


def check_learned_nfe(nfe) -> None:
    """A learned family's integer ``nfe`` within ``MAX_LEARNED_NFE`` (the rest is its own)."""
    if isinstance(nfe, int | np.integer) and nfe > MAX_LEARNED_NFE:
        check_count("nfe", nfe, 1, MAX_LEARNED_NFE, " Learned solvers are for few steps.")


def checked_field(u: Callable) -> Callable:
    """``u`` with its output shape checked against ``x`` where it is traced (free at run time)."""

    def field(t, x, args):
        out = u(t, x, args)
        if jnp.shape(out) != jnp.shape(x):
            raise ValueError(
                f"The velocity field returned shape {jnp.shape(out)} for x of shape "
                f"{jnp.shape(x)}: u(t, x, args) must return dx/dt with x's shape (a (B, 1) "
                f"output would broadcast silently)."
            )
        return out

    return field


def check_save_ts(save_ts, dtype) -> np.ndarray:
    """``save_ts`` as a NumPy array of ``dtype``: strictly increasing, 1-D, inside [0, 1]."""
    ts = np.asarray(save_ts, dtype=dtype)
    if ts.ndim != 1 or np.any(np.diff(ts) <= 0) or ts[0] < 0 or ts[-1] > 1:
        raise ValueError("save_ts must be a strictly increasing 1-D array inside [0, 1].")
    return ts


def first_nonfinite(u: Callable, x0, args, ts=None):
    """Walk an Euler path of ``u`` from ``x0`` over the times ``ts`` (default 64 uniform steps),
    evaluating ``u`` at every one of them, the last included; the first ``(step, t, sample
    index)`` where ``u`` or the state is NaN/inf, or ``None`` when the whole path is finite."""
    step = jax.jit(lambda t, x: u(t, x, args))
    ts = np.linspace(0.0, 1.0, 65) if ts is None else np.asarray(ts)
    x = x0
    for i, t in enumerate(ts):
        v = step(jnp.asarray(t, dtype=x0.dtype), x)
        bad = ~np.asarray(jnp.all(jnp.isfinite(v.reshape(v.shape[0], -1)), axis=-1))
        if bad.any():
            return i, float(t), int(np.argmax(bad))
        if i + 1 < len(ts):
            x = x + (ts[i + 1] - t) * v
    return None


def nonfinite_message(u: Callable, x0, args, where: str, ts=None) -> str:
    """A message naming where a model first returned NaN/inf along an Euler path from ``x0``
    over the times ``ts`` (a solver's grid; default 64 uniform steps)."""
    found = first_nonfinite(u, x0, args, ts)
    if found is None:
        return (
            f"The model returned NaN or inf during {where}, at a point off the coarse Euler path "
            f"used to locate it; check the model near t = 0 and t = 1 and its args."
        )
    i, t, index = found
    step = f"at grid point {i} " if ts is not None else ""
    return (
        f"The model returned NaN or inf during {where}: first {step}at t = {t:.4f} for sample "
        f"{index}. Check the model (and its args) at that time; wrap eps-, x1- and v-prediction "
        f"models with bj.to_velocity, which truncates the ends where the conversion is singular "
        f"(docs/models.md#truncated-ends)."
    )


def finite_or_raise(x1, u: Callable, x0, args, where: str, ts=None):
    """``x1`` if it is finite (or traced); else ``RuntimeError`` naming where ``u`` went NaN/inf.

    One check of the output; the field is walked again only when it failed, over ``ts`` (times,
    or a function giving them, built only then; default 64 uniform steps).
    """
    if isinstance(x1, jax.core.Tracer) or bool(jnp.all(jnp.isfinite(x1))):
        return x1
    ts = ts() if callable(ts) else ts
    if isinstance(ts, jax.core.Tracer):
        ts = None
    raise RuntimeError(nonfinite_message(u, jnp.asarray(x0), args, where, ts))
