"""Atomic file writes and content hashes: the one copy every writer and cache uses."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import jax
import numpy as np

from bespoke_jax.io.outputs import user_mode


def atomic_write(path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``; returns the path.

    A reader never sees half a file: the bytes land in a temporary file beside the target
    (parent directories are created) with the mode the umask gives, then replace it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(raw)
        user_mode(tmp, directory=False)  # mkstemp gives 0o600; follow the umask
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def sha256(*parts: bytes) -> str:
    """The hex sha256 of the concatenated ``parts``."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return digest.hexdigest()


def _contiguous(x) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x))


def array_hash(x) -> str:
    """sha256 of an array's dtype, shape and bytes."""
    x = _contiguous(x)
    return sha256(str(x.dtype).encode(), str(x.shape).encode(), x.tobytes())


def tree_hash(tree) -> str:
    """sha256 of a pytree's structure and of every leaf (``array_hash``)."""
    leaves, treedef = jax.tree.flatten(tree)
    return sha256(str(treedef).encode(), *(array_hash(leaf).encode() for leaf in leaves))


def params_sha256(params) -> str:
    """sha256 of every leaf's path, dtype, shape and bytes, in pytree order (the checksum
    saved solvers carry)."""
    parts = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        leaf = _contiguous(leaf)
        name = jax.tree_util.keystr(path)
        parts += [f"{name}:{leaf.dtype}:{leaf.shape}".encode(), leaf.tobytes()]
    return sha256(*parts)
