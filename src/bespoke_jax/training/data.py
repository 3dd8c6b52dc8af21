"""The ground truth a training run needs: solved sharded, read from the cache, or checked."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from jax.sharding import Mesh

from bespoke_jax.families.base import Family
from bespoke_jax.io.cache import cached_training_data
from bespoke_jax.truth.data import TrainingData
from bespoke_jax.truth.sharded import CHUNK_SIZE, sharded_training_data, to_host


def _host(data: TrainingData) -> TrainingData:
    return TrainingData(*to_host(tuple(data[:5])), int(data.nfe))


def _check(data: TrainingData, x0: np.ndarray, name: str, needs_path: bool) -> None:
    if data.x0.shape != x0.shape or not np.array_equal(data.x0, x0):
        raise ValueError(
            f"{name} was solved for other noise than the x0 given with it: pass the noise it "
            f"was made from, or leave {name} out to solve the ground truth again."
        )
    if needs_path and data.path_xs is None:
        raise ValueError(
            f"The family's loss needs the ground-truth path but {name} has none: build it with "
            f"make_training_data(..., save_ts=family.save_ts), or leave {name} out."
        )


def run_data(
    family: Family,
    u: Callable,
    noise: tuple[np.ndarray, np.ndarray],
    field_args: tuple,
    given: tuple[TrainingData | None, TrainingData | None],
    *,
    mesh: Mesh,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    cache_dir=None,
    model_id: str | None = None,
    chunk_size: int = CHUNK_SIZE,
    progress: bool = False,
) -> tuple[TrainingData, TrainingData]:
    """``(train_data, val_data)`` as host arrays for ``noise = (x0_train, x0_val)``.

    A given ``TrainingData`` (``given``, else ``None``) is checked against its noise (and, for
    training, the family's need of a path); a missing one is solved by
    ``sharded_training_data``, or through ``cached_training_data`` with a ``cache_dir``.
    Training data keeps the path at ``family.save_ts``; validation data is pairs only.
    ``progress`` draws a bar of the chunks solved and the model calls spent for each solve.

    Raises:
      ValueError: given data of other noise, or without the path the family's loss needs.
    """

    def solve(x0, a, save_ts):
        kwargs = dict(args=a, save_ts=save_ts, rtol=rtol, atol=atol, mesh=mesh, progress=progress)
        if cache_dir is None:
            return sharded_training_data(u, x0, chunk_size=chunk_size, **kwargs)
        return cached_training_data(
            u, x0, cache_dir=cache_dir, model_id=model_id, chunk_size=chunk_size, **kwargs
        )

    out = []
    for name, x0, a, data, save_ts in zip(
        ("train_data", "val_data"), noise, field_args, given, (family.save_ts, None), strict=True
    ):
        data = solve(x0, a, save_ts) if data is None else _host(data)
        _check(data, x0, name, needs_path=save_ts is not None)
        out.append(data)
    return out[0], out[1]
