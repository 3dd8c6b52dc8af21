"""Data parallelism: one device, four devices and two processes train to the same parameters.

Each configuration runs in its own process (the device count is fixed when jax starts):
``tests/train_worker.py`` trains BNS at NFE 4 for 100 steps on a mixture whose field has a
per-sample and a shared ``args`` leaf, ground truth included, from the same key.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import train_worker

HERE = Path(__file__).parent
TRAIN = {"steps": 100, "batch_size": 8, "eval_every": 50}
# Devices change only the order of the floating-point sums in the cross-device mean of the
# loss (and nothing in the ground truth, solved in device-independent chunks): float32
# reassociation, ~1e-7 relative per step, leaves 100 Adam steps far inside 1e-4.
RTOL = 1e-4


def _env(devices: int | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    # XLA's CPU client runs the devices' programs on max(NPROC or #cores, #devices) threads;
    # with no spare thread, a collective can wait forever for a device whose program is queued
    # behind other work (seen with 4 devices on 2 busy cores).
    env["JAX_PLATFORMS"], env["NPROC"] = "cpu", "16"
    if devices is not None:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def _command(spec: dict) -> list[str]:
    return [sys.executable, str(HERE / "train_worker.py"), json.dumps(spec)]


def _assert_same(params, path):
    with np.load(path) as f:
        other = [f[f"p{i}"] for i in range(len(params))]
    for mine, theirs in zip(params, other, strict=True):
        assert np.linalg.norm(mine - theirs) <= RTOL * np.linalg.norm(mine)


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """The four-device run and the two processes, started at once (they run while the
    reference trains here)."""
    tmp = tmp_path_factory.mktemp("distributed")
    four = {"out": str(tmp / "four.npz"), "train": TRAIN, "odd_batch": 6}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    two = [
        {
            "out": str(tmp / "two.npz"),
            "train": TRAIN,
            "distributed": {"port": port, "num_processes": 2, "process_id": i},
        }
        for i in range(2)
    ]
    jobs = {"four": [_start(four, _env(4))], "two": [_start(spec, _env()) for spec in two]}
    yield {"four": (jobs["four"], four["out"]), "two": (jobs["two"], two[0]["out"])}
    for procs in jobs.values():
        for proc in procs:
            proc.kill()
            proc.communicate()


def _start(spec: dict, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        _command(spec), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _finish(procs: list) -> list[str]:
    """Each process's stdout, once all exited successfully."""
    outputs = [proc.communicate(timeout=600) for proc in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-3000:]
    return [out for out, _ in outputs]


@pytest.fixture(scope="module")
def reference(launched):
    assert jax.device_count() == 1, "the reference run needs a single-device process"
    return [np.asarray(leaf) for leaf in jax.tree.leaves(train_worker.run(TRAIN).params)]


def test_four_devices_match_one(launched, reference):
    procs, out = launched["four"]
    (stdout,) = _finish(procs)
    assert "refused: batch_size 6 must be a multiple of the 4 devices" in stdout
    with np.load(out) as f:
        assert int(f["devices"]) == 4
    _assert_same(reference, out)


def test_two_processes_match_one(launched, reference):
    procs, out = launched["two"]
    _finish(procs)
    with np.load(out) as f:
        assert int(f["devices"]) == 2
    _assert_same(reference, out)
