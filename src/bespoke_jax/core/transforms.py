"""Scale-time transformations of sampling paths (docs/transforms.md).

``xbar(r) = s_r x(t_r)`` with ``t_0 = 0``, ``t_1 = 1``, ``t`` increasing and ``s_r > 0`` solves

    d xbar / dr = ubar_r(xbar) = (s'_r / s_r) xbar + t'_r s_r u_{t_r}(xbar / s_r),

and a sample of the original field is ``x(1) = xbar(1) / s_1``. A scheduler change from
(alpha, sigma) to (alphabar, sigmabar) is the transform ``t_r = snr^-1(snrbar(r))``,
``s_r = sigmabar_r / sigma_{t_r}`` (equivalently ``alphabar_r / alpha_{t_r}``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from bespoke_jax.core.schedulers import Scaled, Scheduler


@dataclasses.dataclass(frozen=True)
class ScaleTime:
    """A scale-time transform: ``t(r)`` and ``s(r)``, elementwise in ``r``, with derivatives."""

    t: Callable
    s: Callable

    def dt(self, r):
        """``t'(r)``."""
        r = jnp.asarray(r, dtype=jnp.result_type(float))
        return jax.jvp(self.t, (r,), (jnp.ones_like(r),))[1]

    def ds(self, r):
        """``s'(r)``."""
        r = jnp.asarray(r, dtype=jnp.result_type(float))
        return jax.jvp(self.s, (r,), (jnp.ones_like(r),))[1]


def scale_time(u: Callable, transform: ScaleTime) -> Callable:
    """The transformed field ``ubar_r(x) = (s'/s) x + t' s u_{t(r)}(x / s)``."""

    def ubar(r, x, args=None):
        s = transform.s(r)
        return (transform.ds(r) / s) * x + transform.dt(r) * s * u(transform.t(r), x / s, args)

    return ubar


def _safe_div(num, den, use):
    return num / jnp.where(use, den, 1.0)


def scheduler_change_transform(source: Scheduler, target: Scheduler) -> ScaleTime:
    """The transform taking paths of ``source`` to paths of ``target`` (Theorem 2.3)."""

    def t(r):
        return source.snr_inverse_ratio(target.alpha(r), target.sigma(r))

    def s(r):
        tr = t(r)
        # sigmabar / sigma_t and alphabar / alpha_t are equal; take the better-conditioned one.
        by_sigma = target.sigma(r) >= target.alpha(r)
        return jnp.where(
            by_sigma,
            _safe_div(target.sigma(r), source.sigma(tr), by_sigma),
            _safe_div(target.alpha(r), source.alpha(tr), ~by_sigma),
        )

    return ScaleTime(t, s)


def scheduler_change(u: Callable, source: Scheduler, target: Scheduler):
    """Change the scheduler of field ``u`` from ``source`` to ``target``.

    Returns:
      ``(ubar, transform)``: the field of the target scheduler's path and the ``ScaleTime``.
      Start the solve from ``transform.s(0) * x0`` and divide the end point by ``transform.s(1)``.
    """
    transform = scheduler_change_transform(source, target)
    return scale_time(u, transform), transform


def precondition(u: Callable, scheduler: Scheduler, sigma0: float):
    """The scheduler change ``sigma -> sigma0 * sigma`` (BNS eq. 14).

    For CondOT it is ``t_r = r / (sigma0 (1 - r) + r)``, ``s_r = sigma0 (1 - r) + r``: the solve
    starts from ``sigma0 * x0`` and ``s_1 = 1``.

    Returns:
      ``(ubar, transform)`` as in ``scheduler_change``.
    """
    if not sigma0 > 0:
        raise ValueError(f"sigma0 must be positive, got {sigma0}.")
    return scheduler_change(u, scheduler, Scaled(scheduler, float(sigma0)))
