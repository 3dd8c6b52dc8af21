"""Training of the shipped models with Flax NNX and Optax: CondOT flow matching, DDPM eps.

Flow matching: the loss is ``E |u(t, x_t, y) - (x1 - x0)|^2`` with ``x_t = t x1 + (1 - t) x0``,
``t ~ U(0, 1)``, ``x0 ~ N(0, I)``. DDPM (``fit_eps``, the usual diffusion convention, timestep 0 is
data): ``E |eps_hat(x_k, k, y) - eps|^2`` with ``x_k = sqrt(abar_k) x + sqrt(1 - abar_k) eps`` and
``k`` uniform on ``0 .. N-1``. Class-conditional models replace the label by the null label with
probability ``label_dropout`` (classifier-free guidance). Adam with warmup and cosine decay; the
returned network holds an exponential moving average (EMA) of the weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from bespoke_jax.core.schedulers import cond_ot
from bespoke_jax.models import pretrained as _pretrained
from bespoke_jax.models.networks import build_model, num_params
from experiments.shipped_models import data as _model_data
from experiments.shipped_models import quality as _model_quality


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings.

    Attributes:
        steps: optimiser steps.
        batch_size: samples per step.
        learning_rate: peak learning rate.
        warmup_steps: linear warmup length (then cosine decay to 1% of the peak).
        ema_decay: the EMA decay (ramped up as ``(1 + n) / (10 + n)`` early on).
        label_dropout: probability of the null label (class-conditional models only).
        seed: seed of the initialisation and of the data, time and noise draws.
        steps_per_call: optimiser steps run inside one jitted ``lax.scan`` (1: a plain jitted step,
            no loop; convolutional networks on CPU need it).
    """

    steps: int
    batch_size: int = 256
    learning_rate: float = 1e-3
    warmup_steps: int = 500
    ema_decay: float = 0.999
    label_dropout: float = 0.15
    seed: int = 0
    steps_per_call: int = 100

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1 or self.steps_per_call < 1:
            raise ValueError("steps, batch_size and steps_per_call must be positive integers.")
        if not 0.0 <= self.label_dropout < 1.0:
            raise ValueError(f"label_dropout must lie in [0, 1), got {self.label_dropout}.")


@dataclasses.dataclass(frozen=True)
class FitResult:
    """The outcome of ``fit_flow``.

    Attributes:
        model: the network with the EMA weights.
        losses: ``(steps,)`` training loss of each step (raw, not EMA, weights).
        wall_seconds: wall time, compilation included.
        cpu_seconds: CPU time of this process (all threads), less sensitive to a busy machine.
        model_forwards: sample-forwards of the network during training (steps x batch).
    """

    model: nnx.Module
    losses: np.ndarray
    wall_seconds: float
    cpu_seconds: float
    model_forwards: int


def drop_labels(key, labels, null_label: int | None, probability: float):
    """Replace each label by ``null_label`` with ``probability`` (classifier-free guidance)."""
    if null_label is None:
        return labels
    return jnp.where(jax.random.bernoulli(key, probability, labels.shape), null_label, labels)


def fit(
    model: nnx.Module,
    loss: Callable,
    config: TrainConfig,
    *,
    progress: bool = True,
    on_chunk: Callable | None = None,
):
    """Minimise ``E loss(model, key)`` with Adam (warmup, cosine decay) and keep an EMA.

    Args:
        model: the network to train.
        loss: ``loss(model, key) -> scalar``, one batch's loss, traceable.
        config: optimisation settings.
        progress: show a tqdm progress bar.
        on_chunk: called as ``on_chunk(steps_done, ema_model, losses)`` after each jitted chunk
            of ``config.steps_per_call`` steps (progress logs, checkpoints).

    Returns:
        A ``FitResult``; ``model`` itself is left unchanged.
    """
    start, cpu_start = time.perf_counter(), time.process_time()
    graphdef, params = nnx.split(model)
    schedule = optax.warmup_cosine_decay_schedule(
        0.0,
        config.learning_rate,
        min(config.warmup_steps, config.steps),
        config.steps,
        end_value=0.01 * config.learning_rate,
    )
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))

    def step(carry, key):
        params, ema, opt_state, n = carry
        value, grads = jax.value_and_grad(lambda p: loss(nnx.merge(graphdef, p), key))(params)
        with jax.numpy_dtype_promotion("standard"):  # Optax mixes int step counts and floats
            updates, opt_state = optimizer.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
        steps_done = n.astype(jnp.float32)
        decay = jnp.minimum(config.ema_decay, (1.0 + steps_done) / (10.0 + steps_done))
        ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)
        return (params, ema, opt_state, n + 1), value

    if config.steps_per_call == 1:
        # Not a loop of one step: XLA on CPU runs convolutions inside loops many times slower.
        one = jax.jit(step)

        def run(carry, keys):
            carry, value = one(carry, keys[0])
            return carry, value[None]

    else:
        run = jax.jit(lambda carry, keys: jax.lax.scan(step, carry, keys))

    carry = (params, params, optimizer.init(params), jnp.zeros((), jnp.int32))
    keys = jax.random.split(jax.random.key(config.seed + 1), config.steps)
    losses = []
    with tqdm(total=config.steps, disable=not progress, desc="training") as bar:
        for first in range(0, config.steps, config.steps_per_call):
            carry, chunk = run(carry, keys[first : first + config.steps_per_call])
            losses.append(np.asarray(chunk))
            bar.update(len(losses[-1]))
            bar.set_postfix(loss=f"{losses[-1].mean():.4f}")
            if on_chunk is not None:
                on_chunk(first + len(losses[-1]), nnx.merge(graphdef, carry[1]), losses[-1])
    return FitResult(
        model=nnx.merge(graphdef, carry[1]),
        losses=np.concatenate(losses),
        wall_seconds=time.perf_counter() - start,
        cpu_seconds=time.process_time() - cpu_start,
        model_forwards=config.steps * config.batch_size,
    )


def fit_flow(
    model: nnx.Module,
    sample_data: Callable,
    config: TrainConfig,
    *,
    null_label: int | None = None,
    progress: bool = True,
) -> FitResult:
    """Train ``model`` by CondOT flow matching.

    Args:
        model: a network ``model(t (B,), x (B, d), labels (B,) or None) -> (B, d)``.
        sample_data: ``sample_data(key, batch_size) -> (x1 (B, d), labels (B,) or None)``,
            traceable.
        config: optimisation settings.
        null_label: the null label of a class-conditional model, ``None`` for an
            unconditional one.
        progress: show a tqdm progress bar.

    Returns:
        A ``FitResult``; ``model`` itself is left unchanged.
    """

    def loss(model, key):
        k_data, k_t, k_noise, k_drop = jax.random.split(key, 4)
        x1, labels = sample_data(k_data, config.batch_size)
        t = jax.random.uniform(k_t, (config.batch_size,))
        x0 = jax.random.normal(k_noise, x1.shape)
        labels = drop_labels(k_drop, labels, null_label, config.label_dropout)
        x_t = t[:, None] * x1 + (1.0 - t[:, None]) * x0
        return jnp.mean(jnp.square(model(t, x_t, labels) - (x1 - x0)))

    return fit(model, loss, config, progress=progress)


def fit_eps(
    model: nnx.Module,
    sample_data: Callable,
    config: TrainConfig,
    alphas_cumprod: np.ndarray,
    *,
    null_label: int | None = None,
    progress: bool = True,
    on_chunk: Callable | None = None,
) -> FitResult:
    """Train a noise predictor on a discrete DDPM schedule (timestep 0 is data).

    Args:
        model: a network ``model(x (B, ...), timestep (B,), labels (B,) or None) -> eps_hat``.
        sample_data: ``sample_data(key, batch_size) -> (x (B, ...), labels (B,) or None)``,
            traceable.
        config: optimisation settings.
        alphas_cumprod: ``abar_k``, ``(N,)``.
        null_label: the null label of a class-conditional model, else ``None``.
        progress: show a tqdm progress bar.
        on_chunk: see ``fit``.

    Returns:
        A ``FitResult``; ``model`` itself is left unchanged.
    """
    abar = jnp.asarray(alphas_cumprod, jnp.float32)

    def loss(model, key):
        k_data, k_step, k_noise, k_drop = jax.random.split(key, 4)
        x, labels = sample_data(k_data, config.batch_size)
        timestep = jax.random.randint(k_step, (config.batch_size,), 0, len(abar))
        eps = jax.random.normal(k_noise, x.shape)
        a = abar[timestep].reshape(-1, *(1,) * (x.ndim - 1))
        x_k = jnp.sqrt(a) * x + jnp.sqrt(1.0 - a) * eps
        labels = drop_labels(k_drop, labels, null_label, config.label_dropout)
        return jnp.mean(jnp.square(model(x_k, timestep.astype(x.dtype), labels) - eps))

    return fit(model, loss, config, progress=progress, on_chunk=on_chunk)


def _checkerboard_data():
    return lambda key, batch_size: (_model_data.checkerboard_sample(key, batch_size), None)


def _digits_data():
    data = _model_data.digits()
    x = jnp.asarray(data.x_train.reshape(len(data.x_train), -1))
    y = jnp.asarray(data.y_train)

    def sample(key, batch_size):
        index = jax.random.randint(key, (batch_size,), 0, len(x))
        return x[index], y[index]

    return sample


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How a shipped model is trained.

    Attributes:
        architecture: ``build_model`` keyword arguments (``num_classes`` for a conditional one).
        config: the default optimisation settings.
        shape: one sample's shape.
        data: a description of the training data, for the metadata.
        make_sampler: builds ``sample_data(key, batch_size) -> (x1 (B, d), labels or None)``.
        quality: ``quality(record) -> dict`` of sample-quality metrics (``_model_quality``).
    """

    architecture: dict
    config: TrainConfig
    shape: tuple[int, ...]
    data: str
    make_sampler: Callable
    quality: Callable


RECIPES = {
    "checkerboard": Recipe(
        architecture={"dim": 2, "width": 128, "depth": 3, "time_dim": 32},
        config=TrainConfig(steps=20000, batch_size=512, learning_rate=2e-3),
        shape=(2,),
        data="uniform on the 8 dark squares of a 4x4 board on [-2, 2]^2",
        make_sampler=_checkerboard_data,
        quality=_model_quality.checkerboard_quality,
    ),
    "digits": Recipe(
        architecture={"dim": 64, "width": 192, "depth": 3, "time_dim": 64, "num_classes": 10},
        config=TrainConfig(steps=12000),
        shape=(8, 8),
        data="sklearn load_digits, pixels / 16 scaled to [-1, 1], stratified 80/20 split, seed 0",
        make_sampler=_digits_data,
        quality=_model_quality.digits_quality,
    ),
}


def train_pretrained(
    name: str,
    config: TrainConfig | None = None,
    architecture: dict | None = None,
    out_dir=None,
    *,
    command: str = "",
    progress: bool = True,
    evaluate: bool = True,
) -> tuple[_pretrained.Pretrained, dict]:
    """Train a shipped model from scratch, measure its sample quality, optionally save it.

    Args:
        name: ``"checkerboard"`` or ``"digits"``.
        config: optimisation settings; the recipe's by default.
        architecture: network keyword arguments (``build_model``); the recipe's by default.
        out_dir: where to write ``NAME.msgpack`` and ``NAME.json``; ``None`` writes nothing.
        command: the command line that reproduces the run, recorded in the metadata.
        progress: show a progress bar.
        evaluate: measure sample quality into ``metadata["quality"]``.

    Returns:
        ``(record, metadata)``: the trained ``Pretrained`` record and its metadata dict, with
        ``metadata["losses"]`` the per-step training losses (not saved).
    """
    if name not in RECIPES:
        raise ValueError(f"Unknown model {name!r}; valid names: {list(RECIPES)}.")
    recipe = RECIPES[name]
    config = recipe.config if config is None else config
    architecture = dict(recipe.architecture if architecture is None else architecture)
    num_classes = recipe.architecture.get("num_classes")
    if architecture.get("num_classes") != num_classes:
        raise ValueError(f"{name!r} needs architecture['num_classes'] = {num_classes}.")
    model = build_model(architecture, seed=config.seed)
    fit = fit_flow(model, recipe.make_sampler(), config, null_label=num_classes, progress=progress)
    metadata = {
        "name": name,
        "shape": list(recipe.shape),
        "num_classes": num_classes,
        "scheduler": cond_ot().to_config(),
        "prediction": "velocity",
        "architecture": architecture,
        "training": {**dataclasses.asdict(config), "data": recipe.data},
        "training_cost": {
            "wall_seconds": round(fit.wall_seconds, 1),
            "cpu_seconds": round(fit.cpu_seconds, 1),
            "model_forwards": fit.model_forwards,
            "num_params": num_params(fit.model),
            "final_loss": float(fit.losses[-config.steps_per_call :].mean()),
        },
        "command": command,
    }
    record = _pretrained.from_model(fit.model, metadata)
    if evaluate:
        metadata["quality"] = recipe.quality(record)
    if out_dir is not None:
        _pretrained.save(out_dir, fit.model, metadata)
    return record, {**metadata, "losses": fit.losses}


def main(name: str, argv: list[str] | None = None) -> dict:
    """Command line of ``experiments/train_NAME.py``: train, evaluate, save and report.

    Returns:
        The saved metadata.
    """
    recipe = RECIPES[name]
    parser = argparse.ArgumentParser(description=f"Train the shipped {name!r} flow model.")
    parser.add_argument("--out", default="runs/pretrained", help="output directory")
    for field in dataclasses.fields(TrainConfig):
        value = getattr(recipe.config, field.name)
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(value), default=value)
    for key in ("width", "depth"):
        parser.add_argument(f"--{key}", type=int, default=recipe.architecture[key])
    argv = sys.argv[1:] if argv is None else argv
    options = vars(parser.parse_args(argv))
    out = options.pop("out")
    architecture = {**recipe.architecture, "width": options.pop("width")}
    architecture["depth"] = options.pop("depth")
    command = " ".join(["python -m", f"experiments.train_{name}", *argv])
    _, metadata = train_pretrained(name, TrainConfig(**options), architecture, out, command=command)
    print(json.dumps({k: metadata[k] for k in ("training_cost", "quality")}, indent=2))
    for miss in _model_quality.missed_targets(name, metadata["quality"]):
        print(f"target missed: {miss}")
    print(f"saved {name}.msgpack and {name}.json in {out}")
    return metadata
