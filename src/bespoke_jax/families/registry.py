"""The solver families by name, and rebuilding one from its saved configuration.

A new family adds its constructor to ``FAMILIES`` and its class to ``_TYPES``; nothing else in
the package names a family.
"""

from __future__ import annotations

from collections.abc import Callable

from bespoke_jax.core.schedulers import scheduler_from_config
from bespoke_jax.families.base import Family
from bespoke_jax.families.bns import BNS, bns
from bespoke_jax.families.bns_range import BNSRange
from bespoke_jax.families.bst import BST, bst
from bespoke_jax.families.grid import LearnedGrid, learned_grid

# bns(guidance=...) builds a BNSRange.
FAMILIES: dict[str, Callable] = {"bst": bst, "bns": bns, "grid": learned_grid}
_TYPES = {cls.name: cls for cls in (BST, BNS, BNSRange, LearnedGrid)}


def family_from_config(config: dict) -> Family:
    """The family that ``{"name": family.name, **family.config()}`` describes.

    Configs written before a key was renamed (``renamed_keys`` of the family: BST's ``"base"``,
    BNS's ``"init"``, both now ``"source"``) load too.

    Raises:
      ValueError: an unknown family name or hyper-parameters its constructor refuses.
    """
    kwargs = dict(config)
    name = kwargs.pop("name", None)
    if name not in _TYPES:
        raise ValueError(f"Unknown solver family {name!r}; known families: {sorted(FAMILIES)}.")
    cls = _TYPES[name]
    for old, new in cls.renamed_keys.items():
        if old in kwargs and new not in kwargs:
            kwargs[new] = kwargs.pop(old)
    if isinstance(kwargs.get("scheduler"), dict):
        kwargs["scheduler"] = scheduler_from_config(kwargs["scheduler"])
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ValueError(f"{config} does not configure the {name} family: {err}") from None
