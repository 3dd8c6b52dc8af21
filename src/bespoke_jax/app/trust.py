"""Which model a saved solver is used with: a saved file is data, never a reason to run code.

A solver records its model reference (``user_model.model_reference``): a shipped name, which
is safe to load, or a user's entry point, which is code. ``eval`` and ``sample`` run a
recorded entry point only when the user names it again (``--model``) or opts in
(``--trust-model``); a model other than the recorded one is refused unless ``--force``.
"""

from __future__ import annotations

import warnings

from bespoke_jax.app.user_model import model_reference
from bespoke_jax.models.pretrained import NAMES


def chosen_model(
    solver, recorded: str | None, model: str | None, *, trust_model=False, force=False
) -> str:
    """The model spec to load for the solver in ``solver`` (its path, for messages).

    Args:
      solver: the solver's directory.
      recorded: the model reference its ``solver.json`` records (``None``: none).
      model: ``--model`` as given (``None``: not given).
      trust_model: ``--trust-model``: run a recorded entry point.
      force: ``--force``: use ``model`` although the solver was trained for another.

    Raises:
      ValueError: no model known; a recorded entry point neither named again nor trusted; or
        another model than the recorded one without ``force`` (the message names both).
    """
    if model is not None:
        if recorded is not None and model_reference(model) != model_reference(recorded):
            if not force:
                raise ValueError(
                    f"{solver} was trained for the model {recorded!r}, not {model!r}: a solver "
                    f"fits the model it was trained for; pass --force to use it with {model!r}."
                )
            warnings.warn(
                f"Using {solver}, trained for {recorded!r}, with {model!r} (--force).",
                stacklevel=2,
            )
        return model
    if recorded is None:
        raise ValueError(f"{solver} does not record its model: pass --model.")
    if recorded not in NAMES and not trust_model:
        raise ValueError(
            f"{solver} records the model entry point {recorded!r}, which is code that would "
            f"run: pass --model {recorded} to run it (or --trust-model to run what the solver "
            f"records)."
        )
    return recorded
