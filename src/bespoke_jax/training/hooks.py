"""What a training run reports and keeps, as hooks of the loop (``loop.run_loop``).

A hook has ``evaluated(step, metrics)`` (after every validation), ``stepped(state)`` (after
every step) and ``close()``; ``Hook`` does nothing in each, so a hook overrides only what it
uses. ``JsonLog`` writes the JSON-lines log, ``CheckpointEvery`` the Orbax checkpoints,
``ProgressBar`` draws tqdm's bar and ``Callback`` calls a user's ``on_eval(step, metrics)``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import jax
from tqdm.auto import tqdm

from bespoke_jax.io.checkpoints import Checkpoints, TrainState
from bespoke_jax.io.files import atomic_write
from bespoke_jax.training.interrupt import interrupted
from bespoke_jax.truth.progress import compiled


@dataclasses.dataclass
class LoopState:
    """What the loop carries from one step to the next (and a checkpoint keeps).

    Attributes:
      step: the last step taken (0 before the first).
      train: the arrays (params, optimizer state, RNG key data, best params).
      history: ``{"step", "loss", "val_psnr", "wall_s"}`` lists, one entry per evaluation.
      best_step, best_val_psnr: the step of ``train.best_params`` and its validation PSNR.
      wall_s: seconds spent training so far (across resumed runs).
    """

    step: int
    train: TrainState
    history: dict
    best_step: int
    best_val_psnr: float
    wall_s: float

    def meta(self) -> dict:
        """The JSON part of a checkpoint."""
        return {
            "step": self.step,
            "wall_s": self.wall_s,
            "history": self.history,
            "best_step": self.best_step,
            "best_val_psnr": self.best_val_psnr,
        }


class Hook:
    """A loop hook that does nothing; subclasses override what they need."""

    def evaluated(self, step: int, metrics: dict) -> None:
        """After the validation at ``step``; ``metrics = {"loss", "val_psnr", "best_val_psnr",
        "wall_s"}``."""

    def stepped(self, state: LoopState) -> None:
        """After every step."""

    def close(self) -> None:
        """When the loop ends (also after a divergence)."""


class JsonLog(Hook):
    """JSON lines, one per evaluation, written by process 0.

    Resuming at ``resumed_step`` drops the lines past it; a fresh run (``None``) starts the file
    empty.
    """

    def __init__(self, path, resumed_step: int | None):
        self.path = None if path is None or jax.process_index() else Path(path)
        if self.path is None:
            return
        lines = []
        if resumed_step is not None and self.path.exists():
            lines = [
                line
                for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= resumed_step
            ]
        atomic_write(self.path, "".join(line + "\n" for line in lines))

    def write(self, record: dict) -> None:
        """Append one JSON line."""
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def evaluated(self, step: int, metrics: dict) -> None:
        self.write({"step": step, **metrics})


class CheckpointEvery(Hook):
    """Orbax checkpoints every ``every`` steps and at step ``last``."""

    def __init__(self, checkpoints: Checkpoints, every: int, last: int):
        self.checkpoints, self.every, self.last = checkpoints, every, last

    def stepped(self, state: LoopState) -> None:
        if state.step % self.every == 0 or state.step == self.last or interrupted():
            self.checkpoints.save(state.step, state.train, state.meta())

    def close(self) -> None:
        self.checkpoints.close()


class ProgressBar(Hook):
    """A tqdm bar over the steps (process 0 only), with the validation PSNR in dB.

    It reads "compiling" until the first step returns, and its rate (and time left) counts
    only the steps after it, so compilation is not taken for a slow step. The training loss
    is not shown: it is each family's own quantity (BNS: a log-MSE, ``docs/bns.md``).
    """

    def __init__(self, desc: str, start: int, total: int, enabled: bool = True):
        self.desc = desc
        self.compiling = True
        self.bar = tqdm(
            initial=start,
            total=total,
            desc=f"{desc} (compiling)",
            disable=not enabled or jax.process_index() != 0,
        )

    def evaluated(self, step: int, metrics: dict) -> None:
        self.bar.set_postfix(
            val_psnr=f"{metrics['val_psnr']:.2f} dB",
            best=f"{metrics['best_val_psnr']:.2f} dB",
            refresh=False,  # drawn with the step's update
        )

    def stepped(self, state: LoopState) -> None:
        if not self.compiling:
            self.bar.update(1)
            return
        self.compiling = False
        compiled(self.bar, state.step, self.desc)

    def close(self) -> None:
        self.bar.close()


class Callback(Hook):
    """Calls ``on_eval(step, metrics)`` after every evaluation, on every process."""

    def __init__(self, on_eval: Callable[[int, dict], None]):
        self.on_eval = on_eval

    def evaluated(self, step: int, metrics: dict) -> None:
        self.on_eval(step, metrics)
