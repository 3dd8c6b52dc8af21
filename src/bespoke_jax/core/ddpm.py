"""Discrete DDPM schedules (``alphas_cumprod`` of a beta schedule) as a smooth ``Scheduler``.

A network trained on ``N`` discrete timesteps ``k = 0 .. N-1`` (k = 0 least noisy) sees
``x_k = sqrt(abar_k) x1 + sqrt(1 - abar_k) x0``. Here time runs from noise to data, so the
network's time input is the continuous timestep ``tau(t) = (1 - t)(N - 1)`` (``N - 1`` at t = 0,
0 at t = 1). Between the integer timesteps the log-SNR ``lambda(tau) = log(alpha / sigma)`` is the
monotone cubic Hermite (PCHIP, Fritsch-Carlson) interpolant of the knots
``lambda_k = (1/2) log(abar_k / (1 - abar_k))``: C1, monotone, and exact at the knots, so
``alpha(t_k)^2 = sigmoid(2 lambda_k) = abar_k``. A piecewise-linear interpolant would make the
velocity jump at every knot (docs/models.md#discrete-ddpm-schedules-bjddpm).

The ends are not 0 and 1: ``alpha(0) = sqrt(abar_{N-1})`` (0.0064 for linear betas) and
``sigma(1) = sqrt(beta_0)`` (0.01). Solvers and ground truth integrate ``t`` in [0, 1] and return
``x(1)``, the flow's state at timestep 0, without a final data prediction (no extra model call).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from bespoke_jax.core.schedulers import Scheduler

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


def alphas_cumprod(beta_schedule: str, beta_start: float, beta_end: float, n: int) -> np.ndarray:
    """``abar_k = prod_{j <= k} (1 - beta_j)``, ``(n,)`` float64, as diffusers defines them."""
    if beta_schedule == "linear":
        betas = np.linspace(beta_start, beta_end, n)
    elif beta_schedule == "scaled_linear":
        betas = np.linspace(beta_start**0.5, beta_end**0.5, n) ** 2
    elif beta_schedule == "squaredcos_cap_v2":
        s = np.arange(n + 1) / n
        abar = np.cos((s + 0.008) / 1.008 * np.pi / 2) ** 2
        betas = np.minimum(1.0 - abar[1:] / abar[:-1], 0.999)
    else:
        raise ValueError(f"Unknown beta_schedule {beta_schedule!r}; valid: {BETA_SCHEDULES}.")
    return np.cumprod(1.0 - betas)


def pchip_slopes(y: np.ndarray) -> np.ndarray:
    """Fritsch-Carlson slopes of the monotone cubic through ``y`` at unit spacing (as SciPy)."""
    d = np.diff(y)
    m = np.zeros_like(y)
    same = d[:-1] * d[1:] > 0
    m[1:-1] = np.where(
        same, 2.0 / (1.0 / np.where(same, d[:-1], 1) + 1.0 / np.where(same, d[1:], 1)), 0
    )
    for end, d0, d1 in ((0, d[0], d[1]), (-1, d[-1], d[-2])):
        slope = (3.0 * d0 - d1) / 2.0
        if np.sign(slope) != np.sign(d0):
            slope = 0.0
        elif np.sign(d0) != np.sign(d1) and abs(slope) > abs(3.0 * d0):
            slope = 3.0 * d0
        m[end] = slope
    return m


def _hermite(y0, y1, m0, m1, s):
    """The cubic Hermite segment on [0, 1] at ``s``."""
    s2, s3 = s * s, s * s * s
    return (
        (2 * s3 - 3 * s2 + 1) * y0
        + (s3 - 2 * s2 + s) * m0
        + (-2 * s3 + 3 * s2) * y1
        + (s3 - s2) * m1
    )


@dataclasses.dataclass(frozen=True)
class DDPM(Scheduler):
    """A discrete DDPM beta schedule, smooth in between its timesteps (see the module docstring).

    Attributes:
      beta_schedule: ``"linear"``, ``"scaled_linear"`` or ``"squaredcos_cap_v2"``.
      beta_start, beta_end: the first and last beta (linear schedules).
      num_train_timesteps: ``N``.
    """

    beta_schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    num_train_timesteps: int = 1000
    name = "ddpm"

    @functools.cached_property
    def _knots(self):
        """``lambda_k`` and PCHIP slopes ``m_k`` over the timestep, float64 NumPy ``(N,)``."""
        abar = self.alphas_cumprod()
        lam = 0.5 * (np.log(abar) - np.log1p(-abar))
        return lam, pchip_slopes(lam)

    def alphas_cumprod(self) -> np.ndarray:
        """``abar_k``, ``(N,)`` float64."""
        return alphas_cumprod(
            self.beta_schedule, self.beta_start, self.beta_end, self.num_train_timesteps
        )

    def timestep(self, t):
        """The network's time input ``(1 - t)(N - 1)``: ``N - 1`` at noise, 0 at data."""
        return (1.0 - jnp.asarray(t)) * (self.num_train_timesteps - 1)

    def _segments(self, dtype):
        lam, m = self._knots
        return tuple(jnp.asarray(v, dtype) for v in (lam[:-1], lam[1:], m[:-1], m[1:]))

    def _lambda_of_tau(self, tau):
        tau = jnp.asarray(tau, dtype=jnp.result_type(tau, float))
        k = jnp.clip(jnp.floor(tau), 0, self.num_train_timesteps - 2)
        y0, y1, m0, m1 = (v[k.astype(jnp.int32)] for v in self._segments(tau.dtype))
        return _hermite(y0, y1, m0, m1, tau - k)

    def log_snr(self, t):
        return self._lambda_of_tau(self.timestep(jnp.asarray(t, dtype=jnp.result_type(t, float))))

    def alpha(self, t):
        return jnp.exp(0.5 * jax.nn.log_sigmoid(2.0 * self.log_snr(t)))

    def sigma(self, t):
        return jnp.exp(0.5 * jax.nn.log_sigmoid(-2.0 * self.log_snr(t)))

    def snr_inverse_ratio(self, num, den):
        """The t with ``snr(t) = num / den``, clamped to [0, 1] (the schedule's SNR range).

        Bisection on the monotone segment, then one Newton step whose derivative is exact under
        ``jax.jvp`` (the inverse function theorem).
        """
        num, den = jnp.asarray(num), jnp.asarray(den)
        dtype = jnp.result_type(num, den, float)
        lam, _ = self._knots
        target = jnp.clip(jnp.log(num) - jnp.log(den), lam[-1], lam[0]).astype(dtype)
        ascending = jnp.asarray(lam[::-1], dtype)  # lambda increases as tau decreases
        n = self.num_train_timesteps
        k = jnp.clip(n - 1 - jnp.searchsorted(ascending, jax.lax.stop_gradient(target)), 0, n - 2)
        y0, y1, m0, m1 = (v[k] for v in self._segments(dtype))

        def bisect(_, bounds):
            lo, hi = bounds
            mid = 0.5 * (lo + hi)
            above = _hermite(y0, y1, m0, m1, mid) > jax.lax.stop_gradient(target)
            return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

        zeros = jnp.zeros_like(target)
        lo, hi = jax.lax.fori_loop(0, 30, bisect, (zeros, zeros + 1.0))
        tau = jax.lax.stop_gradient(k.astype(dtype) + 0.5 * (lo + hi))
        slope = jax.lax.stop_gradient(
            jax.jvp(self._lambda_of_tau, (tau,), (jnp.ones_like(tau),))[1]
        )
        tau = tau - (self._lambda_of_tau(tau) - target) / slope
        return 1.0 - tau / (n - 1)


def ddpm(
    beta_schedule: str = "linear",
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    num_train_timesteps: int = 1000,
) -> DDPM:
    """A discrete DDPM schedule as a smooth ``Scheduler`` in flow-matching time.

    Args:
      beta_schedule: ``"linear"`` (DDPM), ``"scaled_linear"`` (Stable Diffusion, with
        ``beta_start=0.00085, beta_end=0.012``) or ``"squaredcos_cap_v2"`` (improved DDPM; the
        beta range is not used).
      beta_start, beta_end: the first and last beta, ``0 < beta_start < beta_end < 1``.
      num_train_timesteps: the number ``N >= 3`` of discrete timesteps the network was trained on.

    Returns:
      The ``DDPM`` scheduler: ``alpha(t)^2`` equals ``alphas_cumprod[k]`` at ``timestep(t) = k``.
    """
    if beta_schedule not in BETA_SCHEDULES:
        raise ValueError(f"Unknown beta_schedule {beta_schedule!r}; valid: {BETA_SCHEDULES}.")
    if not 0.0 < beta_start < beta_end < 1.0:
        raise ValueError(f"ddpm needs 0 < beta_start < beta_end < 1, got {beta_start}, {beta_end}.")
    if int(num_train_timesteps) != num_train_timesteps or num_train_timesteps < 3:
        raise ValueError(f"num_train_timesteps must be an integer >= 3, got {num_train_timesteps}.")
    return DDPM(beta_schedule, float(beta_start), float(beta_end), int(num_train_timesteps))
