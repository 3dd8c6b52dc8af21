"""Train the shipped ``patches16`` model: a class-conditional UNet noise predictor on DDPM.

The network ``net(x, timestep, labels)`` predicts the noise of 16x16 RGB photograph patches
(``experiments.shipped_models.patches``) on the linear-beta DDPM schedule (1000 timesteps,
timestep 0 is data), with label dropout for classifier-free guidance and EMA weights. Writes
``patches16.msgpack`` and ``patches16.json`` into ``--out`` and logs progress to ``--log``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
from flax import nnx, serialization

from bespoke_jax.models import pretrained as _pretrained
from bespoke_jax.models.networks import num_params
from bespoke_jax.models.unet import build_unet
from experiments.shipped_models import patches as _patches
from experiments.shipped_models import quality as _quality
from experiments.shipped_models.ddpm import linear_alphas_cumprod
from experiments.shipped_models.training import TrainConfig, fit_eps

NAME = "patches16"
ARCHITECTURE = {"channels": 3, "widths": [16, 32, 64], "num_classes": 7, "emb_dim": 64}
# One step per jitted call: XLA on CPU runs convolutions inside a scan's loop ~20x slower.
CONFIG = TrainConfig(
    steps=3000,
    batch_size=64,
    learning_rate=2e-3,
    warmup_steps=200,
    ema_decay=0.998,
    steps_per_call=1,
)
LOG_EVERY = 50
CHECKPOINT_EVERY = 500
SCHEDULER = {
    "name": "ddpm",
    "beta_schedule": "linear",
    "beta_start": 1e-4,
    "beta_end": 0.02,
    "num_train_timesteps": 1000,
}
DATA = (
    f"16x16 patches of skimage.data {', '.join(_patches.PHOTOGRAPHS)} (one class each, "
    f"downscaled by {_patches.SCALE}, retina centre-cropped), pixels in [-1, 1]; every "
    f"{_patches.HOLDOUT}th {_patches.BLOCK}x{_patches.BLOCK} block held out"
)


def main(argv: list[str] | None = None) -> dict:
    """Train, save, measure quality, save again; returns the metadata."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/pretrained", help="output directory")
    parser.add_argument("--log", default="runs/patches16.log", help="progress log file")
    for field in dataclasses.fields(TrainConfig):
        value = getattr(CONFIG, field.name)
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument("--no-quality", action="store_true", help="skip the quality measurement")
    parser.add_argument(
        "--init", default=None, help="a directory with patches16.{msgpack,json} to continue from"
    )
    argv = sys.argv[1:] if argv is None else argv
    options = vars(parser.parse_args(argv))
    out, log = options.pop("out"), Path(options.pop("log"))
    skip_quality, init = options.pop("no_quality"), options.pop("init")
    config = TrainConfig(**options)
    if ARCHITECTURE["num_classes"] != len(_patches.PHOTOGRAPHS):
        raise ValueError("ARCHITECTURE['num_classes'] must equal the number of photographs.")
    log.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "name": NAME,
        "shape": [_patches.PATCH, _patches.PATCH, 3],
        "num_classes": ARCHITECTURE["num_classes"],
        "scheduler": SCHEDULER,
        "prediction": "eps",
        "architecture": {"network": "unet", **ARCHITECTURE},
        "training": {**dataclasses.asdict(config), "data": DATA},
        "command": " ".join(["python -m experiments.train_patches16", *argv]),
    }
    start, recent = time.perf_counter(), []

    def on_chunk(steps, ema_model, losses):
        recent.extend(losses.tolist())
        if steps % LOG_EVERY == 0 or steps == config.steps:
            seconds = time.perf_counter() - start
            with log.open("a") as f:
                f.write(f"{seconds:8.1f} s  step {steps:6d}  loss {np.mean(recent):.4f}\n")
            recent.clear()
        if steps % CHECKPOINT_EVERY == 0:
            _pretrained.save(Path(out) / "checkpoint", ema_model, metadata)

    model = build_unet(ARCHITECTURE, seed=config.seed)
    earlier = {"wall_seconds": 0.0, "cpu_seconds": 0.0, "model_forwards": 0}
    if init is not None:
        # A later stage: start from the earlier stage's (EMA) weights and add up the costs.
        stage = json.loads((Path(init) / f"{NAME}.json").read_text())
        earlier = stage["training_cost"]
        metadata["earlier_stage"] = {k: stage[k] for k in ("training", "training_cost", "command")}
        state = nnx.state(model)
        raw = (Path(init) / f"{NAME}.msgpack").read_bytes()
        nnx.replace_by_pure_dict(state, serialization.msgpack_restore(raw))
        nnx.update(model, state)
    sampler = _patches.training_sampler(_patches.patches())
    fit = fit_eps(
        model,
        sampler,
        config,
        linear_alphas_cumprod(),
        null_label=ARCHITECTURE["num_classes"],
        progress=False,
        on_chunk=on_chunk,
    )
    metadata["training_cost"] = {
        "wall_seconds": round(earlier["wall_seconds"] + fit.wall_seconds, 1),
        "cpu_seconds": round(earlier["cpu_seconds"] + fit.cpu_seconds, 1),
        "model_forwards": earlier["model_forwards"] + fit.model_forwards,
        "num_params": num_params(fit.model),
        "final_loss": float(fit.losses[-config.steps_per_call :].mean()),
    }
    _pretrained.save(out, fit.model, metadata)
    if not skip_quality:
        metadata["quality"] = _quality.patches_quality(fit.model)
        _pretrained.save(out, fit.model, metadata)
    print(json.dumps({k: metadata.get(k) for k in ("training_cost", "quality")}, indent=2))
    for miss in [] if skip_quality else _quality.missed_targets(NAME, metadata["quality"]):
        print(f"target missed: {miss}")
    return metadata


if __name__ == "__main__":
    main()
