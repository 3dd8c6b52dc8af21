"""Progress of a ground-truth solve: a tqdm bar over the chunks solved and the model calls spent.

A solve runs in chunks of samples (``sharded_training_data``: ``lax.map`` on each device;
``ground_truth(progress=True)``: one jitted call each). A solved chunk reports its samples'
model calls to the innermost open ``ChunkBar``; inside a jitted solve it does so through
``jax.debug.callback`` (``chunk_solved``), one host call per chunk. Bars read "compiling" until
the first unit of work returns, and their rate counts only what follows (``compiled``).
"""

from __future__ import annotations

import threading

import jax
import numpy as np
from tqdm.auto import tqdm

_OPEN: list[ChunkBar] = []  # the bars of the solves in progress, innermost last
_LOCK = threading.Lock()  # device callbacks may arrive on several threads


def compiled(bar: tqdm, n: int, desc: str) -> None:
    """Count the first ``n`` units of ``bar`` without a rate and restart its clock: their time
    was mostly compilation. ``desc`` replaces the "compiling" label."""
    bar.n = bar.last_print_n = bar.initial = n
    bar.unpause()
    bar.set_description(desc)


class ChunkBar:
    """A context manager: a tqdm bar of chunks solved (process 0 only) whose postfix counts
    ``calls``, the model calls spent (sample-forwards: one call on a chunk of B counts B).

    Args:
      chunks: chunks this process will solve.
      desc: the bar's label.
      enabled: draw the bar (``solved`` counts either way).
    """

    def __init__(self, chunks: int, desc: str = "ground truth", enabled: bool = True):
        self.chunks, self.calls, self.desc = 0, 0, desc
        self.bar = tqdm(
            total=chunks,
            desc=f"{desc} (compiling)",
            unit="chunk",
            disable=not enabled or jax.process_index() != 0,
        )

    def solved(self, calls_per_sample) -> None:
        """Count one chunk whose samples spent ``calls_per_sample`` model calls each."""
        with _LOCK:
            self.chunks += 1
            self.calls += int(np.sum(calls_per_sample))
            self.bar.set_postfix(calls=self.calls, refresh=False)
            if self.chunks == 1:
                compiled(self.bar, 1, self.desc)
            else:
                self.bar.update(1)

    def __enter__(self) -> ChunkBar:
        _OPEN.append(self)
        return self

    def __exit__(self, *exc) -> None:
        _OPEN.remove(self)
        self.bar.close()


def chunk_solved(calls_per_sample) -> None:
    """Tell the innermost open ``ChunkBar`` (if any) that a chunk is solved."""
    if _OPEN:
        _OPEN[-1].solved(calls_per_sample)
