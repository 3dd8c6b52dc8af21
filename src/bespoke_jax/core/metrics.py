"""Sample-quality metrics against ground truth, in the papers' per-sample convention."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bespoke_jax.core.checks import DATA_RANGE_HINT, check_positive


def per_sample_mse(x, y):
    """``(B,)`` ``mean_d (x_b - y_b)^2`` for batches ``x, y`` of shape ``(B, *shape)``."""
    diff = jnp.reshape(x - y, (x.shape[0], -1))
    return jnp.mean(jnp.square(diff), axis=-1)


def rmse(x, y):
    """``mean_b sqrt(mean_d (x_b - y_b)^2)`` for batches ``x, y`` of shape ``(B, *shape)``."""
    return jnp.mean(jnp.sqrt(per_sample_mse(x, y)))


def psnr(x, y, data_range: float = 2.0):
    """``mean_b 10 log10(R^2 / mean_d (x_b - y_b)^2)``; R = ``data_range`` (2 for [-1, 1] data)."""
    if not isinstance(data_range, jax.core.Tracer):
        check_positive("data_range", data_range, DATA_RANGE_HINT)
    return jnp.mean(10.0 * jnp.log10(data_range**2 / per_sample_mse(x, y)))


def log_mse(x, y):
    """``mean_b log(mean_d (x_b - y_b)^2)``: the BNS training loss (eq. 13), minus PSNR up to
    an affine map (``psnr = 10 log10(R^2) - (10 / log 10) log_mse`` sample by sample)."""
    return jnp.mean(jnp.log(per_sample_mse(x, y)))
