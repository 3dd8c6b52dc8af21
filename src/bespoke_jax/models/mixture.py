"""Gaussian-mixture data: the exact marginal velocity under any scheduler (docs/ground_truth.md).

Data ``q = sum_k w_k N(mu_k, s_k^2 I)``. Under the path ``x_t = alpha_t x1 + sigma_t x0`` component
k is ``N(alpha_t mu_k, v_k(t) I)`` with ``v_k = alpha_t^2 s_k^2 + sigma_t^2``, and

    u_t(x) = sum_k pi_k(x, t) [alpha'_t mu_k + (v'_k / (2 v_k)) (x - alpha_t mu_k)],

``pi_k`` the posterior of component k given ``x_t = x``. The posterior means
``E[x1 | x_t] = sum_k pi_k (mu_k + (alpha_t s_k^2 / v_k)(x - alpha_t mu_k))`` and
``E[x0 | x_t] = sum_k pi_k (sigma_t / v_k)(x - alpha_t mu_k)`` give exact x1/eps/v predictions.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from bespoke_jax.core.schedulers import Scheduler


class GaussianMixture(eqx.Module):
    """An isotropic Gaussian mixture in ``d`` dimensions.

    Attributes:
      means: ``(K, d)``.
      stds: ``(K,)``, positive.
      weights: ``(K,)``, positive; normalised on use.
    """

    means: jax.Array
    stds: jax.Array
    weights: jax.Array

    def __init__(self, means, stds, weights):
        means, stds, weights = jnp.asarray(means), jnp.asarray(stds), jnp.asarray(weights)
        if means.ndim != 2:
            raise ValueError(f"means must have shape (K, d), got {means.shape}.")
        k = means.shape[0]
        if stds.shape != (k,) or weights.shape != (k,):
            raise ValueError(
                f"stds and weights must have shape ({k},) to match means {means.shape}, "
                f"got {stds.shape} and {weights.shape}."
            )
        self.means, self.stds, self.weights = means, stds, weights

    @classmethod
    def random(cls, key, num_components: int = 32, dim: int = 64, std: float = 0.05):
        """Means uniform in ``[-1 + 3 std, 1 - 3 std]^d``, equal stds, equal weights."""
        half = 1.0 - 3.0 * std
        means = jax.random.uniform(key, (num_components, dim), minval=-half, maxval=half)
        return cls(means, jnp.full((num_components,), std), jnp.ones((num_components,)))

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, key, n: int):
        """``n`` draws from the data distribution, shape ``(n, d)``."""
        key_k, key_x = jax.random.split(key)
        k = jax.random.categorical(key_k, jnp.log(self.weights), shape=(n,))
        noise = jax.random.normal(key_x, (n, self.dim), dtype=self.means.dtype)
        return self.means[k] + self.stds[k, None] * noise

    def _posterior(self, scheduler: Scheduler, t, x):
        """Responsibilities ``pi (B, K)``, residuals ``x - alpha mu (B, K, d)`` and ``v (K,)``."""
        means, stds, weights = self._params(x.dtype)
        a, s = scheduler.alpha(t), scheduler.sigma(t)
        var = a**2 * stds**2 + s**2
        resid = x[:, None, :] - a * means[None]
        log_w = jnp.log(weights / jnp.sum(weights))
        sq = jnp.sum(jnp.square(resid), axis=-1)
        logits = log_w - 0.5 * sq / var - 0.5 * self.dim * jnp.log(var)
        return jax.nn.softmax(logits, axis=-1), resid, var

    def _params(self, dtype):
        """``(means, stds, weights)`` in the samples' dtype."""
        return tuple(jnp.asarray(p, dtype) for p in (self.means, self.stds, self.weights))

    def _flat(self, t, x):
        """``t`` and ``x`` as ``(B, d)`` in ``x``'s dtype: the field computes in the samples'
        precision whatever the time's."""
        if x.shape[-1] != self.dim and x.reshape(x.shape[0], -1).shape[1] != self.dim:
            raise ValueError(f"Samples must have {self.dim} features, got shape {x.shape}.")
        return jnp.asarray(t, x.dtype), x.reshape(x.shape[0], self.dim)

    def velocity(self, scheduler: Scheduler):
        """The exact marginal velocity field ``u(t, x, args)``, ``x`` of shape ``(B, d)``."""

        def u(t, x, args=None):
            t, flat = self._flat(t, x)
            means, stds, _ = self._params(flat.dtype)
            pi, resid, var = self._posterior(scheduler, t, flat)
            a, s = scheduler.alpha(t), scheduler.sigma(t)
            da, ds = scheduler.d_alpha(t), scheduler.d_sigma(t)
            dvar = 2.0 * a * da * stds**2 + 2.0 * s * ds
            comp = da * means[None] + (dvar / (2.0 * var))[None, :, None] * resid
            return jnp.einsum("bk,bkd->bd", pi, comp).reshape(x.shape)

        return u

    def prediction(self, scheduler: Scheduler, prediction: str):
        """The exact model ``f(t, x, args)`` predicting ``"x1"``, ``"eps"``, ``"v"`` or velocity."""
        if prediction == "velocity":
            return self.velocity(scheduler)
        if prediction not in ("x1", "eps", "v"):
            raise ValueError(
                f"Unknown prediction {prediction!r}; valid: 'velocity', 'x1', 'eps', 'v'."
            )

        def f(t, x, args=None):
            t, flat = self._flat(t, x)
            means, stds, _ = self._params(flat.dtype)
            pi, resid, var = self._posterior(scheduler, t, flat)
            a, s = scheduler.alpha(t), scheduler.sigma(t)
            x1 = jnp.einsum(
                "bk,bkd->bd", pi, means[None] + (a * stds**2 / var)[None, :, None] * resid
            )
            x0 = jnp.einsum("bk,bkd->bd", pi, (s / var)[None, :, None] * resid)
            out = {"x1": x1, "eps": x0, "v": a * x0 - s * x1}[prediction]
            return out.reshape(x.shape)

        return f
