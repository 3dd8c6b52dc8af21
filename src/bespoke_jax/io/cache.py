"""A ground-truth cache on disk: each (model, noise, args, tolerances, save times) solved once.

An entry is one ``.npz`` file named by a hash of what determines its contents:

- the model: ``model_id`` (a user-given string, such as ``pretrained(name).identity``), or, when
  none is given, a hash of the field's outputs on a fixed probe input;
- the tolerances ``rtol``, ``atol``; the noise (a hash of ``x0``'s bytes, shape and dtype); the
  args (a hash of their leaves and structure); the saved times ``save_ts``.

A request with any of those different is a different entry (a miss: solved and written). An
entry that matches by name but not by content is refused with a ``ValueError`` saying what
differs, never silently used or overwritten: a damaged file (checksums), or a ``model_id`` whose
model changed (its probe outputs differ by more than ``PROBE_RTOL`` of their scale). Delete the
file, or pass a new ``model_id``, to recompute. Identifying a model costs one probe: 3 calls of
``u`` on 2 samples.

A request for pairs only (``save_ts=None``) is also served by an entry that kept a path. Entries
are written atomically (a temporary file, then ``os.replace``); with several processes, process
0 writes and every process reads, so ``cache_dir`` must be on a file system they share.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from bespoke_jax.core.args import take
from bespoke_jax.io.files import array_hash, atomic_write, sha256, tree_hash
from bespoke_jax.io.outputs import usable_cache
from bespoke_jax.truth.data import TrainingData
from bespoke_jax.truth.sharded import CHUNK_SIZE, sharded_training_data

FORMAT_VERSION = 1
PROBE_TIMES = (0.25, 0.5, 0.75)
PROBE_RTOL = 1e-3
_ARRAYS = ("x1", "path_ts", "path_xs", "path_us")


def probe(u: Callable, x0, args=None) -> np.ndarray:
    """``(3, 2, *shape)`` outputs of ``u`` at t = 0.25, 0.5, 0.75 on fixed inputs.

    The inputs are 2 standard-normal samples from ``jax.random.key(0)`` with the args of the
    first two rows of ``x0`` (per-sample leaves; shared leaves as they are).
    """
    x0 = np.asarray(x0)
    n = x0.shape[0]
    probe_args = take(args, np.arange(2) % n, n)
    x = jax.random.normal(jax.random.key(0), (2, *x0.shape[1:]), dtype=x0.dtype)
    field = jax.jit(u)
    return np.stack(
        [np.asarray(field(jnp.asarray(t, x0.dtype), x, probe_args)) for t in PROBE_TIMES]
    )


def _probe_id(outputs: np.ndarray) -> str:
    """The probe outputs to 4 significant digits of their scale (an exact float hash would miss
    on another device count or machine)."""
    scale = float(np.max(np.abs(outputs))) or 1.0
    return "probe-" + array_hash(np.round(outputs / scale, 4).astype(np.float32))[:24]


def _request(model: str, x0, args, save_ts, rtol: float, atol: float) -> dict:
    x0 = np.asarray(x0)
    return {
        "format_version": FORMAT_VERSION,
        "model": model,
        "rtol": float(rtol),
        "atol": float(atol),
        "noise": array_hash(x0),
        "args": tree_hash(args),
        "save_ts": None if save_ts is None else [float(t) for t in np.asarray(save_ts)],
    }


def _name(request: dict) -> str:
    """``gt-<everything but the save times>-<save times or "pairs">.npz``."""
    base = {k: v for k, v in request.items() if k != "save_ts"}
    ts = request["save_ts"]
    tail = "pairs" if ts is None else sha256(json.dumps(ts).encode())[:16]
    return f"gt-{sha256(json.dumps(base, sort_keys=True).encode())[:32]}-{tail}.npz"


def _write(path: Path, data: TrainingData, request: dict, probe_outputs: np.ndarray) -> None:
    arrays = {name: getattr(data, name) for name in _ARRAYS if getattr(data, name) is not None}
    arrays["probe"] = probe_outputs
    header = {
        **request,
        "nfe": int(data.nfe),
        "checksums": {name: array_hash(value) for name, value in arrays.items()},
    }
    buffer = io.BytesIO()
    np.savez(buffer, header=np.asarray(json.dumps(header)), **arrays)
    atomic_write(path, buffer.getvalue())


def _read(path: Path, x0, request: dict, probe_outputs: np.ndarray) -> TrainingData:
    """The entry at ``path``, checked against the request, or a ``ValueError`` saying why not."""
    delete = f"Delete {path} to recompute it."
    try:
        with np.load(path) as f:
            header = json.loads(str(f["header"]))
            arrays = {name: f[name] for name in (*_ARRAYS, "probe") if name in f}
    except Exception as err:
        raise ValueError(
            f"The ground-truth cache entry {path} is unreadable ({err}). {delete}"
        ) from err
    for field, value in request.items():
        if (field != "save_ts" or value is not None) and header.get(field) != value:
            raise ValueError(
                f"The ground-truth cache entry {path} does not match this request: its "
                f"{field!r} is {header.get(field)!r}, not {value!r}. {delete}"
            )
    for name, value in arrays.items():
        if header.get("checksums", {}).get(name) != array_hash(value):
            raise ValueError(f"The ground-truth cache entry {path} is damaged ({name}). {delete}")
    stored_probe = arrays["probe"]
    scale = float(np.max(np.abs(stored_probe))) or 1.0
    if stored_probe.shape != probe_outputs.shape or not np.allclose(
        stored_probe, probe_outputs, rtol=0.0, atol=PROBE_RTOL * scale
    ):
        raise ValueError(
            f"The ground-truth cache entry {path} was solved with a different model under the "
            f"same model_id {request['model']!r} (the field's outputs on the probe input "
            f"differ): pass a new model_id for the changed model. {delete}"
        )
    keep_path = request["save_ts"] is not None
    return TrainingData(
        np.asarray(x0),
        arrays["x1"],
        arrays["path_ts"] if keep_path else None,
        arrays["path_xs"] if keep_path else None,
        arrays["path_us"] if keep_path else None,
        header["nfe"] if keep_path else header["nfe"] - len(header["save_ts"] or ()),
    )


def _find(cache_dir: Path, request: dict) -> Path | None:
    path = cache_dir / _name(request)
    if path.exists() or request["save_ts"] is not None:
        return path if path.exists() else None
    # Pairs only: an entry that kept a path holds them too.
    found = sorted(cache_dir.glob(path.name.removesuffix("pairs.npz") + "*.npz"))
    return found[0] if found else None


def cached_training_data(
    u: Callable,
    x0,
    *,
    cache_dir,
    model_id: str | None = None,
    args=None,
    save_ts=None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    mesh: Mesh | None = None,
    chunk_size: int = CHUNK_SIZE,
    progress: bool = False,
) -> TrainingData:
    """``make_training_data`` through the on-disk cache in ``cache_dir``.

    Args:
      u: the velocity field ``u(t, x, args)``.
      x0: ``(N, *shape)`` noise.
      cache_dir: the cache's directory (created when missing).
      model_id: the model's identity (e.g. ``bj.pretrained(name).identity``); default: a hash
        of the field's outputs on a fixed probe input.
      args, save_ts, rtol, atol: as in ``make_training_data``.
      mesh, chunk_size, progress: as in ``sharded_training_data`` (a miss is solved sharded).

    Returns:
      ``TrainingData`` of host arrays; ``nfe`` is what the solve cost when it was made.

    Raises:
      ValueError: an entry of the same name whose contents do not match (see the module doc).
    """
    options = dict(args=args, save_ts=save_ts, rtol=rtol, atol=atol, mesh=mesh, progress=progress)
    if usable_cache(cache_dir) is None:  # not writable: warned, solved without it
        return sharded_training_data(u, x0, chunk_size=chunk_size, **options)
    cache_dir = Path(cache_dir)
    probe_outputs = probe(u, x0, args)
    model = _probe_id(probe_outputs) if model_id is None else str(model_id)
    request = _request(model, x0, args, save_ts, rtol, atol)
    path = _find(cache_dir, request)
    if jax.process_count() > 1:  # process 0 decides for every process
        hit = multihost_utils.broadcast_one_to_all(np.asarray(path is not None))
        path = _find(cache_dir, request) if bool(hit) else None
    if path is not None:
        return _read(path, x0, request, probe_outputs)
    data = sharded_training_data(u, x0, chunk_size=chunk_size, **options)
    if jax.process_index() == 0:
        _write(cache_dir / _name(request), data, request, probe_outputs)
    return data
