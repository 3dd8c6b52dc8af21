"""Time grids ``0 = t_0 < t_1 < ... < t_n = 1`` for the baseline solvers.

Three named grids and explicit arrays:

- ``"uniform"``: ``t_i = i / n``.
- ``"logsnr"``: uniform in ``lambda = log(alpha / sigma)`` between ``lambda(eps)`` and
  ``lambda(1 - eps)`` with ``eps = LOGSNR_EPS = 1e-3`` (lambda is infinite at t = 0 for CondOT and
  cosine, and at t = 1 for every scheduler), mapped back through ``snr^-1``; the two end points are
  then set to exactly 0 and 1: the first step starts at the noise, the last one ends at the data.
- ``"edm"``: the Karras et al. grid of ``n`` noise levels in the EDM (VE) parametrisation
  ``sigma_i = (smax^(1/rho) + i/(n-1) (smin^(1/rho) - smax^(1/rho)))^rho`` (rho = 7, smin = 0.002,
  smax = 80, narrowed to the scheduler's own ``sigma / alpha`` range) and a final ``sigma_n = 0``
  (``n + 1`` levels, the last at the end, for a path that ends at a noise level: DDPM,
  truncated), mapped to time by ``snr(t_i) = 1 / sigma_i`` (for CondOT ``t = 1 / (1 + sigma)``);
  the first point (smax) is set to t = 0, where the solve starts.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from bespoke_jax.core.checks import require_scheduler
from bespoke_jax.core.schedulers import Scheduler, reaches_data

GRIDS = ("uniform", "logsnr", "edm")
LOGSNR_EPS = 1e-3
KARRAS_RHO = 7.0
KARRAS_SIGMA_MIN = 0.002
KARRAS_SIGMA_MAX = 80.0


def karras_sigmas(num_sigmas: int, sigma_min=KARRAS_SIGMA_MIN, sigma_max=KARRAS_SIGMA_MAX):
    """The ``num_sigmas`` decreasing noise levels of Karras et al. (2022), eq. 5, rho = 7.

    Returns:
      ``(num_sigmas,)``: ``sigma_0 = sigma_max > ... > sigma_{N-1} = sigma_min`` (``N = 1``:
      ``[sigma_max]``).
    """
    ramp = jnp.linspace(0.0, 1.0, num_sigmas)
    lo, hi = sigma_min ** (1.0 / KARRAS_RHO), sigma_max ** (1.0 / KARRAS_RHO)
    return (hi + ramp * (lo - hi)) ** KARRAS_RHO


def _karras_range(scheduler: Scheduler) -> tuple[float, float]:
    """``[0.002, 80]`` within the scheduler's own ``sigma / alpha`` range (DDPM's ends at 0.01)."""
    with jax.ensure_compile_time_eval():
        ends = jnp.array([1.0, 0.0])
        lo, hi = np.asarray(scheduler.sigma(ends) / scheduler.alpha(ends), dtype=float)
    return max(KARRAS_SIGMA_MIN, lo), min(KARRAS_SIGMA_MAX, hi)


def make_grid(kind: str, num_steps: int, scheduler: Scheduler | None = None) -> jax.Array:
    """A named time grid (see the module docstring).

    Args:
      kind: ``"uniform"``, ``"logsnr"`` or ``"edm"`` (the last two need ``scheduler``).
      num_steps: the number of steps ``n >= 1``.
      scheduler: the model's scheduler.

    Returns:
      ``(n + 1,)``, strictly increasing from 0 to 1.
    """
    if not isinstance(num_steps, int | np.integer) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}.")
    if kind == "uniform":
        return jnp.linspace(0.0, 1.0, num_steps + 1)
    if kind == "logsnr":
        require_scheduler(f"grid={kind!r}", scheduler)
        ends = jnp.array([LOGSNR_EPS, 1.0 - LOGSNR_EPS])
        lam_lo, lam_hi = scheduler.log_snr(ends)
        t = scheduler.snr_inverse(jnp.exp(jnp.linspace(lam_lo, lam_hi, num_steps + 1)))
    elif kind == "edm":
        require_scheduler(f"grid={kind!r}", scheduler)
        lo, hi = _karras_range(scheduler)
        if reaches_data(scheduler):
            sigmas = jnp.append(karras_sigmas(num_steps, lo, hi), 0.0)
        else:  # the path ends at a noise level: the last Karras level is that end
            sigmas = karras_sigmas(num_steps + 1, lo, hi)
        t = scheduler.snr_inverse_ratio(jnp.ones_like(sigmas), sigmas)
    else:
        raise ValueError(f"Unknown grid {kind!r}; valid grids: {GRIDS} or an explicit array.")
    return t.at[0].set(0.0).at[-1].set(1.0)


def resolve_grid(grid, num_steps: int, scheduler: Scheduler | None = None, default="uniform"):
    """The ``(num_steps + 1,)`` grid for ``grid``: a name, ``None`` (``default``) or an array.

    An explicit grid must be 1-D of length ``num_steps + 1``, start at 0, end at 1 and increase
    strictly: shape errors raise ``ValueError``, value errors too for concrete arrays, and an
    ``eqx.error_if`` runtime error for traced ones.
    """
    if grid is None:
        grid = default
    if isinstance(grid, str):
        return make_grid(grid, num_steps, scheduler)
    if not isinstance(grid, jax.core.Tracer):
        grid = np.asarray(grid)
        if not np.issubdtype(grid.dtype, np.floating):
            grid = grid.astype(float)
    if grid.ndim != 1 or grid.shape[0] != num_steps + 1:
        raise ValueError(
            f"An explicit grid for {num_steps} steps must have shape ({num_steps + 1},), "
            f"got {grid.shape}."
        )
    message = "The grid must be finite, start at 0, end at 1 and increase strictly."
    if isinstance(grid, jax.core.Tracer):
        bad = (grid[0] != 0.0) | (grid[-1] != 1.0) | ~jnp.all(jnp.diff(grid) > 0.0)
        return eqx.error_if(grid, bad, message)
    if grid[0] != 0.0 or grid[-1] != 1.0 or not np.all(np.diff(grid) > 0.0):
        raise ValueError(f"{message} Got {grid}.")
    return jnp.asarray(grid, dtype=jnp.result_type(float))
