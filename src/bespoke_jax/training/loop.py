"""Training a learned solver family on ground truth of a frozen model (Optax), data parallel.

One step draws a minibatch of ``batch_size`` row indices from the RNG key (on the replicated
training set, so the draw does not depend on the device count), splits the minibatch and its
per-sample args over the mesh's ``"batch"`` axis, and applies Adam (or ``optimizer``) to the
gradient of the mean loss, with parameters and optimizer state replicated. One device, many,
or several processes (``jax.distributed``) give the same parameters up to float reassociation
in the cross-device mean.

Ground truth is solved sharded (``sharded_training_data``), optionally through the on-disk
cache (``cache_dir``); training resumes from Orbax checkpoints (``checkpoint_dir``); every
evaluation is logged as a JSON line and passed to ``on_eval``.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from bespoke_jax.core.args import take
from bespoke_jax.core.checks import check_batch
from bespoke_jax.core.metrics import psnr
from bespoke_jax.families.base import Family, Params
from bespoke_jax.io.cache import array_hash, cached_training_data
from bespoke_jax.io.checkpoints import Checkpoints, TrainState
from bespoke_jax.truth.data import TrainingData
from bespoke_jax.truth.sharded import (
    AXIS,
    CHUNK_SIZE,
    data_mesh,
    pad_rows,
    replicate,
    row_specs,
    shard_rows,
    sharded_training_data,
    to_host,
)


class TrainResult(NamedTuple):
    """Result of ``train``.

    Attributes:
      params: the parameters of the best validation PSNR.
      history: ``{"step", "loss", "val_psnr", "wall_s"}`` lists, one entry per evaluation.
      best_step: the step of ``params`` (0 is the initialisation).
      best_val_psnr: validation PSNR of ``params``.
      train_data, val_data: the ground truth used (reuse it for other NFE values).
      model_calls: sample-forwards of the model spent (one call of ``u`` on a batch of B
        counts B): ground truth (also when read from the cache: what it cost to make),
        training steps and validation sampling.
    """

    params: Params
    history: dict
    best_step: int
    best_val_psnr: float
    train_data: TrainingData
    val_data: TrainingData
    model_calls: int


# TrainingData is built field by field here: its ``__len__`` (the number of samples) breaks
# NamedTuple._replace, and with it TrainingData.take.


def _host_data(data: TrainingData) -> TrainingData:
    return TrainingData(*to_host(tuple(data[:5])), int(data.nfe))


def _rows(data: TrainingData, index) -> TrainingData:
    """The samples at ``index`` (an integer array); ``path_ts`` is shared."""
    x0, x1, ts, xs, us, nfe = data
    return TrainingData(
        x0[index],
        x1[index],
        ts,
        None if xs is None else xs[index],
        None if us is None else us[index],
        nfe,
    )


def _check_data(data: TrainingData, x0: np.ndarray, name: str, needs_path: bool) -> None:
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


class _Log:
    """JSON lines, one per evaluation, written by process 0; lines past a resumed step dropped."""

    def __init__(self, path, resumed_step: int | None):
        self.path = None if path is None or jax.process_index() else Path(path)
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = []
        if resumed_step is not None and self.path.exists():
            lines = [
                line
                for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= resumed_step
            ]
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        tmp.write_text("".join(line + "\n" for line in lines))
        os.replace(tmp, self.path)

    def write(self, record: dict) -> None:
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


def _key_data(key):
    """``(impl, raw data)`` of a typed key or of a legacy uint32 ``PRNGKey``."""
    key = jax.random.key(0) if key is None else key
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)
    return jax.random.key_impl(key), np.asarray(jax.random.key_data(key))


def train(
    family: Family,
    u: Callable,
    x0_train,
    x0_val,
    *,
    args=None,
    val_args=None,
    steps: int | None = None,
    batch_size: int | None = None,
    learning_rate: float | optax.Schedule | None = None,
    optimizer: optax.GradientTransformation | None = None,
    loss: Callable | None = None,
    eval_every: int = 100,
    data_range: float = 2.0,
    key=None,
    train_data: TrainingData | None = None,
    val_data: TrainingData | None = None,
    progress: bool = True,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    cache_dir=None,
    model_id: str | None = None,
    mesh: Mesh | None = None,
    chunk_size: int = CHUNK_SIZE,
    remat: bool = False,
    checkpoint_dir=None,
    checkpoint_every: int | None = None,
    log_path=None,
    on_eval: Callable[[int, dict], None] | None = None,
) -> TrainResult:
    """Fit ``family``'s parameters to the ground truth of ``u``.

    Args:
      family: a learned solver family (``bst``, ``bns``).
      u: the frozen model's velocity field ``u(t, x, args)``.
      x0_train, x0_val: ``(N, *shape)`` and ``(M, *shape)`` noise (with several processes:
        the same arrays on every process).
      args, val_args: the field's args for the training and validation noise (leaves whose
        leading axis is N (M) are per-sample and follow their noise through minibatches and
        device shards).
      steps, batch_size: optimisation steps and minibatch size; default the family's
        ``default_steps`` and ``default_batch_size`` (else 1000 and 40). ``batch_size`` must
        be a multiple of the number of devices of the mesh.
      learning_rate: a float or an Optax schedule for Adam (ignored with ``optimizer``).
        With neither given: ``family.default_optimizer(steps)`` where the family has one,
        else Adam at ``family.default_learning_rate(steps)`` (else 1e-3).
      loss: ``loss(params, u, batch, args) -> scalar``; default ``family.loss``.
      eval_every: steps between validation evaluations.
      data_range: R of the validation PSNR.
      key: PRNG key for minibatch sampling (default ``jax.random.key(0)``).
      train_data, val_data: precomputed ground truth (from an earlier result).
      rtol, atol: the ground-truth tolerances.
      cache_dir: an on-disk ground-truth cache (``cached_training_data``), shared across runs
        and NFE values; ``model_id`` names the model in it (default: a probe hash of ``u``).
      mesh: the devices (default: all, ``data_mesh()``).
      chunk_size: samples per ground-truth solve (``sharded_training_data``).
      remat: recompute the model's activations in the backward pass (``jax.checkpoint`` on
        every model call of the loss) instead of storing them: less memory, one more forward.
      checkpoint_dir: where to keep Orbax checkpoints and resume from (same command, same
        result); ``checkpoint_every`` steps apart (default ``eval_every``) and at the end.
      log_path: a JSON-lines log of the evaluations (default ``checkpoint_dir/log.jsonl``).
      on_eval: ``on_eval(step, metrics)`` after every evaluation, on every process, with
        ``metrics = {"loss", "val_psnr", "best_val_psnr", "wall_s"}``.

    Raises:
      ValueError: inconsistent shapes, sizes or ground truth, or a ``checkpoint_dir`` of
        another run.
    """
    x0_train, x0_val = np.asarray(x0_train), np.asarray(x0_val)
    check_batch(jnp.asarray(x0_train), args, "x0_train")
    check_batch(jnp.asarray(x0_val), val_args, "x0_val")
    if x0_train.shape[1:] != x0_val.shape[1:]:
        raise ValueError(
            f"x0_train and x0_val must share a sample shape, got {x0_train.shape[1:]} and "
            f"{x0_val.shape[1:]}."
        )
    n, m = x0_train.shape[0], x0_val.shape[0]
    for name, size in (("x0_train", n), ("x0_val", m)):
        if size < 1:
            raise ValueError(f"{name} is empty: give at least one noise sample (shape (N, ...)).")
    steps = getattr(family, "default_steps", 1000) if steps is None else steps
    if batch_size is None:
        batch_size = min(getattr(family, "default_batch_size", 40), n)
    mesh = data_mesh() if mesh is None else mesh
    if not 1 <= batch_size <= n:
        raise ValueError(
            f"batch_size must be in [1, {n}] (the training set size), got {batch_size}."
        )
    if batch_size % mesh.size:
        fits = batch_size - batch_size % mesh.size
        raise ValueError(
            f"batch_size {batch_size} must be a multiple of the {mesh.size} devices of the mesh "
            f"(each takes an equal share): use {fits or mesh.size} or {fits + mesh.size}."
        )
    checkpoint_every = eval_every if checkpoint_every is None else checkpoint_every
    if steps < 1 or eval_every < 1 or checkpoint_every < 1:
        raise ValueError(
            f"steps, eval_every and checkpoint_every must be positive, got {steps}, "
            f"{eval_every}, {checkpoint_every}."
        )
    family_optimizer = getattr(family, "default_optimizer", None)
    if optimizer is None and learning_rate is None and family_optimizer is not None:
        optimizer = family_optimizer(steps)
    if optimizer is None:
        if learning_rate is None:
            default = getattr(family, "default_learning_rate", None)
            learning_rate = 1e-3 if default is None else default(steps)
        optimizer = optax.adam(learning_rate)
    loss = family.loss if loss is None else loss
    impl, key_data = _key_data(key)

    def solve(x0, field_args, save_ts):
        if cache_dir is None:
            return sharded_training_data(
                u, x0, args=field_args, save_ts=save_ts, rtol=rtol, atol=atol, mesh=mesh,
                chunk_size=chunk_size,
            )  # fmt: skip
        return cached_training_data(
            u, x0, cache_dir=cache_dir, model_id=model_id, args=field_args, save_ts=save_ts,
            rtol=rtol, atol=atol, mesh=mesh, chunk_size=chunk_size,
        )  # fmt: skip

    train_data = (
        solve(x0_train, args, family.save_ts) if train_data is None else _host_data(train_data)
    )
    val_data = solve(x0_val, val_args, None) if val_data is None else _host_data(val_data)
    _check_data(train_data, x0_train, "train_data", needs_path=family.save_ts is not None)
    _check_data(val_data, x0_val, "val_data", needs_path=False)

    replicated = NamedSharding(mesh, P())
    data_dev, args_dev = replicate((TrainingData(*train_data[:5]), args), mesh)
    m_pad = math.ceil(m / mesh.size) * mesh.size
    val_host = pad_rows((val_data.x0, val_data.x1, val_args), m, m_pad)
    val_dev = shard_rows(val_host, mesh, m_pad)
    field = jax.checkpoint(u) if remat else u
    per_device, val_per_device = batch_size // mesh.size, m_pad // mesh.size

    def local_gradient(params, key_data, data, field_args):
        """The mean loss and its gradient over the minibatch: each device takes its share of
        the drawn indices, one all-reduce (``pmean``) combines them."""
        key, sub = jax.random.split(jax.random.wrap_key_data(key_data, impl=impl))
        index = jax.random.choice(sub, n, (batch_size,), replace=False)
        mine = jax.lax.dynamic_slice_in_dim(
            index, jax.lax.axis_index(AXIS) * per_device, per_device
        )
        value, grads = jax.value_and_grad(loss)(
            params, field, _rows(data, mine), take(field_args, mine, n)
        )
        return jax.lax.pmean((value, grads), AXIS), jax.random.key_data(key)

    gradient = jax.shard_map(
        local_gradient, mesh=mesh, in_specs=P(), out_specs=P(), check_vma=False
    )

    @functools.partial(jax.jit, out_shardings=replicated)
    def update(params, opt_state, key_data, data, field_args):
        (value, grads), key_data = gradient(params, key_data, data, field_args)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, key_data, value

    def local_psnr(params, x0, x1, field_args):
        """The validation PSNR: per-sample values of this device's rows, padding masked out."""
        x = family.sample(params, u, x0, field_args)
        values = jax.vmap(lambda a, b: psnr(a[None], b[None], data_range))(x, x1)
        rows = jax.lax.axis_index(AXIS) * val_per_device + jnp.arange(val_per_device)
        return jax.lax.psum(jnp.sum(jnp.where(rows < m, values, 0.0)), AXIS) / m

    validate = jax.jit(
        jax.shard_map(
            local_psnr,
            mesh=mesh,
            in_specs=(P(), *row_specs(val_host, m_pad)),
            out_specs=P(),
            check_vma=False,
        )
    )

    init = family.init()
    state = replicate(TrainState(init, optimizer.init(init), key_data, init), mesh)
    fingerprint = {
        "family": {"name": family.name, **family.config()},
        "steps": steps,
        "batch_size": batch_size,
        "eval_every": eval_every,
        "data_range": data_range,
        "learning_rate": learning_rate if isinstance(learning_rate, int | float) else "schedule",
        "key": key_data.tolist(),
        "x0_train": array_hash(x0_train),
        "x0_val": array_hash(x0_val),
    }
    checkpoints = None if checkpoint_dir is None else Checkpoints(checkpoint_dir, fingerprint)
    restored = None if checkpoints is None else checkpoints.restore(state)
    if restored is None:
        start, elapsed = 0, 0.0
        init_psnr = float(validate(state.params, *val_dev))
        best_step, best_psnr = 0, init_psnr
        history = {"step": [0], "loss": [float("nan")], "val_psnr": [init_psnr], "wall_s": [0.0]}
    else:
        state, meta = restored
        start, elapsed, history = meta["step"], meta["wall_s"], meta["history"]
        best_step, best_psnr = meta["best_step"], meta["best_val_psnr"]
    if log_path is None and checkpoint_dir is not None:
        log_path = Path(checkpoint_dir) / "log.jsonl"
    log = _Log(log_path, None if restored is None else start)
    if restored is None:
        log.write({"step": 0, "loss": None, "val_psnr": best_psnr, "wall_s": 0.0})

    params, opt_state, key_data, best_params = state
    clock = time.perf_counter() - elapsed
    step = start
    bar = tqdm(
        range(start + 1, steps + 1),
        initial=start,
        total=steps,
        disable=not progress or jax.process_index() != 0,
        desc=f"train {family.name}",
    )
    for step in bar:
        params, opt_state, key_data, value = update(params, opt_state, key_data, data_dev, args_dev)
        if step % eval_every == 0 or step == steps:
            value = float(value)
            if not np.isfinite(value):
                warnings.warn(
                    f"Training diverged at step {step} (loss {value}); returning the best "
                    f"parameters so far (step {best_step}). Lower the learning rate.",
                    RuntimeWarning,
                    stacklevel=2,
                )
                break
            val = float(validate(params, *val_dev))
            if val > best_psnr:
                best_step, best_psnr, best_params = step, val, params
            wall = time.perf_counter() - clock
            for name, item in zip(history, (step, value, val, wall), strict=True):
                history[name].append(item)
            metrics = {"loss": value, "val_psnr": val, "best_val_psnr": best_psnr, "wall_s": wall}
            log.write({"step": step, **metrics})
            if on_eval is not None:
                on_eval(step, metrics)
            bar.set_postfix(loss=f"{value:.4g}", val_psnr=f"{val:.2f}", best=f"{best_psnr:.2f}")
        if checkpoints is not None and (step % checkpoint_every == 0 or step == steps):
            meta = {
                "step": step,
                "wall_s": time.perf_counter() - clock,
                "history": history,
                "best_step": best_step,
                "best_val_psnr": best_psnr,
            }
            checkpoints.save(step, TrainState(params, opt_state, key_data, best_params), meta)
    bar.close()
    if checkpoints is not None:
        checkpoints.close()
    calls = (
        train_data.nfe * n
        + val_data.nfe * m
        + family.nfe * (step * batch_size + len(history["step"]) * m)
    )
    best = jax.tree.map(jnp.asarray, to_host(best_params))
    return TrainResult(best, history, best_step, best_psnr, train_data, val_data, calls)
