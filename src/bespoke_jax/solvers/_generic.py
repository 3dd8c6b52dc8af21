"""Generic ODE solvers on a time grid: Euler, midpoint, Heun, RK4 and iPNDM (docs/baselines.md).

Each solves ``dx/dt = u(t, x, args)`` from ``x(0) = x0`` (noise) to ``t = 1`` (data) on the grid
``0 = t_0 < ... < t_n = 1`` (``grid``, default uniform), with ``h_i = t_{i+1} - t_i``, and is a
linear combination of ``x0`` and the velocities it evaluates. ``x`` has shape ``(B, *shape)``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from bespoke_jax.core.checks import as_noise, checked_field
from bespoke_jax.solvers._grids import resolve_grid
from bespoke_jax.solvers._spec import NFERule, reports_nonfinite

ONE_PER_STEP = NFERule(1)
TWO_PER_STEP = NFERule(2)
FOUR_PER_STEP = NFERule(4)

# Adams-Bashforth weights of orders 1-4 (newest velocity first), the iPNDM warm start.
ADAMS_BASHFORTH = (
    (1.0, 0.0, 0.0, 0.0),
    (3 / 2, -1 / 2, 0.0, 0.0),
    (23 / 12, -16 / 12, 5 / 12, 0.0),
    (55 / 24, -59 / 24, 37 / 24, -9 / 24),
)


def solver_grid(name, rule, u, x0, nfe, grid, scheduler, args, default="uniform"):
    """``(field, x0, ts)`` for a solver that spends ``nfe`` by ``rule``: ``u`` with its output
    shape checked, ``x0`` checked (float16/bfloat16 as float32) and the ``(steps + 1,)`` grid in
    ``x0``'s dtype."""
    try:
        x0 = as_noise(x0, args)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None
    steps = rule.steps(nfe, name)
    ts = resolve_grid(grid, steps, scheduler, default).astype(x0.dtype)
    return checked_field(u), x0, ts


def _scan_steps(step, x0, ts):
    """Apply ``x <- step(x, t_i, t_{i+1})`` for every step of the grid ``ts``."""
    x1, _ = lax.scan(lambda x, t: (step(x, t[0], t[1]), None), x0, (ts[:-1], ts[1:]))
    return x1


@reports_nonfinite(ONE_PER_STEP)
def euler(u: Callable, x0, *, nfe: int, args=None, scheduler=None, grid=None) -> jax.Array:
    """Euler (order 1), one NFE per step: ``x_{i+1} = x_i + h_i u(t_i, x_i)``.

    Args:
      u: the velocity field ``u(t, x, args)``.
      x0: the noise, ``(B, *shape)``.
      nfe: the number of steps (any ``nfe >= 1``).
      args: passed to ``u``.
      scheduler: the model's scheduler; only needed by ``grid="logsnr"`` or ``"edm"``.
      grid: ``"uniform"`` (default), ``"logsnr"``, ``"edm"`` or an ``(nfe + 1,)`` array.

    Returns:
      ``x1``, the approximate solution at ``t = 1``, shape of ``x0``.
    """
    u, x0, ts = solver_grid("euler", ONE_PER_STEP, u, x0, nfe, grid, scheduler, args)
    return _scan_steps(lambda x, t, t1: x + (t1 - t) * u(t, x, args), x0, ts)


@reports_nonfinite(TWO_PER_STEP)
def midpoint(u: Callable, x0, *, nfe: int, args=None, scheduler=None, grid=None) -> jax.Array:
    """Explicit midpoint (RK2, order 2), two NFE per step (``nfe`` even; ``nfe / 2`` steps).

    ``z = x_i + (h/2) u(t_i, x_i)``, ``x_{i+1} = x_i + h u(t_i + h/2, z)``. Arguments as in
    ``euler``; an explicit ``grid`` has ``nfe / 2 + 1`` points.
    """
    u, x0, ts = solver_grid("midpoint", TWO_PER_STEP, u, x0, nfe, grid, scheduler, args)

    def step(x, t, t1):
        h = t1 - t
        z = x + 0.5 * h * u(t, x, args)
        return x + h * u(t + 0.5 * h, z, args)

    return _scan_steps(step, x0, ts)


@reports_nonfinite(TWO_PER_STEP)
def heun(u: Callable, x0, *, nfe: int, args=None, scheduler=None, grid=None) -> jax.Array:
    """Heun (explicit trapezoidal RK2, order 2), two NFE per step (``nfe`` even).

    ``k1 = u(t_i, x_i)``, ``k2 = u(t_{i+1}, x_i + h k1)``, ``x_{i+1} = x_i + (h/2)(k1 + k2)``.
    The last ``k2`` is evaluated at ``t = 1``: the field must be finite there. Arguments as in
    ``euler``; an explicit ``grid`` has ``nfe / 2 + 1`` points.
    """
    u, x0, ts = solver_grid("heun", TWO_PER_STEP, u, x0, nfe, grid, scheduler, args)

    def step(x, t, t1):
        h = t1 - t
        k1 = u(t, x, args)
        k2 = u(t1, x + h * k1, args)
        return x + 0.5 * h * (k1 + k2)

    return _scan_steps(step, x0, ts)


@reports_nonfinite(FOUR_PER_STEP)
def rk4(u: Callable, x0, *, nfe: int, args=None, scheduler=None, grid=None) -> jax.Array:
    """The classic Runge-Kutta method (order 4), four NFE per step (``nfe`` a multiple of 4).

    ``k1 = u(t, x)``, ``k2 = u(t + h/2, x + (h/2) k1)``, ``k3 = u(t + h/2, x + (h/2) k2)``,
    ``k4 = u(t + h, x + h k3)``, ``x_{i+1} = x + (h/6)(k1 + 2 k2 + 2 k3 + k4)``. The last ``k4``
    is evaluated at ``t = 1``. Arguments as in ``euler``; an explicit ``grid`` has ``nfe / 4 + 1``
    points.
    """
    u, x0, ts = solver_grid("rk4", FOUR_PER_STEP, u, x0, nfe, grid, scheduler, args)

    def step(x, t, t1):
        h = t1 - t
        k1 = u(t, x, args)
        k2 = u(t + 0.5 * h, x + 0.5 * h * k1, args)
        k3 = u(t + 0.5 * h, x + 0.5 * h * k2, args)
        k4 = u(t1, x + h * k3, args)
        return x + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)

    return _scan_steps(step, x0, ts)


@reports_nonfinite(ONE_PER_STEP)
def ipndm(u: Callable, x0, *, nfe: int, args=None, scheduler=None, grid=None) -> jax.Array:
    """Improved PNDM (Zhang & Chen 2022), one NFE per step.

    ``x_{i+1} = x_i + h_i sum_j w_{k,j} u_{i-j}`` with the fixed Adams-Bashforth weights of order
    ``k = min(i + 1, 4)`` (``w_4 = (55, -59, 37, -9) / 24``; lower orders warm the history up),
    whatever the grid's spacing. The Euler first step limits the global order to 2. Arguments as in
    ``euler``.
    """
    u, x0, ts = solver_grid("ipndm", ONE_PER_STEP, u, x0, nfe, grid, scheduler, args)
    weights = jnp.asarray(ADAMS_BASHFORTH, dtype=ts.dtype)

    def step(carry, inputs):
        x, history = carry  # history: the last three velocities, newest first, (3, B, *shape)
        i, t, t1 = inputs
        d = u(t, x, args)
        w = weights[jnp.minimum(i, 3)]
        slope = w[0] * d + jnp.tensordot(w[1:], history, axes=1)
        history = jnp.concatenate([d[None], history[:-1]])
        return (x + (t1 - t) * slope, history), None

    history = jnp.zeros((3, *x0.shape), dtype=jnp.result_type(x0))
    steps = jnp.arange(ts.shape[0] - 1)
    (x1, _), _ = lax.scan(step, (x0, history), (steps, ts[:-1], ts[1:]))
    return x1
