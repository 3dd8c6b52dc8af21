"""The training engine: sharded ground truth, its disk cache, resumable runs, logs and hooks.

The problem (``train_worker.problem``): a 4-component mixture in 8 dimensions whose field has a
per-sample and a shared ``args`` leaf; BNS at NFE 4.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import train_worker

import bespoke_jax as bj
from bespoke_jax.io import cache as _cache

HERE = Path(__file__).parent
RUN = {"steps": 60, "batch_size": 8, "eval_every": 10}


@pytest.fixture(scope="module")
def problem():
    return train_worker.problem()


@pytest.fixture(scope="module")
def data(problem):
    """Training and validation pairs, solved sharded once for the whole module."""
    u, x0_train, x0_val, args, val_args = problem
    train = bj.sharded_training_data(u, x0_train, args=args)
    val = bj.sharded_training_data(u, x0_val, args=val_args)
    return train, val


@pytest.fixture(scope="module")
def reference(data):
    """An uninterrupted run, without checkpoints."""
    return train_worker.run(RUN, data)


def test_sharded_ground_truth_agrees_with_ground_truth(problem, data):
    u, x0_train, _, args, _ = problem
    plain = bj.make_training_data(u, x0_train, args=args)
    # Both are Dopri5 at rtol = atol = 1e-5 (different batch shapes, so different rounding and
    # step sequences): they agree to a small multiple of the tolerance times |x| (<= ~3).
    assert np.max(np.abs(np.asarray(plain.x1) - data[0].x1)) < 1e-3
    assert abs(plain.nfe - data[0].nfe) <= 0.2 * plain.nfe


def test_a_sample_ground_truth_ignores_the_rest_of_the_batch(problem, data):
    u, x0_train, _, args, _ = problem
    # 20 samples are padded to the same chunk as the 32: the same program, bitwise.
    part = bj.sharded_training_data(u, x0_train[:20], args=jax.tree.map(lambda a: a, args))
    assert part.x1.shape == (20, train_worker.DIM)
    np.testing.assert_array_equal(part.x1, data[0].x1[:20])


def _entries(cache_dir: Path) -> list[str]:
    return sorted(p.name for p in cache_dir.iterdir())


def _no_solve(*args, **kwargs):
    raise AssertionError("the cache should have been used")


def test_cache_writes_once_and_reuses(problem, data, tmp_path, monkeypatch):
    u, x0_train, _, args, _ = problem
    first = bj.cached_training_data(u, x0_train, cache_dir=tmp_path, args=args)
    assert len(_entries(tmp_path)) == 1 and _entries(tmp_path)[0].startswith("gt-")
    np.testing.assert_array_equal(first.x1, data[0].x1)
    monkeypatch.setattr(_cache, "sharded_training_data", _no_solve)
    again = bj.cached_training_data(u, x0_train, cache_dir=tmp_path, args=args)
    np.testing.assert_array_equal(again.x1, first.x1)
    assert again.nfe == first.nfe
    # Other noise, args or tolerances are other entries: a miss, never a wrong hit.
    with pytest.raises(AssertionError, match="cache should have been used"):
        bj.cached_training_data(u, x0_train, cache_dir=tmp_path, args=args, rtol=1e-6)
    with pytest.raises(AssertionError, match="cache should have been used"):
        bj.cached_training_data(u, x0_train[::-1], cache_dir=tmp_path, args=args)
    other_args = {**args, "shift": np.float32(0.02)}
    with pytest.raises(AssertionError, match="cache should have been used"):
        bj.cached_training_data(u, x0_train, cache_dir=tmp_path, args=other_args)


def test_cache_serves_pairs_from_a_path_entry_across_nfe(problem, tmp_path, monkeypatch):
    u, x0_train, _, args, _ = problem
    save_ts = np.linspace(0.0, 1.0, 5)
    path = bj.cached_training_data(u, x0_train, cache_dir=tmp_path, args=args, save_ts=save_ts)
    monkeypatch.setattr(_cache, "sharded_training_data", _no_solve)
    pairs = bj.cached_training_data(u, x0_train, cache_dir=tmp_path, args=args)
    assert pairs.path_xs is None and pairs.nfe == path.nfe - len(save_ts)
    np.testing.assert_array_equal(pairs.x1, path.x1)
    # Families of any NFE with the same saved times share the entry.
    again = bj.cached_training_data(u, x0_train, cache_dir=tmp_path, args=args, save_ts=save_ts)
    np.testing.assert_array_equal(again.path_us, path.path_us)


def test_cache_refuses_a_changed_model_under_the_same_id(problem, tmp_path):
    u, x0_train, _, args, _ = problem
    bj.cached_training_data(u, x0_train, cache_dir=tmp_path, model_id="m", args=args)

    def retrained(t, x, a):
        return 1.1 * u(t, x, a)

    with pytest.raises(ValueError, match="different model under the same model_id 'm'"):
        bj.cached_training_data(retrained, x0_train, cache_dir=tmp_path, model_id="m", args=args)


def test_cache_refuses_a_damaged_entry(problem, tmp_path):
    u, x0_train, _, args, _ = problem
    bj.cached_training_data(u, x0_train, cache_dir=tmp_path, args=args)
    (entry,) = tmp_path.iterdir()
    raw = bytearray(entry.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    entry.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=f"Delete {entry}"):
        bj.cached_training_data(u, x0_train, cache_dir=tmp_path, args=args)


def test_train_through_the_cache(problem, data, tmp_path, monkeypatch):
    u, x0_train, x0_val, args, val_args = problem
    for x0, a in ((x0_train, args), (x0_val, val_args)):
        bj.cached_training_data(u, x0, cache_dir=tmp_path, args=a)
    monkeypatch.setattr(_cache, "sharded_training_data", _no_solve)
    result = train_worker.run({"steps": 2, "batch_size": 8, "cache_dir": str(tmp_path)})
    np.testing.assert_array_equal(result.train_data.x1, data[0].x1)


def test_model_calls_count_every_forward(reference, data):
    train, val = data
    evals = len(reference.history["step"])
    n, m, nfe = len(train.x1), len(val.x1), 4
    steps, batch = RUN["steps"], RUN["batch_size"]
    expected = train.nfe * n + val.nfe * m + nfe * (steps * batch + evals * m)
    assert reference.model_calls == expected
    assert reference.history["step"] == list(range(0, steps + 1, RUN["eval_every"]))


def test_returns_the_parameters_of_the_best_validation_step(problem, data):
    """SGD on the linear loss ``<g, params>`` walks the line ``params_k = init - k lr g``.

    ``g`` is the gradient of the validation loss at ``init``: validation PSNR along the line
    rises, peaks and falls (at lr = 1e-4: 32.2, 34.0, 34.8, 33.4, ... dB at steps 0, 10, 20,
    30), and this test computes it from the validation noise, ground truth and args itself. The
    run must log exactly those values and return the point of the best one.
    """
    u, _, _, _, val_args = problem
    _, val = data
    family, lr = bj.bns(4), 1e-4
    init = family.init()
    val_batch = bj.TrainingData(jnp.asarray(val.x0), jnp.asarray(val.x1))
    g = jax.grad(family.loss)(init, u, val_batch, val_args)

    def linear(params, u, batch, args):
        pairs = zip(jax.tree.leaves(g), jax.tree.leaves(params), strict=True)
        return sum(jnp.vdot(a, b) for a, b in pairs)

    result = train_worker.run({**RUN, "optimizer": optax.sgd(lr), "loss": linear}, data)

    def on_line(step):
        return jax.tree.map(lambda p, d: p - step * lr * d, init, g)

    val_psnr = jax.jit(lambda p: bj.psnr(family.sample(p, u, val_batch.x0, val_args), val.x1))
    expected = [float(val_psnr(on_line(step))) for step in result.history["step"]]
    np.testing.assert_allclose(result.history["val_psnr"], expected, rtol=1e-5)
    best = int(np.argmax(expected))
    assert 0 < best < len(expected) - 1, expected  # neither the first nor the last point
    assert result.best_step == result.history["step"][best]
    assert result.best_val_psnr == max(result.history["val_psnr"])
    for got, want in zip(
        jax.tree.leaves(result.params), jax.tree.leaves(on_line(result.best_step)), strict=True
    ):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_remat_gives_the_same_parameters(reference, data):
    remat = train_worker.run({**RUN, "remat": True}, data)
    for a, b in zip(jax.tree.leaves(reference.params), jax.tree.leaves(remat.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_data_of_other_noise_is_refused(data):
    train, val = data
    swapped = bj.TrainingData(train.x0[::-1], train.x1[::-1], nfe=train.nfe)
    with pytest.raises(ValueError, match="train_data was solved for other noise"):
        train_worker.run(RUN, (swapped, val))


def _log_steps(path: Path) -> list[int]:
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def test_finished_run_is_returned_from_its_checkpoint(reference, data, tmp_path):
    seen = []
    run = {**RUN, "checkpoint_dir": str(tmp_path / "ckpt"), "checkpoint_every": 20}
    first = train_worker.run(run, data, on_eval=lambda step, metrics: seen.append(step))
    assert seen == list(range(10, 61, 10))
    assert _log_steps(tmp_path / "ckpt" / "log.jsonl") == list(range(0, 61, 10))
    again = train_worker.run(run, data, on_eval=lambda step, metrics: seen.append(step))
    assert seen == list(range(10, 61, 10))  # nothing left to train
    np.testing.assert_equal(again.history, first.history)  # NaN (step 0's loss) equals NaN
    assert again.best_step == first.best_step
    leaves = (jax.tree.leaves(r.params) for r in (reference, first, again))
    for a, b, c in zip(*leaves, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        np.testing.assert_array_equal(np.asarray(b), np.asarray(c))
    with pytest.raises(ValueError, match="different run .* steps"):
        train_worker.run({**run, "steps": 80}, data)


def test_run_killed_by_sigkill_resumes_to_the_same_parameters(reference, data, tmp_path):
    data_file = tmp_path / "data.npz"
    train_worker.save_data(data_file, data)
    run = {**RUN, "checkpoint_dir": str(tmp_path / "ckpt"), "checkpoint_every": 10}
    spec = {"out": str(tmp_path / "params.npz"), "data": str(data_file), "train": run}
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    command = [sys.executable, str(HERE / "train_worker.py")]
    # Evaluation 30 blocks until the process is killed: steps 21-30 have run, the step-30
    # checkpoint is not written, the step-20 one may still be in flight.
    proc = subprocess.Popen(
        [*command, json.dumps({**spec, "block_at": 30})], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        for line in proc.stdout:
            if line.startswith("blocked"):
                break
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        proc.kill()
        proc.stdout.close()
    assert not (tmp_path / "params.npz").exists()
    done = subprocess.run(
        [*command, json.dumps(spec)], env=env, capture_output=True, text=True, timeout=600,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    resumed_from = int(done.stdout.split()[1]) - RUN["eval_every"]
    assert resumed_from in (10, 20)
    assert _log_steps(tmp_path / "ckpt" / "log.jsonl") == list(range(0, 61, 10))
    with np.load(tmp_path / "params.npz") as f:
        for i, leaf in enumerate(jax.tree.leaves(reference.params)):
            np.testing.assert_array_equal(f[f"p{i}"], np.asarray(leaf))


def _last_bar(err: str, desc: str) -> str:
    """The last frame tqdm drew of the bar labelled ``desc``."""
    return [frame for frame in err.replace("\r", "\n").splitlines() if frame.startswith(desc)][-1]


def test_ground_truth_progress_counts_chunks_and_calls(problem, data, capsys):
    u, x0_train, x0_val, args, val_args = problem
    # 40 samples: two chunks of 32, the second padded; the bar counts the samples' own calls.
    x0 = np.concatenate([x0_train, x0_val[:8]])
    both = {"scale": np.concatenate([args["scale"], val_args["scale"][:8]]), "shift": args["shift"]}
    gt = bj.ground_truth(u, x0, args=both, progress=True)
    err = capsys.readouterr().err
    frame = _last_bar(err, "ground truth")
    assert "ground truth (compiling)" in err and frame.startswith("ground truth: 100%")
    assert "2/2" in frame and f"calls={int(gt.nfe_per_sample.sum())}]" in frame
    assert gt.nfe == gt.nfe_per_sample.max() and gt.x1.shape == x0.shape
    assert np.max(np.abs(np.asarray(gt.x1[:32]) - data[0].x1)) < 1e-3  # as the sharded solve
    # The sharded solve reports one chunk per device (padding included) and the same bits.
    sharded = bj.sharded_training_data(u, x0_train, args=args, progress=True)
    frame = _last_bar(capsys.readouterr().err, "ground truth")
    devices = len(jax.devices())
    assert f"{devices}/{devices}" in frame
    calls = int(frame.rsplit("calls=", 1)[1].rstrip("]"))
    assert sharded.nfe <= calls <= sharded.nfe * 32 * devices
    np.testing.assert_array_equal(sharded.x1, data[0].x1)


def test_training_bar_shows_the_validation_psnr_and_skips_compilation(problem, data, capsys):
    u, x0_train, x0_val, args, val_args = problem
    run = {"steps": 4, "batch_size": 8, "eval_every": 2, "train_data": data[0], "val_data": data[1]}
    result = bj.train(bj.bns(4), u, x0_train, x0_val, args=args, val_args=val_args, **run)
    frames = capsys.readouterr().err.replace("\r", "\n").splitlines()
    bars = [frame for frame in frames if frame.startswith("train bns")]
    assert bars[0].startswith("train bns (compiling)") and "4/4" in bars[-1]
    assert not bars[-1].startswith("train bns (compiling)")
    history = result.history
    assert f"val_psnr={history['val_psnr'][-1]:.2f} dB" in bars[-1]
    assert f"best={max(history['val_psnr']):.2f} dB" in bars[-1]


@pytest.mark.parametrize(
    "entry, call",
    [
        ("bj.train", lambda u, x0: bj.train(bj.bns(4), u, x0, x0, progress=False)),
        ("bj.ground_truth", lambda u, x0: bj.ground_truth(u, x0)),
        ("bj.sharded_training_data", lambda u, x0: bj.sharded_training_data(u, x0)),
        ("bj.solvers.euler", lambda u, x0: bj.solvers.euler(u, x0, nfe=2)),
        ("bj.solvers.unipc", lambda u, x0: bj.solvers.unipc(u, x0, nfe=2, scheduler=bj.cond_ot())),
    ],
)
def test_a_two_argument_field_is_named_at_the_entry(entry, call):
    with pytest.raises(ValueError, match=rf"^{entry}: the velocity field must be u\(t, x, args\)"):
        call(lambda t, x: -x, np.zeros((2, 3), np.float32))
