"""Discrete DDPM maths of the ``patches16`` training and quality check (timestep 0 is data)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def linear_alphas_cumprod(beta_start=1e-4, beta_end=0.02, num_timesteps=1000) -> np.ndarray:
    """DDPM ``abar_k = prod_{j <= k} (1 - beta_j)`` of linear betas, ``(N,)`` float64."""
    return np.cumprod(1.0 - np.linspace(beta_start, beta_end, num_timesteps))


def ddim_sample(eps, x_noise, alphas_cumprod, steps: int = 100, clip: float | None = None):
    """Deterministic DDIM (the probability-flow ODE of a discrete DDPM schedule).

    ``x_{prev} = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev) eps_hat`` with ``x0_hat = (x -
    sqrt(1 - abar_k) eps_hat) / sqrt(abar_k)`` over ``steps`` timesteps evenly spaced from
    ``N - 1`` to 0, then ``x0_hat`` at timestep 0 (NFE = ``steps``). A Python loop of jitted
    steps: XLA on CPU runs convolutions inside a ``lax.scan`` many times slower.

    Args:
        eps: ``eps(x, timestep (B,)) -> (B, ...)``, the (guided) noise prediction.
        x_noise: ``(B, ...)`` standard normal noise.
        alphas_cumprod: ``abar_k``, ``(N,)``.
        steps: number of model calls.
        clip: if given, ``x0_hat`` is clipped to ``[-clip, clip]`` and ``eps_hat`` recomputed
            from it (diffusers' ``clip_sample``): no longer the ODE of the network's field.

    Returns:
        ``(B, ...)`` samples.
    """
    abar = jnp.asarray(alphas_cumprod, jnp.float32)
    timesteps = np.round(np.linspace(len(abar) - 1, 0, steps)).astype(np.int32)

    @jax.jit
    def step(x, k, k_prev):
        a, a_prev = abar[k], jnp.where(k_prev < 0, 1.0, abar[k_prev])
        e = eps(x, jnp.full(x.shape[:1], k, x.dtype))
        x0 = (x - jnp.sqrt(1.0 - a) * e) / jnp.sqrt(a)
        if clip is not None:
            x0 = jnp.clip(x0, -clip, clip)
            e = (x - jnp.sqrt(a) * x0) / jnp.sqrt(1.0 - a)
        return jnp.sqrt(a_prev) * x0 + jnp.sqrt(1.0 - a_prev) * e

    x = x_noise
    for k, k_prev in zip(timesteps, [*timesteps[1:], -1], strict=True):
        x = step(x, k, k_prev)
    return x
