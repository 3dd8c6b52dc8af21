"""Ctrl-C during training, taken at a safe point.

A ``KeyboardInterrupt`` raised wherever the signal lands can cut an Orbax save, a trace or a
device transfer in half (seen: a hang, once a crash on the way out). While a function decorated
with ``deferred_interrupt`` runs, the first SIGINT only marks the run as interrupted (and says
so on stderr); the function calls ``stop_if_interrupted`` at its safe points (after the ground
truth, after each training step, once that step is checkpointed), which raises
``KeyboardInterrupt`` there. A second Ctrl-C raises at once. Outside the main thread (where
signals cannot be handled) nothing changes.
"""

from __future__ import annotations

import functools
import signal
import sys
import threading

_state = {"pending": False}


def interrupted() -> bool:
    """Whether Ctrl-C was pressed in the running ``deferred_interrupt`` function."""
    return _state["pending"]


def stop_if_interrupted() -> None:
    """Raise ``KeyboardInterrupt`` if Ctrl-C was pressed (a safe point)."""
    if _state["pending"]:
        raise KeyboardInterrupt


def _handle(signum, frame) -> None:
    if _state["pending"]:
        raise KeyboardInterrupt
    _state["pending"] = True
    print("Ctrl-C: stopping at the next safe point (press again to stop now).", file=sys.stderr)


def deferred_interrupt(function):
    """Run ``function`` with the first Ctrl-C deferred to its safe points (module doc)."""

    @functools.wraps(function)
    def wrapped(*args, **kwargs):
        if threading.current_thread() is not threading.main_thread():
            return function(*args, **kwargs)
        previous = signal.signal(signal.SIGINT, _handle)
        _state["pending"] = False
        try:
            return function(*args, **kwargs)
        finally:
            signal.signal(signal.SIGINT, previous)
            _state["pending"] = False

    return wrapped
