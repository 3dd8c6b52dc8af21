"""Gaussian-path schedulers ``x_t = alpha_t x1 + sigma_t x0`` (t = 0 noise, t = 1 data).

Each scheduler is a frozen, hashable dataclass: it can be a static argument of ``jax.jit`` and
closed over freely. Derivatives are taken by ``jax.jvp`` of the closed forms, never written twice.
"""

from __future__ import annotations

import abc
import dataclasses
import math

import jax
import jax.numpy as jnp


class Scheduler(abc.ABC):
    """Base class: subclasses define ``alpha``, ``sigma`` and ``snr_inverse``.

    ``snr(t) = alpha_t / sigma_t`` is strictly increasing; ``snr_inverse`` maps it back to t.
    """

    name: str = "scheduler"

    @abc.abstractmethod
    def alpha(self, t):
        """``alpha_t``, elementwise."""

    @abc.abstractmethod
    def sigma(self, t):
        """``sigma_t``, elementwise."""

    @abc.abstractmethod
    def snr_inverse_ratio(self, num, den):
        """The t with ``snr(t) = num / den``, finite at ``den = 0`` (t = 1), elementwise."""

    def snr_inverse(self, rho):
        """The t with ``snr(t) = rho``, elementwise."""
        return self.snr_inverse_ratio(rho, jnp.ones_like(rho))

    def d_alpha(self, t):
        """``d alpha / dt`` by forward-mode autodiff, elementwise."""
        t = jnp.asarray(t, dtype=jnp.result_type(float))
        return jax.jvp(self.alpha, (t,), (jnp.ones_like(t),))[1]

    def d_sigma(self, t):
        """``d sigma / dt`` by forward-mode autodiff, elementwise."""
        t = jnp.asarray(t, dtype=jnp.result_type(float))
        return jax.jvp(self.sigma, (t,), (jnp.ones_like(t),))[1]

    def snr(self, t):
        return self.alpha(t) / self.sigma(t)

    def log_snr(self, t):
        """``lambda_t = log(alpha_t / sigma_t)``."""
        return jnp.log(self.alpha(t)) - jnp.log(self.sigma(t))

    def to_config(self) -> dict:
        return {"name": self.name, **dataclasses.asdict(self)}


@dataclasses.dataclass(frozen=True)
class CondOT(Scheduler):
    """Conditional optimal transport: ``alpha_t = t``, ``sigma_t = 1 - t``."""

    name = "cond_ot"

    def alpha(self, t):
        return jnp.asarray(t)

    def sigma(self, t):
        return 1.0 - jnp.asarray(t)

    def snr_inverse_ratio(self, num, den):
        return num / (num + den)


@dataclasses.dataclass(frozen=True)
class Cosine(Scheduler):
    """Cosine: ``alpha_t = sin(pi t / 2)``, ``sigma_t = cos(pi t / 2)``."""

    name = "cosine"

    def alpha(self, t):
        return jnp.sin(0.5 * math.pi * jnp.asarray(t))

    def sigma(self, t):
        # cos(pi t / 2) as sin(pi (1 - t) / 2): exactly 0 at t = 1 (float32 cos gives -4e-8).
        return jnp.sin(0.5 * math.pi * (1.0 - jnp.asarray(t)))

    def snr_inverse_ratio(self, num, den):
        return (2.0 / math.pi) * jnp.arctan2(num, den)


@dataclasses.dataclass(frozen=True)
class VP(Scheduler):
    """Variance preserving (DDPM), in flow-matching time ``t = 1 - t_ddpm``.

    ``alpha_t = exp(-a (1 - t)^2 - b (1 - t))`` with ``a = (beta_max - beta_min) / 4`` and
    ``b = beta_min / 2``; ``sigma_t = sqrt(1 - alpha_t^2)``. ``alpha_0 ~ 0.0065``, not 0.
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    name = "vp"

    def _log_alpha(self, t):
        u = 1.0 - jnp.asarray(t)
        return -0.25 * (self.beta_max - self.beta_min) * u**2 - 0.5 * self.beta_min * u

    def alpha(self, t):
        return jnp.exp(self._log_alpha(t))

    def sigma(self, t):
        # sqrt(1 - alpha^2) = sqrt(-expm1(2 log alpha)), accurate as alpha -> 1.
        return jnp.sqrt(-jnp.expm1(2.0 * self._log_alpha(t)))

    def log_snr(self, t):
        log_alpha = self._log_alpha(t)
        return log_alpha - 0.5 * jnp.log(-jnp.expm1(2.0 * log_alpha))

    def snr_inverse_ratio(self, num, den):
        # log alpha = 0.5 log(rho^2 / (1 + rho^2)) = -(a u^2 + b u), solved for u = 1 - t >= 0.
        a = 0.25 * (self.beta_max - self.beta_min)
        b = 0.5 * self.beta_min
        log_alpha = -0.5 * jnp.log1p(jnp.square(den / num))
        u = 2.0 * (-log_alpha) / (b + jnp.sqrt(b * b - 4.0 * a * log_alpha))
        return 1.0 - u


@dataclasses.dataclass(frozen=True)
class VE(Scheduler):
    """Variance exploding in flow-matching time (EDM): ``alpha = 1``, ``sigma = sigma_max (1 - t)``.

    Not a path from pure noise (``alpha_0 = 1``); used as the *target* of a scheduler change.
    """

    sigma_max: float = 80.0
    name = "ve"

    def alpha(self, t):
        return jnp.ones_like(jnp.asarray(t, dtype=jnp.result_type(float)))

    def sigma(self, t):
        return self.sigma_max * (1.0 - jnp.asarray(t))

    def snr_inverse_ratio(self, num, den):
        return 1.0 - den / (self.sigma_max * num)


@dataclasses.dataclass(frozen=True)
class Scaled(Scheduler):
    """``base`` with its noise scaled: ``alphabar_t = alpha_t``, ``sigmabar_t = sigma0 sigma_t``.

    The target of preconditioning (BNS eq. 14): the source distribution becomes N(0, sigma0^2 I).
    """

    base: Scheduler
    sigma0: float
    name = "scaled"

    def alpha(self, t):
        return self.base.alpha(t)

    def sigma(self, t):
        return self.sigma0 * self.base.sigma(t)

    def snr_inverse_ratio(self, num, den):
        return self.base.snr_inverse_ratio(self.sigma0 * num, den)

    def to_config(self) -> dict:
        return {"name": self.name, "base": self.base.to_config(), "sigma0": self.sigma0}


@dataclasses.dataclass(frozen=True)
class Truncated(Scheduler):
    """``base`` on ``[t_min, t_max]``, reparametrised to ``r`` in [0, 1].

    See docs/models.md#truncated-ends.

    ``t_r = t_min + (t_max - t_min) r`` and ``s_r = (1 - r) sigma(0) / sigma(t_min) + r``; the path
    ``xbar(r) = s_r x(t_r)`` has ``alphabar_r = s_r alpha(t_r)``, ``sigmabar_r = s_r sigma(t_r)``
    (the same SNR as ``base`` at ``t_r``). A solve from ``xbar(0) = x0`` stands for
    ``x(t_min) = (sigma(t_min) / sigma(0)) x0``, dropping the data part ``alpha(t_min) x1``, and
    returns ``xbar(1) = x(t_max)``.
    """

    base: Scheduler
    t_min: float
    t_max: float
    name = "truncated"

    def time(self, r):
        """``t_r``, the base scheduler's time."""
        return self.t_min + (self.t_max - self.t_min) * jnp.asarray(r)

    def scale(self, r):
        """``s_r``: ``sigma(0) / sigma(t_min)`` at r = 0, 1 at r = 1."""
        r = jnp.asarray(r)
        start = self.base.sigma(jnp.zeros_like(r)) / self.base.sigma(jnp.full_like(r, self.t_min))
        return (1.0 - r) * start + r

    def alpha(self, t):
        return self.scale(t) * self.base.alpha(self.time(t))

    def sigma(self, t):
        return self.scale(t) * self.base.sigma(self.time(t))

    def log_snr(self, t):
        return self.base.log_snr(self.time(t))

    def snr_inverse_ratio(self, num, den):
        t = self.base.snr_inverse_ratio(num, den)
        return jnp.clip((t - self.t_min) / (self.t_max - self.t_min), 0.0, 1.0)

    def to_config(self) -> dict:
        return {
            "name": self.name,
            "base": self.base.to_config(),
            "t_min": self.t_min,
            "t_max": self.t_max,
        }


def cond_ot() -> CondOT:
    """The CondOT (rectified-flow) scheduler ``alpha_t = t, sigma_t = 1 - t``."""
    return CondOT()


def cosine() -> Cosine:
    """The cosine scheduler ``alpha_t = sin(pi t / 2), sigma_t = cos(pi t / 2)``."""
    return Cosine()


def vp(beta_min: float = 0.1, beta_max: float = 20.0) -> VP:
    """The variance-preserving scheduler of DDPM / score SDEs, in flow-matching time."""
    if not 0.0 < beta_min < beta_max:
        raise ValueError(f"vp needs 0 < beta_min < beta_max, got {beta_min}, {beta_max}.")
    return VP(float(beta_min), float(beta_max))


def reaches_data(scheduler: Scheduler) -> bool:
    """Whether ``sigma(1) = 0``: the path ends at the data, not at a noise level (DDPM,
    truncated paths)."""
    with jax.ensure_compile_time_eval():
        return bool(scheduler.sigma(jnp.float32(1.0)) == 0.0)


SCHEDULERS = {"cond_ot": cond_ot, "cosine": cosine, "vp": vp}


def scheduler_from_config(config: dict) -> Scheduler:
    """Inverse of ``Scheduler.to_config``."""
    config = dict(config)
    name = config.pop("name")
    if name == "ve":
        return VE(**config)
    if name == "scaled":
        return Scaled(scheduler_from_config(config["base"]), config["sigma0"])
    if name == "truncated":
        return Truncated(scheduler_from_config(config["base"]), config["t_min"], config["t_max"])
    from bespoke_jax.core.ddpm import ddpm  # ddpm.py builds on this module

    makers = {**SCHEDULERS, "ddpm": ddpm}
    if name not in makers:
        raise ValueError(f"Unknown scheduler {name!r}; valid names: {sorted(makers)}.")
    return makers[name](**config)
