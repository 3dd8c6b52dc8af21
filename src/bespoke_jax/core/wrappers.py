"""Networks in the usual diffusion conventions as velocity fields ``u(t, x, args)``, in one line.

Diffusion code runs time the other way (t = 0 is data) and feeds the network a timestep: a DDPM
network takes ``k`` in ``[0, N - 1]``, a continuous one ``s = 1 - t`` in [0, 1]. EDM denoisers
``D(x_ve, sigma_ve)`` take the variance-exploding state instead (docs/models.md): any Gaussian
path maps to it by ``x_ve = x / alpha_t``, ``sigma_ve = sigma_t / alpha_t``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp

from bespoke_jax.core.outputs import Velocity, to_velocity, truncated_velocity
from bespoke_jax.core.schedulers import CondOT, Scheduler


def _extra(args) -> tuple:
    if args is None:
        return ()
    if not isinstance(args, tuple):
        raise ValueError(
            f"args of a wrapped network are a tuple of its extra inputs (labels, ...), got "
            f"{type(args).__name__}; pass (args,) for a single one."
        )
    return args


def wrap_diffusion(
    net: Callable, scheduler: Scheduler, prediction: str, *, timestep: Callable | None = None
) -> Velocity:
    """The velocity field of a diffusion network ``net(x, timestep, *extra)``.

    Args:
      net: the network; ``x`` of shape ``(B, *shape)``, ``timestep`` of shape ``(B,)``.
      scheduler: the schedule it was trained on (e.g. ``bj.ddpm("linear")``).
      prediction: what it predicts: ``"eps"``, ``"x1"`` (the clean sample), ``"v"`` or
        ``"velocity"``.
      timestep: ``t`` (here t = 0 is noise) to the network's time input; default
        ``scheduler.timestep(t)`` for a DDPM schedule, else ``1 - t``.

    Returns:
      ``u(t, x, args)`` as ``bj.to_velocity`` makes it (truncated where the conversion is
      singular; see ``u.scheduler``); ``args`` is the tuple of ``net``'s extra inputs or ``None``.

    Example::

      u = bj.wrap_diffusion(unet, bj.ddpm("linear"), "eps")
      x1 = bj.solvers.dpm_solver_pp(u, x0, nfe=8, scheduler=u.scheduler, args=(labels,))
    """
    if timestep is None:
        timestep = getattr(scheduler, "timestep", lambda t: 1.0 - t)

    def f(t, x, args=None):
        k = jnp.broadcast_to(timestep(jnp.asarray(t, x.dtype)), x.shape[:1])
        return net(x, k, *_extra(args))

    return to_velocity(f, scheduler, prediction)


def wrap_edm(
    denoiser: Callable,
    scheduler: Scheduler | None = None,
    *,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
) -> Velocity:
    """The velocity field of an EDM denoiser ``D(x_ve, sigma_ve, *extra) ~ E[x1 | x_ve]``.

    ``x1_hat(t, x) = D(x / alpha_t, sigma_t / alpha_t)``, then the x1-prediction conversion, on
    the part of ``scheduler``'s path where ``sigma_t / alpha_t`` lies in ``[sigma_min,
    sigma_max]`` (the denoiser's trained range), reparametrised to [0, 1] (``u.scheduler``).

    Args:
      denoiser: ``D``; ``x_ve`` of shape ``(B, *shape)``, ``sigma_ve`` of shape ``(B,)``.
      scheduler: the path to sample along (default ``bj.cond_ot()``); the end points do not
        depend on it.
      sigma_min, sigma_max: the denoiser's noise range.

    Returns:
      ``u(t, x, args)``, a ``Velocity``; ``args`` is the tuple of ``D``'s extra inputs or None.
    """
    if not 0.0 < sigma_min < sigma_max:
        raise ValueError(f"Need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}.")
    scheduler = CondOT() if scheduler is None else scheduler

    def f(t, x, args=None):
        t = jnp.asarray(t, x.dtype)
        alpha, sigma = scheduler.alpha(t), scheduler.sigma(t)
        level = jnp.broadcast_to(sigma / alpha, x.shape[:1])
        return denoiser(x / alpha, level, *_extra(args))

    t_min = max(0.0, float(scheduler.snr_inverse(jnp.float32(1.0 / sigma_max))))
    t_max = min(1.0, float(scheduler.snr_inverse(jnp.float32(1.0 / sigma_min))))
    return truncated_velocity(f, scheduler, "x1", t_min, t_max)
