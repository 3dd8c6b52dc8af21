"""Model outputs to velocity (docs/schedulers.md) and classifier-free guidance.

A model ``f(t, x, args)`` predicting ``f`` becomes the velocity ``u_t(x) = beta_t x + gamma_t f``:

- ``"velocity"``: beta = 0, gamma = 1;
- ``"x1"`` (data): beta = sigma'/sigma, gamma = (alpha' sigma - alpha sigma')/sigma;
- ``"eps"`` (noise x0): beta = alpha'/alpha, gamma = (sigma' alpha - sigma alpha')/alpha;
- ``"v"`` = alpha x0 - sigma x1: beta = (alpha alpha' + sigma sigma')/(alpha^2 + sigma^2),
  gamma = (alpha sigma' - sigma alpha')/(alpha^2 + sigma^2).

Where a conversion is singular at an end (eps-prediction where alpha = 0, x1-prediction where
sigma = 0, every prediction where the path's speed is infinite, as VP's sigma' at t = 1),
``to_velocity`` truncates to ``[t_min, t_max]``: the noise end to ``sigma / alpha = 80`` (EDM's
sigma_max), the data end to ``sigma / alpha = 1e-3``, reparametrised to ``r`` in [0, 1]
(``Truncated``), so every solver keeps its [0, 1] grid and standard normal noise.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from bespoke_jax.core.schedulers import Scheduler, Truncated
from bespoke_jax.core.transforms import ScaleTime, scale_time

PREDICTIONS = ("velocity", "x1", "eps", "v")
NOISE_END_RATIO = 80.0  # sigma / alpha where a field singular at t = 0 starts
DATA_END_RATIO = 1e-3  # sigma / alpha where a field singular at t = 1 stops


def velocity_coefficients(scheduler: Scheduler, prediction: str, t):
    """``(beta_t, gamma_t)`` with ``u_t(x) = beta_t x + gamma_t f_t(x)``."""
    if prediction not in PREDICTIONS:
        raise ValueError(f"Unknown prediction {prediction!r}; valid predictions: {PREDICTIONS}.")
    if prediction == "velocity":
        return jnp.zeros_like(t), jnp.ones_like(t)
    a, s = scheduler.alpha(t), scheduler.sigma(t)
    da, ds = scheduler.d_alpha(t), scheduler.d_sigma(t)
    if prediction == "x1":
        return ds / s, (da * s - a * ds) / s
    if prediction == "eps":
        return da / a, (ds * a - s * da) / a
    norm = a * a + s * s
    return (a * da + s * ds) / norm, (a * ds - s * da) / norm


def interval(scheduler: Scheduler, prediction: str) -> tuple[float, float]:
    """``(t_min, t_max)``: 0 and 1, or the truncation of an end where the conversion or the
    path's speed (``alpha'``, ``sigma'``) is not finite."""
    with jax.ensure_compile_time_eval():
        ends = jnp.array([0.0, 1.0])
        values = [
            *velocity_coefficients(scheduler, prediction, ends),
            scheduler.d_alpha(ends),
            scheduler.d_sigma(ends),
        ]
        finite = np.all([np.isfinite(np.asarray(v)) for v in values], axis=0)
        t_min = 0.0 if finite[0] else float(scheduler.snr_inverse(1.0 / NOISE_END_RATIO))
        t_max = 1.0 if finite[1] else float(scheduler.snr_inverse(1.0 / DATA_END_RATIO))
    return t_min, t_max


def _convert(f: Callable, scheduler: Scheduler, prediction: str) -> Callable:
    if prediction == "velocity":
        return f

    def u(t, x, args=None):
        beta, gamma = velocity_coefficients(scheduler, prediction, t)
        return beta * x + gamma * f(t, x, args)

    return u


@dataclasses.dataclass(frozen=True, eq=False)
class Velocity:
    """The velocity field ``u(t, x, args)`` of a model, in the time of ``.scheduler``.

    Attributes:
      model: ``f(t, x, args)``, in the time of ``source``.
      source: the scheduler the model was trained with.
      prediction: what ``model`` predicts.
      scheduler: the path the field's time follows: ``source``, or ``Truncated(source, t_min,
        t_max)`` where the conversion is singular at an end. Pass it to the solvers, grids and
        families that ask for a scheduler.
    """

    model: Callable
    source: Scheduler
    prediction: str
    scheduler: Scheduler

    @property
    def t_min(self) -> float:
        """Where in the model's time the field starts (0 unless truncated)."""
        return self.scheduler.t_min if self.scheduler is not self.source else 0.0

    @property
    def t_max(self) -> float:
        """Where in the model's time the field ends (1 unless truncated)."""
        return self.scheduler.t_max if self.scheduler is not self.source else 1.0

    @functools.cached_property
    def _field(self) -> Callable:
        u = _convert(self.model, self.source, self.prediction)
        if self.scheduler is self.source:
            return u
        return scale_time(u, ScaleTime(self.scheduler.time, self.scheduler.scale))

    def __call__(self, t, x, args=None):
        return self._field(t, x, args)


def to_velocity(f: Callable, scheduler: Scheduler, prediction: str) -> Velocity:
    """Wrap a model ``f(t, x, args)`` that predicts ``prediction`` into a velocity field.

    Where the conversion is singular at an end of ``scheduler`` (see ``interval``), the field
    integrates ``[t_min, t_max]`` reparametrised to ``r`` in [0, 1]: ``t = t_min + (t_max - t_min)
    r``, ``ubar_r(x) = (s'/s) x + (t_max - t_min) s u_t(x / s)`` with ``s`` from ``Truncated``, so
    a solve from standard normal noise returns ``x(t_max)``. Its ``.scheduler`` is then the
    ``Truncated`` scheduler: pass that one to solvers that ask for a scheduler.

    Args:
      f: the model; ``x`` has shape ``(B, *shape)``.
      scheduler: the scheduler the model was trained with.
      prediction: ``"velocity"``, ``"x1"``, ``"eps"`` or ``"v"``.

    Returns:
      ``u(t, x, args) = beta_t x + gamma_t f(t, x, args)`` (truncated where needed), a
      ``Velocity``.
    """
    return truncated_velocity(f, scheduler, prediction, *interval(scheduler, prediction))


def truncated_velocity(f, scheduler: Scheduler, prediction: str, t_min: float, t_max: float):
    """``to_velocity`` on a given ``[t_min, t_max]`` (no truncation when it is [0, 1])."""
    if not 0.0 <= t_min < t_max <= 1.0:
        raise ValueError(f"Need 0 <= t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}.")
    field_scheduler = scheduler
    if (t_min, t_max) != (0.0, 1.0):
        field_scheduler = Truncated(scheduler, float(t_min), float(t_max))
    return Velocity(f, scheduler, prediction, field_scheduler)


def data_prediction(u: Callable, scheduler: Scheduler) -> Callable:
    """Data prediction of a velocity: ``(sigma' x - sigma u) / (sigma' alpha - sigma alpha')``."""

    def x1_hat(t, x, velocity):
        a, s = scheduler.alpha(t), scheduler.sigma(t)
        da, ds = scheduler.d_alpha(t), scheduler.d_sigma(t)
        return (ds * x - s * velocity) / (ds * a - s * da)

    return x1_hat


def broadcast_scale(w, x, name: str = "args['guidance']"):
    """A scale ``w`` (scalar, or ``(B,)`` per sample) shaped to multiply ``x (B, *shape)``."""
    w = jnp.asarray(w)
    if w.ndim == 0:
        return w
    if w.shape != x.shape[:1]:
        raise ValueError(
            f"{name} must be a scalar or have shape (B,) = {x.shape[:1]}, got {w.shape}."
        )
    return w.reshape(w.shape + (1,) * (x.ndim - 1))


def guided(u_cond: Callable, u_uncond: Callable) -> Callable:
    """Classifier-free guidance ``u = (1 + w) u_cond - w u_uncond`` with ``w = args["guidance"]``.

    ``w`` is a scalar or a ``(B,)`` array of per-sample scales; ``w = 0`` is the conditional
    model. The scale lives in ``args`` so that changing it does not recompile. Both fields
    receive the same ``args``.
    """

    def u(t, x, args):
        w = broadcast_scale(args["guidance"], x)
        return (1.0 + w) * u_cond(t, x, args) - w * u_uncond(t, x, args)

    return u
