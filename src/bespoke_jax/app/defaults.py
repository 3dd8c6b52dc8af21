"""The command line's and the demo's defaults, and what they read off a solver family.

Imports nothing heavy: the command line's help texts use it without JAX.
"""

from __future__ import annotations

import dataclasses

# The learned solver families the command line trains (bj.FAMILIES).
FAMILY_NAMES = ("bns", "bst", "grid")
# Classifier-free guidance of the shipped conditional model when none is asked for: the
# demo's setting, where learned solvers gain the most over the baselines.
DEFAULT_GUIDANCE = 2.0
# BNS preconditioning of the demo: on digits at w = 2, 0.5 trained better than 1 and much
# better than 5, the BNS paper's value for its latent text-to-image model at w = 2.
DEMO_SIGMA0 = 0.5
# ``bj.train``'s steps for a family that declares none.
FALLBACK_STEPS = 1000


@dataclasses.dataclass(frozen=True)
class Settings:
    """Sizes and optimisation settings of a run.

    Attributes:
      n_train, n_val, n_test: noise samples for training, validation (the best step is kept)
        and the reported comparison; each set has its own ground truth.
      steps, batch_size, learning_rate: of ``bj.train``; ``None`` takes the family's defaults.
      eval_every: steps between validations.
      seed: the seed of the noise sets.
      cache_dir: an on-disk ground-truth cache (``None``: solve in memory).
    """

    n_train: int = 520
    n_val: int = 128
    n_test: int = 256
    steps: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    eval_every: int = 50
    seed: int = 0
    cache_dir: str | None = None


QUICK = Settings(n_train=4, n_val=4, n_test=4, steps=2, batch_size=4, eval_every=1)


@dataclasses.dataclass(frozen=True)
class DemoPreset:
    """What ``bespoke-jax demo --model NAME`` runs for one shipped model.

    Attributes:
      nfes: the NFE values of the learned solvers and the baselines.
      sigma0: BNS preconditioning.
      settings: sizes and optimisation (``steps=None``: each family's default).
      description: the report's sentence on the model.
    """

    nfes: tuple[int, ...]
    sigma0: float
    settings: Settings
    description: str


DEMO_MODELS = {
    "digits": DemoPreset(
        nfes=(4, 8, 16),
        sigma0=DEMO_SIGMA0,
        settings=Settings(),
        description='`bj.pretrained("digits")`, 8x8 handwritten digits in [-1, 1], CondOT flow '
        "matching (a velocity MLP).",
    ),
    # A guided UNet forward and backward costs milliseconds per sample on 2 CPU cores: fewer
    # samples, 300 steps of batch 16 and NFE 8 keep the demo within 15 minutes there.
    # sigma0 = 1 (none): bj.choose_sigma0's pick at NFE 8 from 0.1 .. 4 (BENCHMARKS.md).
    "patches16": DemoPreset(
        nfes=(8,),
        sigma0=1.0,
        settings=Settings(n_train=256, n_val=64, n_test=128, steps=300, batch_size=16),
        description='`bj.pretrained("patches16")`, 16x16 RGB patches of seven photographs in '
        '[-1, 1], a class-conditional conv UNet predicting the noise on `bj.ddpm("linear")`.',
    ),
}


def default_steps(family) -> int:
    """The optimisation steps ``bj.train`` takes for ``family`` when none are given."""
    return int(getattr(family, "default_steps", FALLBACK_STEPS))


def optimizer_name(family, learning_rate: float | None = None) -> str:
    """The display name of the optimizer ``bj.train`` uses for ``family``.

    A given ``learning_rate`` selects Adam at that rate; otherwise the family's own optimizer
    (``family.optimizer_name``). A family that does not name it is Adam unless it has a
    ``default_optimizer`` (BNS: Prodigy).
    """
    if learning_rate is not None:
        return "Adam"
    if hasattr(family, "optimizer_name"):
        return str(family.optimizer_name)
    return "Prodigy" if hasattr(family, "default_optimizer") else "Adam"
