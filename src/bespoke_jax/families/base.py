"""The interface every learned solver family implements (BST, BNS), in the optax style.

A family is a small frozen object holding its static hyper-parameters (NFE, base solver...).
Its parameters are a pytree of unconstrained arrays, mapped to valid solver coefficients inside
the family (monotone grids from softmax/softplus increments, positive scales), never clipped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Protocol

import jax

from bespoke_jax.truth.data import TrainingData

Params = Any


class Family(Protocol):
    """A learned solver family.

    Attributes:
      name: ``"bst"`` or ``"bns"``; the key of ``FAMILIES``.
      nfe: model calls one ``sample`` spends.
      num_params: the number of free scalars in ``init()``'s pytree.
      save_ts: ``(S,)`` times at which the training data must keep the ground-truth path
        (``None`` when the loss needs only (noise, sample) pairs).
    """

    name: ClassVar[str]
    nfe: int

    @property
    def num_params(self) -> int: ...

    @property
    def save_ts(self) -> jax.Array | None: ...

    def init(self) -> Params:
        """Parameters that reproduce the base solver exactly."""
        ...

    def sample(self, params: Params, u: Callable, x0: jax.Array, args=None) -> jax.Array:
        """``x1 (B, *shape)`` from noise ``x0 (B, *shape)`` in exactly ``nfe`` calls of ``u``."""
        ...

    def loss(self, params: Params, u: Callable, batch: TrainingData, args=None) -> jax.Array:
        """The family's default training objective on a minibatch (a scalar to minimise)."""
        ...

    def config(self) -> dict:
        """JSON-serialisable hyper-parameters; ``family_from_config`` rebuilds the family."""
        ...
