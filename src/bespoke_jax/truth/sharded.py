"""Data parallelism over every visible device: one mesh axis, ``"batch"``.

Per-sample arrays (noise, ground truth, the per-sample leaves of ``args``) are split along their
leading axis over the mesh; parameters, optimizer state and shared ``args`` leaves are
replicated. Multi-host runs (``jax.distributed``) work the same way: every process holds the
same host arrays and places the rows of its own devices.

Ground truth is solved in chunks of a fixed size, the same on every device count: XLA
vectorises a batch differently for different batch sizes, so only identical chunk shapes give
bitwise-identical solutions (and adaptive step sequences) on one device and on many.

CPU devices forced with ``XLA_FLAGS=--xla_force_host_platform_device_count=D``: XLA runs the
devices' programs on ``max(NPROC or #cores, D)`` threads, and on a busy machine a collective can
then wait forever for a device whose program is queued behind other work; set the environment
variable ``NPROC`` above ``D`` (e.g. ``4 D``) before jax starts.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from bespoke_jax.core.args import is_per_sample
from bespoke_jax.core.checks import (
    as_noise,
    check_count,
    check_field,
    check_save_ts,
    check_tolerances,
)
from bespoke_jax.truth.adaptive import (
    CHUNK_SIZE,
    BatchAxes,
    model_calls,
    named_failure,
    solve_batch,
)
from bespoke_jax.truth.data import TrainingData
from bespoke_jax.truth.paths import path_velocities
from bespoke_jax.truth.progress import ChunkBar, chunk_solved

AXIS = "batch"


def data_mesh(devices=None) -> Mesh:
    """A 1-D mesh with axis ``"batch"`` over ``devices`` (default: all, ``jax.devices()``)."""
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("data_mesh needs at least one device.")
    return Mesh(np.asarray(devices), (AXIS,))


def _global(value: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global array from a host array that every process holds in full."""
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def replicate(tree, mesh: Mesh):
    """Every leaf (host values, identical on every process) copied to every device."""
    sharding = NamedSharding(mesh, P())
    return jax.tree.map(lambda leaf: _global(np.asarray(leaf), sharding), tree)


def row_specs(tree, batch_size: int):
    """``P("batch")`` for per-sample leaves (leading axis ``batch_size``), ``P()`` otherwise."""
    return jax.tree.map(lambda leaf: P(AXIS) if is_per_sample(leaf, batch_size) else P(), tree)


def shard_rows(tree, mesh: Mesh, batch_size: int):
    """Per-sample leaves split along their leading axis over the mesh; other leaves replicated."""
    specs = row_specs(tree, batch_size)
    return jax.tree.map(
        lambda leaf, spec: _global(np.asarray(leaf), NamedSharding(mesh, spec)), tree, specs
    )


def pad_rows(tree, batch_size: int, size: int):
    """Per-sample leaves padded from ``batch_size`` to ``size`` rows by repeating the last row."""

    def pad(leaf):
        if not is_per_sample(leaf, batch_size) or size == batch_size:
            return leaf
        leaf = np.asarray(leaf)
        return np.concatenate([leaf, np.repeat(leaf[-1:], size - batch_size, axis=0)])

    return jax.tree.map(pad, tree)


def to_host(tree):
    """NumPy copies of the leaves; arrays sharded over several processes are gathered first."""

    def fetch(leaf):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            return multihost_utils.process_allgather(leaf, tiled=True)
        return np.asarray(leaf)

    return jax.tree.map(fetch, tree)


@functools.partial(
    jax.jit,
    static_argnames=(
        "u", "treedef", "rows", "axes", "mesh", "chunk_size", "rtol", "atol", "max_steps",
        "progress",
    ),
)  # fmt: skip
def _solve_sharded(
    x0, leaves, ts, *, u, treedef, rows, axes, mesh, chunk_size, rtol, atol, max_steps, progress
):
    """Per device: its rows in chunks of ``chunk_size``, each a per-sample Dopri5 solve.

    ``leaves`` are the flat args, per-sample at the positions ``rows``; with ``progress`` each
    solved chunk calls ``chunk_solved`` on the host (``jax.debug.callback``). Returns
    ``(x1, steps, xs, us)``, each split along the batch axis (``xs, us`` ``None`` without ``ts``).
    """

    def local(x, leaves, ts):
        def solve(chunk):
            xc, row_leaves = chunk
            merged = list(leaves)
            for i, leaf in zip(rows, row_leaves, strict=True):
                merged[i] = leaf
            a = jax.tree.unflatten(treedef, merged)
            x1, xs, steps = solve_batch(
                u, xc, a, ts, rtol=rtol, atol=atol, max_steps=max_steps, per_sample=True, axes=axes
            )
            if progress:
                jax.debug.callback(_report_chunk, steps)
            if ts is None:
                return x1, steps, None, None
            return x1, steps, xs, path_velocities(u, ts, xs, a)

        def split(y):
            return y.reshape(-1, chunk_size, *y.shape[1:])

        out = jax.lax.map(solve, (split(x), [split(leaves[i]) for i in rows]))
        return jax.tree.map(lambda y: y.reshape(-1, *y.shape[2:]), out)

    specs = [P(AXIS) if i in rows else P() for i in range(len(leaves))]
    return jax.shard_map(
        local, mesh=mesh, in_specs=(P(AXIS), specs, P()), out_specs=P(AXIS), check_vma=False
    )(x0, leaves, ts)


def _report_chunk(steps) -> None:
    chunk_solved(model_calls(steps))


def sharded_training_data(
    u: Callable,
    x0,
    *,
    args=None,
    save_ts=None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_steps: int = 4096,
    mesh: Mesh | None = None,
    chunk_size: int = CHUNK_SIZE,
    progress: bool = False,
) -> TrainingData:
    """``make_training_data`` with the samples split over the devices of ``mesh``.

    Each device solves its rows in chunks of ``chunk_size`` samples (``lax.map``), each sample
    with its own Dopri5 step-size controller, so the result is bitwise the same for every
    device count. ``N`` is padded with copies of the last sample to a multiple of
    ``chunk_size * mesh.size``; the copies are dropped.

    Args:
      u: the velocity field ``u(t, x, args)``.
      x0: ``(N, *shape)`` noise, the same host array on every process.
      args: the field's args; leaves with leading axis N are per-sample.
      save_ts: optional increasing ``(S,)`` times at which to keep the path and its velocity.
      rtol, atol, max_steps: as in ``ground_truth``.
      mesh: default ``data_mesh()`` (every visible device).
      chunk_size: samples per solve.
      progress: a bar of the chunks solved and the model calls they spent (padding copies
        included), ``truth.progress.ChunkBar``.

    Returns:
      ``TrainingData`` of host (NumPy) arrays, complete on every process.

    Raises:
      ValueError: bad shapes, save times or ``chunk_size``.
      RuntimeError: the model returned NaN/inf or a solve did not converge.
    """
    check_field(u, "bj.sharded_training_data")
    x0 = np.asarray(as_noise(x0, args))
    rtol, atol = check_tolerances(rtol, atol)
    max_steps = check_count("max_steps", max_steps)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}.")
    if save_ts is not None:
        save_ts = check_save_ts(save_ts, x0.dtype)
    mesh = data_mesh() if mesh is None else mesh
    n = x0.shape[0]
    per_device = math.ceil(n / (chunk_size * mesh.size)) * chunk_size
    padded = per_device * mesh.size
    x0_pad, args_pad = pad_rows((x0, args), n, padded)
    leaves, treedef = jax.tree.flatten(args_pad)
    rows = [i for i, leaf in enumerate(leaves) if is_per_sample(leaf, padded)]
    # One chunk's vmap axes, from placeholders: a shared leaf stays shared even when its
    # leading axis happens to equal the chunk size.
    chunk_axes = BatchAxes(
        [np.empty((chunk_size,)) if i in rows else np.empty(()) for i in range(len(leaves))],
        chunk_size,
    )
    x0_dev, leaves_dev = shard_rows((x0_pad, leaves), mesh, padded)
    ts = None if save_ts is None else jnp.asarray(save_ts)
    static = dict(u=u, treedef=treedef, rows=tuple(rows), axes=chunk_axes, mesh=mesh)
    static.update(chunk_size=chunk_size, rtol=rtol, atol=atol, max_steps=max_steps)
    chunks = per_device // chunk_size * len(mesh.local_devices)
    try:
        with ChunkBar(chunks, enabled=progress):
            out = _solve_sharded(x0_dev, leaves_dev, ts, progress=progress, **static)
            out = to_host(jax.block_until_ready(out))
            jax.effects_barrier()  # every chunk's report is in
    except Exception as err:  # jax wraps the runtime error in a backend-specific type
        raise named_failure(err, u, x0, args, rtol=rtol, atol=atol, max_steps=max_steps) from None
    x1, steps, xs, us = (None if y is None else y[:n] for y in out)
    nfe = int(model_calls(steps.max()))
    if save_ts is None:
        return TrainingData(x0, x1, nfe=nfe)
    return TrainingData(x0, x1, save_ts, xs, us, nfe + len(save_ts))
