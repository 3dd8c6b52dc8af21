"""Training a learned solver family on ground truth of a frozen model (Optax), data parallel.

``train`` runs in three parts: the settings resolved once (``config.resolve``), the update
and validation steps built by pure factories (``steps``), and ``run_loop``, which alternates
them and hands every step and evaluation to hooks (``hooks``: checkpoints, the JSON-lines
log, the progress bar, the user's ``on_eval``). One device, many, or several processes
(``jax.distributed``) give the same parameters up to float reassociation in the cross-device
mean.

Ground truth is solved sharded (``sharded_training_data``), optionally through the on-disk
cache (``cache_dir``); training resumes from Orbax checkpoints (``checkpoint_dir``).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from bespoke_jax.core.checks import as_noise, check_field, check_train_settings
from bespoke_jax.families.base import Family, Params
from bespoke_jax.io.checkpoints import Checkpoints, TrainState, claim_checkpoint_dir, claim_log
from bespoke_jax.io.files import array_hash
from bespoke_jax.io.outputs import usable_cache
from bespoke_jax.training.config import TrainConfig, resolve
from bespoke_jax.training.data import run_data
from bespoke_jax.training.hooks import (
    Callback,
    CheckpointEvery,
    Hook,
    JsonLog,
    LoopState,
    ProgressBar,
)
from bespoke_jax.training.interrupt import deferred_interrupt, stop_if_interrupted
from bespoke_jax.training.steps import make_update_step, make_validate_step, place_validation
from bespoke_jax.truth.data import TrainingData
from bespoke_jax.truth.sharded import CHUNK_SIZE, data_mesh, replicate, to_host


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


def run_loop(
    update: Callable,
    validate: Callable,
    state: LoopState,
    *,
    steps: int,
    eval_every: int,
    train_inputs: tuple,
    val_inputs: tuple,
    hooks: Sequence[Hook] = (),
) -> LoopState:
    """Take steps ``state.step + 1 .. steps``, validating every ``eval_every`` and at the end.

    Args:
      update: ``update(params, opt_state, key_data, *train_inputs)`` (``make_update_step``).
      validate: ``validate(params, *val_inputs)`` (``make_validate_step``).
      state: where to start (a fresh run's step-0 state or a restored checkpoint).
      steps: the last step.
      eval_every: steps between evaluations.
      train_inputs, val_inputs: the placed data and args of the two steps.
      hooks: told of every evaluation (in order) and then of every step; closed at the end.

    Returns:
      The state after the last step; a step whose loss is not finite ends the loop with a
      ``RuntimeWarning`` (the best parameters so far are kept).
    """
    clock = time.perf_counter() - state.wall_s
    try:
        for step in range(state.step + 1, steps + 1):
            params, opt_state, key_data, value = update(*state.train[:3], *train_inputs)
            state.step, state.train = step, TrainState(params, opt_state, key_data, state.train[3])
            if step % eval_every == 0 or step == steps:
                value = float(value)
                if not np.isfinite(value):
                    warnings.warn(
                        f"Training diverged at step {step} (loss {value}); returning the best "
                        f"parameters so far (step {state.best_step}). Lower the learning rate.",
                        RuntimeWarning,
                        stacklevel=3,
                    )
                    break
                metrics = _evaluate(state, value, float(validate(params, *val_inputs)), clock)
                for hook in hooks:
                    hook.evaluated(step, metrics)
            state.wall_s = time.perf_counter() - clock
            for hook in hooks:
                hook.stepped(state)
            stop_if_interrupted()  # Ctrl-C: after this step's hooks (its checkpoint)
    finally:
        for hook in hooks:
            hook.close()
    return state


def _evaluate(state: LoopState, loss: float, val_psnr: float, clock: float) -> dict:
    """Record an evaluation in ``state`` (history, best parameters); its metrics."""
    if val_psnr > state.best_val_psnr:
        state.best_step, state.best_val_psnr = state.step, val_psnr
        state.train = state.train._replace(best_params=state.train.params)
    wall = time.perf_counter() - clock
    for name, item in zip(state.history, (state.step, loss, val_psnr, wall), strict=True):
        state.history[name].append(item)
    return {
        "loss": loss,
        "val_psnr": val_psnr,
        "best_val_psnr": state.best_val_psnr,
        "wall_s": wall,
    }


def _key_data(key):
    """``(impl, raw data)`` of a typed key or of a legacy uint32 ``PRNGKey``."""
    key = jax.random.key(0) if key is None else key
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)
    return jax.random.key_impl(key), np.asarray(jax.random.key_data(key))


def _check_noise(x0_train, x0_val, args, val_args) -> tuple[np.ndarray, np.ndarray]:
    """Host copies of the noise, checked (``as_noise``): non-empty batches of one sample shape."""
    x0_train = np.asarray(as_noise(x0_train, args, "x0_train"))
    x0_val = np.asarray(as_noise(x0_val, val_args, "x0_val"))
    if x0_train.shape[1:] != x0_val.shape[1:]:
        raise ValueError(
            f"x0_train and x0_val must share a sample shape, got {x0_train.shape[1:]} and "
            f"{x0_val.shape[1:]}."
        )
    return x0_train, x0_val


def _start(family, config: TrainConfig, key_data, mesh, checkpoints, validate_init):
    """The step-0 state of a fresh run, or the latest checkpoint's; and whether it resumed."""
    init = family.init()
    train = replicate(TrainState(init, config.optimizer.init(init), key_data, init), mesh)
    restored = None if checkpoints is None else checkpoints.restore(train)
    if restored is not None:
        train, meta = restored
        state = LoopState(meta["step"], train, meta["history"], meta["best_step"],
                          meta["best_val_psnr"], meta["wall_s"])  # fmt: skip
        return state, True
    psnr0 = float(validate_init(train.params))
    history = {"step": [0], "loss": [float("nan")], "val_psnr": [psnr0], "wall_s": [0.0]}
    return LoopState(0, train, history, 0, psnr0, 0.0), False


def _fingerprint(family, config: TrainConfig, key_data, x0_train, x0_val) -> dict:
    """What makes a checkpoint directory this run's."""
    return {
        "family": {"name": family.name, **family.config()},
        **config.fingerprint(),
        "key": key_data.tolist(),
        "x0_train": array_hash(x0_train),
        "x0_val": array_hash(x0_val),
    }


def _hooks(family, config, state, resumed, checkpoints, log_path, on_eval, progress) -> list:
    """The log (its step-0 line written on a fresh run), ``on_eval``, the bar, checkpoints."""
    log = JsonLog(log_path, state.step if resumed else None)
    if not resumed:
        log.write({"step": 0, "loss": None, "val_psnr": state.best_val_psnr, "wall_s": 0.0})
    hooks = [log, *([] if on_eval is None else [Callback(on_eval)])]
    hooks.append(ProgressBar(f"train {family.name}", state.step, config.steps, progress))
    if checkpoints is not None:
        hooks.append(CheckpointEvery(checkpoints, config.checkpoint_every, config.steps))
    return hooks


@deferred_interrupt
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
        ``default_steps`` and ``default_batch_size`` (at most N). ``batch_size`` must be a
        multiple of the number of devices of the mesh.
      learning_rate: a float or an Optax schedule for Adam (ignored with ``optimizer``).
        With neither given: ``family.default_optimizer(steps)`` (Prodigy for BNS, Adam with a
        warm-up and cosine decay for BST).
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
      progress: tqdm bars: the ground truth's chunks solved and model calls, then the steps
        with the validation PSNR in dB (the rate leaves out the first step's compilation).

    Raises:
      ValueError: inconsistent shapes, sizes or ground truth, or a ``checkpoint_dir`` of
        another run.
    """
    check_field(u, "bj.train")
    x0_train, x0_val = _check_noise(x0_train, x0_val, args, val_args)
    check_train_settings(steps, learning_rate, data_range, rtol, atol)
    if checkpoint_dir is not None:  # outputs checked before any model call
        claim_checkpoint_dir(checkpoint_dir)
    claim_log(log_path)
    cache_dir = usable_cache(cache_dir)
    (n, m), mesh = (x0_train.shape[0], x0_val.shape[0]), data_mesh() if mesh is None else mesh
    config = resolve(
        family, n, steps=steps, batch_size=batch_size, learning_rate=learning_rate,
        optimizer=optimizer, eval_every=eval_every, checkpoint_every=checkpoint_every,
        data_range=data_range, num_devices=mesh.size,
    )  # fmt: skip
    impl, key_data = _key_data(key)
    train_data, val_data = run_data(
        family, u, (x0_train, x0_val), (args, val_args), (train_data, val_data), mesh=mesh,
        rtol=rtol, atol=atol, cache_dir=cache_dir, model_id=model_id, chunk_size=chunk_size,
        progress=progress,
    )  # fmt: skip
    update = make_update_step(
        family, u, config.optimizer, mesh, num_train=n, batch_size=config.batch_size,
        loss=loss, remat=remat, key_impl=impl,
    )  # fmt: skip
    validate = make_validate_step(family, u, mesh, num_val=m, data_range=data_range)
    val_inputs = place_validation(val_data.x0, val_data.x1, val_args, mesh)
    fingerprint = _fingerprint(family, config, key_data, x0_train, x0_val)
    checkpoints = None if checkpoint_dir is None else Checkpoints(checkpoint_dir, fingerprint)
    state, resumed = _start(
        family, config, key_data, mesh, checkpoints, lambda p: validate(p, *val_inputs)
    )
    if log_path is None and checkpoint_dir is not None:
        log_path = Path(checkpoint_dir) / "log.jsonl"
    hooks = _hooks(family, config, state, resumed, checkpoints, log_path, on_eval, progress)
    train_inputs = replicate((TrainingData(*train_data[:5]), args), mesh)
    stop_if_interrupted()
    state = run_loop(
        update, validate, state, steps=config.steps, eval_every=config.eval_every,
        train_inputs=train_inputs, val_inputs=val_inputs, hooks=hooks,
    )  # fmt: skip
    forwards = family.nfe * (state.step * config.batch_size + len(state.history["step"]) * m)
    calls = train_data.nfe * n + val_data.nfe * m + forwards
    best = jax.tree.map(jnp.asarray, to_host(state.train.best_params))
    return TrainResult(
        best, state.history, state.best_step, state.best_val_psnr, train_data, val_data, calls
    )
