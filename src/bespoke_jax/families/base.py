"""The interface every learned solver family implements (BST, BNS), in the optax style.

A family is a small frozen object holding its static hyper-parameters (NFE, base solver...).
Its parameters are a pytree of unconstrained arrays, mapped to valid solver coefficients inside
the family (monotone grids from softmax or squared increments, positive scales from ``exp``),
never clipped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Protocol

import jax
import optax

from bespoke_jax.truth.data import TrainingData

Params = Any


class Family(Protocol):
    """A learned solver family: what ``train``, storage, export and reports ask of it.

    Attributes:
      name: ``"bst"`` or ``"bns"``; the key of ``FAMILIES``.
      label: a display name for tables and figures (``"RK2-BST"``, ``"BNS"``).
      nfe: model calls one ``sample`` spends.
      source: the base solver that ``init()`` reproduces (``bst(base=...)``,
        ``bns(init=...)``).
      num_params: the number of free scalars in ``init()``'s pytree.
      save_ts: ``(S,)`` times at which the training data must keep the ground-truth path
        (``None`` when the loss needs only (noise, sample) pairs).
      default_steps, default_batch_size: ``train``'s defaults.
      optimizer_name: the name of ``default_optimizer(steps)`` (``"Adam"``, ``"Prodigy"``).
      renamed_keys: ``{old: new}`` keys of configs written by earlier versions.
    """

    name: ClassVar[str]
    optimizer_name: ClassVar[str]
    renamed_keys: ClassVar[dict[str, str]]
    nfe: int
    source: str
    default_steps: int
    default_batch_size: int

    @property
    def label(self) -> str: ...

    @property
    def num_params(self) -> int: ...

    @property
    def save_ts(self) -> jax.Array | None: ...

    def init(self) -> Params:
        """Parameters that reproduce the base solver exactly."""
        ...

    def default_optimizer(
        self, steps: int | None = None, learning_rate: float | optax.Schedule | None = None
    ) -> optax.GradientTransformation:
        """``train``'s optimizer over ``steps`` (default ``default_steps``): Adam at
        ``learning_rate`` when one is given, else the family's choice."""
        ...

    def sample(self, params: Params, u: Callable, x0: jax.Array, args=None) -> jax.Array:
        """``x1 (B, *shape)`` from noise ``x0 (B, *shape)`` in exactly ``nfe`` calls of ``u``."""
        ...

    def loss(self, params: Params, u: Callable, batch: TrainingData, args=None) -> jax.Array:
        """The family's default training objective on a minibatch (a scalar to minimise)."""
        ...

    def coefficients(self, params: Params) -> dict[str, jax.Array]:
        """The decoded solver coefficients (for plots and inspection), by name."""
        ...

    def export(self, params: Params) -> dict:
        """The coefficients as JSON-serialisable values for ``export_solver``, with
        ``"times"``: the ``nfe + 1`` model times (where the field is evaluated, then 1)."""
        ...

    def config(self) -> dict:
        """JSON-serialisable hyper-parameters; ``family_from_config`` rebuilds the family."""
        ...


def warmup_cosine(peak: float, steps: int) -> optax.Schedule:
    """A linear warm-up over the first 5% of ``steps`` to ``peak``, then cosine decay to 0."""
    return optax.warmup_cosine_decay_schedule(0.0, peak, steps // 20, steps, 0.0)


class AdamDefaults:
    """The defaults of a family trained with Adam on ``warmup_cosine(peak_learning_rate, steps)``
    (a mixin: the family sets ``peak_learning_rate`` and has ``default_steps``)."""

    peak_learning_rate: ClassVar[float]

    def default_learning_rate(self, steps: int | None = None) -> optax.Schedule:
        """``warmup_cosine(peak_learning_rate, steps)``; ``steps`` default ``default_steps``."""
        return warmup_cosine(
            self.peak_learning_rate, self.default_steps if steps is None else steps
        )

    def default_optimizer(
        self, steps: int | None = None, learning_rate: float | optax.Schedule | None = None
    ) -> optax.GradientTransformation:
        """Adam at ``learning_rate``, default ``default_learning_rate(steps)``."""
        rate = self.default_learning_rate(steps) if learning_rate is None else learning_rate
        return optax.adam(rate)
