"""The solver families by name, and rebuilding one from its saved configuration."""

from __future__ import annotations

from collections.abc import Callable

from bespoke_jax.core.schedulers import scheduler_from_config
from bespoke_jax.families.base import Family
from bespoke_jax.families.bns import bns
from bespoke_jax.families.bst import bst
from bespoke_jax.families.grid import learned_grid

FAMILIES: dict[str, Callable] = {"bst": bst, "bns": bns, "grid": learned_grid}


def family_from_config(config: dict) -> Family:
    """The family that ``{"name": family.name, **family.config()}`` describes.

    Raises:
      ValueError: an unknown family name or hyper-parameters its constructor refuses.
    """
    kwargs = dict(config)
    name = kwargs.pop("name", None)
    if name not in FAMILIES:
        raise ValueError(f"Unknown solver family {name!r}; known families: {sorted(FAMILIES)}.")
    if isinstance(kwargs.get("scheduler"), dict):
        kwargs["scheduler"] = scheduler_from_config(kwargs["scheduler"])
    try:
        return FAMILIES[name](**kwargs)
    except TypeError as err:
        raise ValueError(f"{config} does not configure the {name} family: {err}") from None
