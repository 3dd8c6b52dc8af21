"""Ground-truth training data for learned solvers: (noise, sample) pairs and, optionally, paths."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from bespoke_jax.truth.adaptive import ground_truth
from bespoke_jax.truth.paths import path_velocities


class TrainingData(NamedTuple):
    """Ground truth for ``N`` noise samples.

    Attributes:
      x0: ``(N, *shape)`` noise.
      x1: ``(N, *shape)`` the exact solution at t = 1.
      path_ts: ``(S,)`` times of the saved path, or ``None``.
      path_xs: ``(N, S, *shape)`` the path at ``path_ts``, or ``None``.
      path_us: ``(N, S, *shape)`` the velocity on the path at ``path_ts``, or ``None``.
      nfe: model calls the ground truth spent (batched solve plus path velocities).
    """

    x0: jax.Array
    x1: jax.Array
    path_ts: jax.Array | None = None
    path_xs: jax.Array | None = None
    path_us: jax.Array | None = None
    nfe: int = 0


def make_training_data(
    u: Callable, x0, *, args=None, save_ts=None, rtol: float = 1e-5, atol: float = 1e-5
) -> TrainingData:
    """Solve the ground truth for ``x0``; with ``save_ts`` also keep the path and its velocity.

    The velocities at the saved points cost ``S`` batched model calls more, counted in ``nfe``.
    """
    gt = ground_truth(u, x0, args=args, rtol=rtol, atol=atol, save_ts=save_ts)
    if save_ts is None:
        return TrainingData(jnp.asarray(x0), gt.x1, nfe=gt.nfe)
    us = path_velocities(u, gt.ts, gt.xs, args)
    return TrainingData(jnp.asarray(x0), gt.x1, gt.ts, gt.xs, us, gt.nfe + len(gt.ts))
