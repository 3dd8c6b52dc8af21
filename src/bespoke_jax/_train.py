"""Training a learned solver family on ground truth of a frozen model (Optax)."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from ._args import take
from ._checks import check_batch
from ._data import TrainingData, make_training_data
from ._family import Family, Params
from ._metrics import psnr


class TrainResult(NamedTuple):
    """Result of ``train``.

    Attributes:
      params: the parameters of the best validation PSNR.
      history: ``{"step", "loss", "val_psnr", "wall_s"}`` lists, one entry per evaluation.
      best_step: the step of ``params`` (0 is the initialisation).
      best_val_psnr: validation PSNR of ``params``.
      train_data, val_data: the ground truth used (reuse it for other NFE values).
      model_calls: sample-forwards of the model spent (one call of ``u`` on a batch of B
        counts B): ground truth, training steps and validation sampling.
    """

    params: Params
    history: dict
    best_step: int
    best_val_psnr: float
    train_data: TrainingData
    val_data: TrainingData
    model_calls: int


def train(
    family: Family,
    u: Callable,
    x0_train,
    x0_val,
    *,
    args=None,
    val_args=None,
    steps: int = 1000,
    batch_size: int = 40,
    learning_rate: float | optax.Schedule = 1e-3,
    optimizer: optax.GradientTransformation | None = None,
    loss: Callable | None = None,
    eval_every: int = 100,
    data_range: float = 2.0,
    key=None,
    train_data: TrainingData | None = None,
    val_data: TrainingData | None = None,
    progress: bool = True,
) -> TrainResult:
    """Fit ``family``'s parameters to the ground truth of ``u``.

    Args:
      family: a learned solver family (``bst``, ``bns``).
      u: the frozen model's velocity field ``u(t, x, args)``.
      x0_train, x0_val: ``(N, *shape)`` and ``(M, *shape)`` noise.
      args, val_args: the field's args for the training and validation noise (leaves whose
        leading axis is N (M) are per-sample and follow their noise through minibatches).
      steps, batch_size: optimisation steps and minibatch size.
      learning_rate: a float or an Optax schedule for Adam (ignored with ``optimizer``).
      loss: ``loss(params, u, batch, args) -> scalar``; default ``family.loss``.
      eval_every: steps between validation evaluations.
      data_range: R of the validation PSNR.
      key: PRNG key for minibatch sampling.
      train_data, val_data: precomputed ground truth (from an earlier result).
    """
    x0_train, x0_val = jnp.asarray(x0_train), jnp.asarray(x0_val)
    check_batch(x0_train, args, "x0_train")
    check_batch(x0_val, val_args, "x0_val")
    if x0_train.shape[1:] != x0_val.shape[1:]:
        raise ValueError(
            f"x0_train and x0_val must share a sample shape, got {x0_train.shape[1:]} and "
            f"{x0_val.shape[1:]}."
        )
    n = x0_train.shape[0]
    if not 1 <= batch_size <= n:
        raise ValueError(
            f"batch_size must be in [1, {n}] (the training set size), got {batch_size}"
        )
    if steps < 1 or eval_every < 1:
        raise ValueError(f"steps and eval_every must be positive, got {steps}, {eval_every}.")
    key = jax.random.key(0) if key is None else key
    loss = family.loss if loss is None else loss
    optimizer = optax.adam(learning_rate) if optimizer is None else optimizer

    if train_data is None:
        train_data = make_training_data(u, x0_train, args=args, save_ts=family.save_ts)
    if val_data is None:
        val_data = make_training_data(u, x0_val, args=val_args)

    def objective(params, index):
        return loss(params, u, train_data.take(index), take(args, index, n))

    @jax.jit
    def update(params, opt_state, index):
        value, grads = jax.value_and_grad(objective)(params, index)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    @jax.jit
    def validate(params):
        return psnr(family.sample(params, u, val_data.x0, val_args), val_data.x1, data_range)

    params = family.init()
    opt_state = optimizer.init(params)
    best = (float(validate(params)), 0, params)
    history = {"step": [0], "loss": [float("nan")], "val_psnr": [best[0]], "wall_s": [0.0]}
    start = time.perf_counter()
    bar = tqdm(range(1, steps + 1), disable=not progress, desc=f"train {family.name}")
    for step in bar:
        key, sub = jax.random.split(key)
        index = jax.random.choice(sub, n, (batch_size,), replace=False)
        params, opt_state, value = update(params, opt_state, index)
        if step % eval_every == 0 or step == steps:
            value = float(value)
            if not np.isfinite(value):
                warnings.warn(
                    f"Training diverged at step {step} (loss {value}); returning the best "
                    f"parameters so far (step {best[1]}). Lower the learning rate.",
                    RuntimeWarning,
                    stacklevel=2,
                )
                break
            val = float(validate(params))
            if val > best[0]:
                best = (val, step, params)
            for name, item in zip(
                history, (step, value, val, time.perf_counter() - start), strict=True
            ):
                history[name].append(item)
            bar.set_postfix(loss=f"{value:.4g}", val_psnr=f"{val:.2f}", best=f"{best[0]:.2f}")
    m = x0_val.shape[0]
    done = history["step"][-1]
    calls = (
        train_data.nfe * n
        + val_data.nfe * m
        + family.nfe * (done * batch_size + len(history["step"]) * m)
    )
    return TrainResult(best[2], history, best[1], best[0], train_data, val_data, calls)
