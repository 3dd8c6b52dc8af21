"""The model a command-line run samples from: a shipped model name or a user's entry point.

A user model is given as ``module:function`` (``module`` importable from the current directory
or ``sys.path``, or a file ``path/to/file.py``, imported with its folder on ``sys.path`` so it
can import its neighbours). The function is called with no arguments, or
with ``guidance=w`` when a guidance scale is asked for, and returns a dict (or any object with
these attributes):

- ``velocity`` (required): the field ``u(t, x, args) -> dx/dt``, ``x`` of shape ``(B, *shape)``;
  wrap eps-, x1- or v-prediction networks with ``bj.to_velocity`` first.
- ``shape`` (required): one sample's shape, a tuple of ints.
- ``args``: ``None`` (default), a pytree shared by every sample, or a function
  ``args(key, n)`` returning the args of a batch of ``n`` samples (per-sample leaves with
  leading axis ``n``, e.g. class labels).
- ``scheduler``: the model's ``bj`` scheduler, needed by the exponential-integrator and EDM
  baselines and by BNS preconditioning (default ``None``).
- ``data_range``: the R of PSNR (default 2.0, data in [-1, 1]).
- ``forwards_per_call``: network passes one call of ``velocity`` makes (default 1; 2 with
  classifier-free guidance).

Example::

    def make():
        mixture = bj.GaussianMixture.random(jax.random.key(0), 8, 2)
        return {"velocity": mixture.velocity(bj.cond_ot()), "shape": (2,),
                "scheduler": bj.cond_ot()}

    # bespoke-jax train --model my_module:make --family bns --nfe 8
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp

from bespoke_jax.app.defaults import DEFAULT_GUIDANCE
from bespoke_jax.core.checks import check_field
from bespoke_jax.core.schedulers import Scheduler
from bespoke_jax.models.pretrained import NAMES, pretrained

# pixels in [-1, 1]; points in [-2, 2]^2
_DATA_RANGES = {"digits": 2.0, "patches16": 2.0, "checkerboard": 4.0}


@dataclasses.dataclass(frozen=True, eq=False)
class UserModel:
    """A velocity field and what sampling from it needs.

    Attributes:
      name: the shipped name or the entry point it was loaded from.
      velocity: ``u(t, x, args) -> dx/dt`` with ``x`` of shape ``(B, *shape)``.
      shape: one sample's shape.
      make_args: ``make_args(key, n)``, the field's args for a batch of ``n`` samples.
      scheduler: the model's scheduler, or ``None`` when unknown.
      data_range: R of PSNR.
      guidance: the classifier-free guidance scale baked into ``make_args`` (``None``: none).
      forwards_per_call: network passes per call of ``velocity``.
      identity: names the model in ground-truth caches (``None``: a probe hash of ``velocity``).
    """

    name: str
    velocity: Callable
    shape: tuple[int, ...]
    make_args: Callable
    scheduler: Scheduler | None = None
    data_range: float = 2.0
    guidance: float | None = None
    forwards_per_call: int = 1
    identity: str | None = None

    def noise(self, key, n: int) -> jax.Array:
        """``(n, *shape)`` standard normal float32 noise."""
        return jax.random.normal(key, (n, *self.shape), jnp.float32)


def load_model(spec: str, *, guidance: float | None = None) -> UserModel:
    """The model named by ``spec``: a shipped name (``"digits"``) or ``module:function``.

    Args:
      spec: ``"digits"``, ``"checkerboard"``, ``"package.module:function"`` or
        ``"path/to/file.py:function"``.
      guidance: classifier-free guidance scale ``w``; for ``"digits"`` the default is
        ``DEFAULT_GUIDANCE``, an entry point receives it as ``function(guidance=w)``.

    Raises:
      ValueError: unknown name, malformed or unimportable entry point, or a return value that
        breaks the contract (the message says what to change).
    """
    if spec in NAMES:
        return _shipped(spec, guidance)
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr.isidentifier():
        raise ValueError(
            f"Unknown model {spec!r}: give a shipped model ({', '.join(NAMES)}) or an entry "
            f"point 'module:function' (or 'path/to/file.py:function')."
        )
    function = getattr(_import(module_name, spec), attr, None)
    if not callable(function):
        raise ValueError(f"Entry point {spec!r}: {module_name!r} has no function {attr!r}.")
    if guidance is not None and "guidance" not in inspect.signature(function).parameters:
        raise ValueError(
            f"Entry point {spec!r} takes no guidance: drop --guidance or give {attr} a "
            f"'guidance' keyword argument."
        )
    try:
        made = function() if guidance is None else function(guidance=guidance)
    except Exception as err:  # the user's code: any error, named in one line
        raise ValueError(f"Entry point {spec!r} raised {type(err).__name__}: {err}") from err
    return _from_record(model_reference(spec), made, guidance)


def model_reference(spec: str) -> str:
    """``spec`` as a solver records it: a shipped name or ``module:function`` as given, a file
    entry point with the file's absolute path (the same file wherever the solver is used)."""
    module_name, sep, attr = spec.partition(":")
    if sep and module_name.endswith(".py"):
        return f"{Path(module_name).resolve()}:{attr}"
    return spec


def _import(module_name: str, spec: str):
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise ValueError(f"Entry point {spec!r}: no file {module_name!r}.")
            folder = str(path.resolve().parent)  # so that the file imports its neighbours
            if folder not in sys.path:
                sys.path.insert(0, folder)
            loader = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(loader)
            loader.loader.exec_module(module)
            return module
        if "" not in sys.path and str(Path.cwd()) not in sys.path:
            sys.path.insert(0, str(Path.cwd()))
        return importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"Entry point {spec!r}: cannot import {module_name!r} ({err}).") from None
    except ValueError:
        raise
    except Exception as err:  # SyntaxError, or any error the module raises on import
        raise ValueError(
            f"Entry point {spec!r}: importing {module_name!r} raised {type(err).__name__}: {err}"
        ) from err


def _field(record, name: str, default=None):
    if isinstance(record, dict):
        return record.get(name, default)
    return getattr(record, name, default)


def _from_record(spec: str, record, guidance: float | None) -> UserModel:
    velocity, shape = _field(record, "velocity"), _field(record, "shape")
    if not callable(velocity) or shape is None:
        raise ValueError(
            f"Entry point {spec!r} must return a dict with at least 'velocity' (a function "
            f"u(t, x, args)) and 'shape' (one sample's shape), got {type(record).__name__}."
        )
    check_field(velocity, f"Entry point {spec!r} (its 'velocity')")
    try:
        shape = tuple(int(n) for n in shape)
    except TypeError:
        raise ValueError(f"Entry point {spec!r}: 'shape' must be a tuple of ints.") from None
    if not shape or min(shape) < 1:
        raise ValueError(f"Entry point {spec!r}: 'shape' must be positive ints, got {shape}.")
    args = _field(record, "args")
    make_args = args if callable(args) else (lambda key, n: args)
    scheduler = _field(record, "scheduler")
    if scheduler is not None and not isinstance(scheduler, Scheduler):
        raise ValueError(
            f"Entry point {spec!r}: 'scheduler' must be a bj scheduler (bj.cond_ot(), ...)."
        )
    return UserModel(
        name=spec,
        velocity=velocity,
        shape=shape,
        make_args=make_args,
        scheduler=scheduler,
        data_range=float(_field(record, "data_range", 2.0)),
        guidance=guidance,
        forwards_per_call=int(_field(record, "forwards_per_call", 1)),
    )


def _shipped(name: str, guidance: float | None) -> UserModel:
    model = pretrained(name)
    if model.num_classes is None:
        if guidance:
            raise ValueError(f"{name!r} is unconditional: drop --guidance.")
        make_args, guidance = (lambda key, n: None), None
    else:
        guidance = DEFAULT_GUIDANCE if guidance is None else float(guidance)

        def make_args(key, n):
            """Labels 0, 1, ..., num_classes - 1 in turn (balanced and readable in grids)."""
            return model.args(jnp.arange(n, dtype=jnp.int32) % model.num_classes, guidance)

    return UserModel(
        name=name,
        velocity=model.velocity,
        shape=model.shape,
        make_args=make_args,
        scheduler=model.scheduler,
        data_range=_DATA_RANGES[name],
        guidance=guidance,
        forwards_per_call=2 if guidance else 1,
        identity=model.identity,
    )
