"""What the command line reads off a solver family: its training steps and its optimizer's name.

Imports nothing heavy: the command line's help texts and the report use it without JAX.
"""

from __future__ import annotations

# ``bj.train``'s steps for a family that declares none.
FALLBACK_STEPS = 1000


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
