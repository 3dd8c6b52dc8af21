"""The EDM sampler of Karras et al. (2022), Algorithm 1 without churn (docs/baselines.md#edm).

The field is moved to the VE scheduler ``alphabar = 1, sigmabar_r = sigma_max (1 - r)`` by the
scale-time transform ``xbar(r) = s_r x(t_r)`` (``scheduler_change``), so that ``r = 1 - sigma /
sigma_max`` is linear in the EDM noise level ``sigma = sigma_t / alpha_t`` and Heun steps in ``r``
are Heun steps in ``sigma``. The solve starts at ``sigma_max`` from ``xbar_0 = sigma_max x0`` (the
EDM initialisation: it stands for ``x(t_0) = sigma_{t_0} x0`` with ``snr(t_0) = 1 / sigma_max``,
dropping the data term ``alpha_{t_0} x1``; for CondOT ``t_0 = 1/81``), takes Heun steps between
the noise levels and a final Euler step into ``sigma = 0``, and returns ``x(1) = xbar(1) / s_1``.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax

from bespoke_jax.core.checks import require_scheduler
from bespoke_jax.core.schedulers import VE, reaches_data
from bespoke_jax.core.transforms import scheduler_change
from bespoke_jax.solvers._generic import solver_grid
from bespoke_jax.solvers._grids import KARRAS_SIGMA_MAX
from bespoke_jax.solvers._spec import NFERule, reports_nonfinite

HEUN_FINAL_EULER = NFERule(nfe_per_step=2, nfe_saved=1)


@reports_nonfinite(HEUN_FINAL_EULER, "edm")
def edm(u: Callable, x0, *, nfe: int, args=None, scheduler=None, grid=None) -> jax.Array:
    """EDM: Heun on the Karras noise levels, a final Euler step, ``nfe = 2 N - 1`` (odd).

    With ``N = (nfe + 1) / 2`` steps on the grid ``t_0 = 0 < t_1 < ... < t_N = 1`` (default
    ``"edm"``: ``N`` Karras levels in ``[0.002, 80]`` and 0), the levels are
    ``sigma_i = sigma_{t_i} / alpha_{t_i}`` for ``i >= 1`` and ``sigma_0 = sigma_max = 80``; each
    interior level must lie below ``sigma_max``. In VE time ``r_i = 1 - sigma_i / sigma_max``, for
    ``i < N - 1``: ``d = ubar(r_i, xbar_i)``, ``xe = xbar_i + (r_{i+1} - r_i) d``,
    ``xbar_{i+1} = xbar_i + (r_{i+1} - r_i) (d + ubar(r_{i+1}, xe)) / 2``; the last step is Euler.

    Args:
      u: the velocity field ``u(t, x, args)``.
      x0: the noise, ``(B, *shape)``.
      nfe: an odd number ``>= 1``.
      args: passed to ``u``.
      scheduler: the model's scheduler (required).
      grid: ``"edm"`` (default), ``"uniform"``, ``"logsnr"`` or an ``(N + 1,)`` array in ``t``.

    Returns:
      ``x1``, shape of ``x0``.
    """
    require_scheduler("edm", scheduler)
    u, x0, ts = solver_grid(
        "edm", HEUN_FINAL_EULER, u, x0, nfe, grid, scheduler, args, default="edm"
    )
    target = VE(KARRAS_SIGMA_MAX)
    ubar, transform = scheduler_change(u, scheduler, target)
    # sigma = 0 is pinned at t = 1 where the path reaches the data (no gradient through VP's
    # infinite sigma' there); a path ending at a noise level (DDPM, truncated) keeps its own.
    pin = (ts[1:] >= 1.0) & reaches_data(scheduler)
    inner = jnp.where(pin, 0.5, ts[1:])
    levels = jnp.where(pin, 0.0, scheduler.sigma(inner) / scheduler.alpha(inner))
    rs = jnp.concatenate([jnp.zeros((1,), ts.dtype), 1.0 - levels / KARRAS_SIGMA_MAX])
    rs = eqx.error_if(
        rs, jnp.any(jnp.diff(rs) <= 0), "edm needs sigma_t / alpha_t < 80 at every grid t > 0."
    )

    def heun_step(x, r):
        r0, r1 = r
        d = ubar(r0, x, args)
        xe = x + (r1 - r0) * d
        return x + 0.5 * (r1 - r0) * (d + ubar(r1, xe, args)), None

    x, _ = lax.scan(heun_step, KARRAS_SIGMA_MAX * x0, (rs[:-2], rs[1:-1]))
    x = x + (rs[-1] - rs[-2]) * ubar(rs[-2], x, args)
    return x / transform.s(rs[-1])
