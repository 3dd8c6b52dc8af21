"""The settings of one training run, resolved in one place from the family's defaults.

``resolve`` turns what the user gave (``None`` for "the family's choice") into a frozen
``TrainConfig``: the family's ``default_steps`` and ``default_batch_size`` (capped at the
training set size), and its ``default_optimizer(steps, learning_rate)`` (Adam at
``learning_rate`` when one is given), and checks the values against each other and the mesh.
"""

from __future__ import annotations

import dataclasses

import optax

from bespoke_jax.families.base import Family


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The resolved settings of a training run.

    Attributes:
      steps: optimisation steps.
      batch_size: minibatch size (a multiple of the mesh's device count).
      optimizer: the Optax transformation applied to the gradient.
      optimizer_name: ``"Prodigy"``, ``"Adam"`` (the family's or Adam at ``learning_rate``), or
        ``"custom"`` for an optimizer the caller gave.
      learning_rate: the learning rate given (a float or a schedule), else ``None``.
      eval_every: steps between validation evaluations.
      checkpoint_every: steps between checkpoints.
      data_range: R of the validation PSNR.
    """

    steps: int
    batch_size: int
    optimizer: optax.GradientTransformation
    optimizer_name: str
    learning_rate: float | optax.Schedule | None = None
    eval_every: int = 100
    checkpoint_every: int = 100
    data_range: float = 2.0

    def fingerprint(self) -> dict:
        """The JSON-serialisable settings that make two runs the same run."""
        rate = self.learning_rate
        return {
            "steps": self.steps,
            "batch_size": self.batch_size,
            "eval_every": self.eval_every,
            "data_range": self.data_range,
            "learning_rate": rate if isinstance(rate, int | float) else "schedule",
        }


def resolve(
    family: Family,
    num_train: int,
    *,
    steps: int | None = None,
    batch_size: int | None = None,
    learning_rate: float | optax.Schedule | None = None,
    optimizer: optax.GradientTransformation | None = None,
    eval_every: int = 100,
    checkpoint_every: int | None = None,
    data_range: float = 2.0,
    num_devices: int = 1,
) -> TrainConfig:
    """The settings of a run of ``family`` on ``num_train`` samples over ``num_devices``.

    Args:
      family: the learned solver family; supplies the defaults.
      num_train: the training set size N.
      steps, batch_size: default ``family.default_steps`` and
        ``min(family.default_batch_size, N)``.
      learning_rate, optimizer: ``optimizer`` when given; else
        ``family.default_optimizer(steps, learning_rate)``.
      eval_every, checkpoint_every: default 100 and ``eval_every``.
      data_range: R of the validation PSNR.
      num_devices: the mesh's device count; ``batch_size`` must be a multiple of it.

    Raises:
      ValueError: a batch size outside ``[1, N]`` or not a multiple of ``num_devices``, or a
        non-positive step count or interval.
    """
    steps = family.default_steps if steps is None else steps
    if batch_size is None:
        batch_size = min(family.default_batch_size, num_train)
    if not 1 <= batch_size <= num_train:
        raise ValueError(
            f"batch_size must be in [1, {num_train}] (the training set size), got {batch_size}."
        )
    if batch_size % num_devices:
        fits = batch_size - batch_size % num_devices
        raise ValueError(
            f"batch_size {batch_size} must be a multiple of the {num_devices} devices of the "
            f"mesh (each takes an equal share): use {fits or num_devices} or "
            f"{fits + num_devices}."
        )
    checkpoint_every = eval_every if checkpoint_every is None else checkpoint_every
    if steps < 1 or eval_every < 1 or checkpoint_every < 1:
        raise ValueError(
            f"steps, eval_every and checkpoint_every must be positive, got {steps}, "
            f"{eval_every}, {checkpoint_every}."
        )
    if optimizer is not None:
        name = "custom"
    else:
        optimizer = family.default_optimizer(steps, learning_rate)
        name = family.optimizer_name if learning_rate is None else "Adam"
    return TrainConfig(
        steps, batch_size, optimizer, name, learning_rate, eval_every, checkpoint_every, data_range
    )
