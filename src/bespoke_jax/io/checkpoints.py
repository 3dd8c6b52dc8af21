"""Resumable training: Orbax checkpoints of the whole training state.

A checkpoint at step k holds everything the next step depends on: the parameters, the
optimizer state, the RNG key (its raw data), and the best parameters so far (arrays, through
``orbax.checkpoint.CheckpointManager``), plus the step, the history, the best step and PSNR and
the run's fingerprint (JSON). A run restarted with the same command, after any interruption
(even SIGKILL during a save: Orbax commits a step only once it is complete), resumes from the
latest complete checkpoint and ends with the parameters of an uninterrupted run. A checkpoint
directory that holds a different run (another fingerprint) is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import jax
import orbax.checkpoint as ocp

from bespoke_jax.families.base import Params
from bespoke_jax.io.outputs import MARKER, check_writable, claim_file, claim_run_dir

_KIND = "checkpoints"
LOG_FILE = "log.jsonl"


class TrainState(NamedTuple):
    """The arrays of a training run at one step (replicated over the mesh).

    Attributes:
      params: the current parameters.
      opt_state: the optimizer's state.
      key_data: ``(2,)`` uint32 (or the impl's shape) raw data of the RNG key.
      best_params: the parameters of the best validation PSNR so far.
    """

    params: Params
    opt_state: object
    key_data: jax.Array
    best_params: Params


def checkpoints_are_ours(path) -> bool:
    """Whether the directory ``path`` holds only checkpoints (step folders, the log, the marker)
    that ``Checkpoints`` wrote."""
    entries = [entry.name for entry in Path(path).iterdir()]

    def step(name: str) -> bool:  # "20", or Orbax's unfinished "20.orbax-checkpoint-tmp-..."
        return name.partition(".")[0].isdigit()

    return all(step(name) or name in (MARKER, LOG_FILE) for name in entries) and any(
        step(name) or name == MARKER for name in entries
    )


def _is_log(path: Path) -> bool:
    """Whether ``path`` is a log ``train`` wrote: JSON lines, each an object with a step."""
    try:
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        return all("step" in json.loads(line) for line in lines)
    except (OSError, ValueError, TypeError):
        return False


def claim_log(path) -> None:
    """The training log ``path``: new or a log ``train`` wrote, in a writable folder."""
    if path is not None:
        claim_file(path, _is_log, option=None)
        check_writable(Path(path).parent, "log_path")


def claim_checkpoint_dir(directory) -> Path:
    """``directory`` checked (see ``Checkpoints``), created, marked and proven writable."""
    names = ("[0-9]*", LOG_FILE)
    return claim_run_dir(
        directory, _KIND, names, ours=checkpoints_are_ours, option=None, what="checkpoint_dir"
    )


class Checkpoints:
    """The checkpoints of one run in ``directory``, keeping the latest ``max_to_keep``.

    ``directory`` must be new, empty, or hold checkpoints written here (``checkpoints_are_ours``;
    Orbax removes old steps there); the run's fingerprint decides whether they are this run's.
    """

    def __init__(self, directory, fingerprint: dict, max_to_keep: int = 2):
        self.directory = claim_checkpoint_dir(directory)
        self.fingerprint = json.loads(json.dumps(fingerprint))  # as it reads back
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, cleanup_tmp_directories=True
            ),
        )

    @staticmethod
    def _arrays(state: TrainState) -> dict:
        """The state's leaves under zero-padded keys (any optimizer state, no NamedTuples)."""
        return {f"{i:06d}": leaf for i, leaf in enumerate(jax.tree.leaves(state))}

    def restore(self, like: TrainState) -> tuple[TrainState, dict] | None:
        """The latest checkpoint as ``(state, meta)``, shaped and sharded like ``like``; ``None``
        when there is none.

        Raises:
          ValueError: the directory holds a run with another fingerprint.
        """
        step = self.manager.latest_step()
        if step is None:
            return None
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, self._arrays(like))
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
            ),
        )
        meta = restored.meta
        saved = meta.get("fingerprint", {})
        differ = sorted(
            k
            for k in saved.keys() | self.fingerprint.keys()
            if saved.get(k) != self.fingerprint.get(k)
        )
        if differ:
            raise ValueError(
                f"{self.directory} holds checkpoints of a different run (it differs in "
                f"{', '.join(differ)}): pass another checkpoint_dir, or delete this one to start "
                f"over."
            )
        leaves = [restored.state[name] for name in sorted(restored.state)]
        return jax.tree.unflatten(jax.tree.structure(like), leaves), meta

    def save(self, step: int, state: TrainState, meta: dict) -> None:
        """Checkpoint ``state`` and the JSON ``meta`` (with the fingerprint) at ``step``."""
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(self._arrays(state)),
                meta=ocp.args.JsonSave({**meta, "fingerprint": self.fingerprint}),
            ),
        )

    def close(self) -> None:
        """Wait for pending saves and release the manager."""
        self.manager.wait_until_finished()
        self.manager.close()
