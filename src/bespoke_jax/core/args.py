"""Per-sample and shared leaves of a model's ``args`` pytree.

A leaf whose leading axis equals the batch size travels with its samples (labels, prompts);
every other leaf (a guidance scale) is shared by the whole batch.
"""

from __future__ import annotations

import jax
import numpy as np


def is_per_sample(leaf, batch_size: int) -> bool:
    """Whether ``leaf`` has a leading axis of length ``batch_size`` (one row per sample)."""
    return np.ndim(leaf) >= 1 and np.shape(leaf)[0] == batch_size


def batch_axes(args, batch_size: int):
    """The ``in_axes`` pytree for ``jax.vmap``: 0 for per-sample leaves, None for shared ones."""
    return jax.tree.map(lambda leaf: 0 if is_per_sample(leaf, batch_size) else None, args)


def take(args, index, batch_size: int):
    """The args of the samples at ``index`` (an integer array): per-sample leaves indexed."""
    return jax.tree.map(lambda leaf: leaf[index] if is_per_sample(leaf, batch_size) else leaf, args)
