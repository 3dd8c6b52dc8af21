"""Model outputs to velocity (docs/schedulers.md) and classifier-free guidance.

A model ``f(t, x, args)`` predicting ``f`` becomes the velocity ``u_t(x) = beta_t x + gamma_t f``:

- ``"velocity"``: beta = 0, gamma = 1;
- ``"x1"`` (data): beta = sigma'/sigma, gamma = (alpha' sigma - alpha sigma')/sigma;
- ``"eps"`` (noise x0): beta = alpha'/alpha, gamma = (sigma' alpha - sigma alpha')/alpha;
- ``"v"`` = alpha x0 - sigma x1: beta = (alpha alpha' + sigma sigma')/(alpha^2 + sigma^2),
  gamma = (alpha sigma' - sigma alpha')/(alpha^2 + sigma^2).

x1-prediction is singular at sigma = 0 (t = 1) and eps-prediction at alpha = 0 (t = 0): solvers
never evaluate the model there except where the field is finite.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp

from bespoke_jax.core.schedulers import Scheduler

PREDICTIONS = ("velocity", "x1", "eps", "v")


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


def to_velocity(f: Callable, scheduler: Scheduler, prediction: str) -> Callable:
    """Wrap a model ``f(t, x, args)`` that predicts ``prediction`` into a velocity field.

    Args:
      f: the model; ``x`` has shape ``(B, *shape)``.
      scheduler: the scheduler the model was trained with.
      prediction: ``"velocity"``, ``"x1"``, ``"eps"`` or ``"v"``.

    Returns:
      ``u(t, x, args) = beta_t x + gamma_t f(t, x, args)``.
    """
    velocity_coefficients(scheduler, prediction, jnp.zeros(()))  # validates the name early
    if prediction == "velocity":
        return f

    def u(t, x, args=None):
        beta, gamma = velocity_coefficients(scheduler, prediction, t)
        return beta * x + gamma * f(t, x, args)

    return u


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
