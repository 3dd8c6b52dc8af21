"""Bad inputs at the public entry points are refused with a message that names the fix."""

import json
import os
import shutil
import signal
import stat
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bespoke_jax as bj
from bespoke_jax.core.schedulers import scheduler_from_config
from bespoke_jax.io.storage import params_sha256
from experiments.reliability import Counted

X0 = jnp.ones((2, 3))
NAN = float("nan")
NAN_GUIDANCE = {"guidance": jnp.asarray(NAN)}
HUGE_GUIDANCE = {"guidance": 1e30}


def linear(t, x, args):
    return -x


def nan_after_half(t, x, args):
    return jnp.where(t > 0.5, jnp.nan, 1.0) * x


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    family = bj.bst(2)
    return bj.save_solver(tmp_path_factory.mktemp("solver") / "bst", family, family.init())


@pytest.mark.parametrize(
    ("call", "match"),
    [
        # baseline solvers: NFE, grids, scheduler
        (lambda: bj.solvers.euler(linear, X0, nfe=0), r"valid NFE: any integer >= 1"),
        (lambda: bj.solvers.euler(linear, X0, nfe=2.0), r"cannot spend nfe=2.0"),
        (lambda: bj.solvers.midpoint(linear, X0, nfe=3), r"positive multiples of 2"),
        (lambda: bj.solvers.rk4(linear, X0, nfe=6), r"positive multiples of 4"),
        (
            lambda: bj.solvers.edm(linear, X0, nfe=4, scheduler=bj.cond_ot()),
            r"2 \* steps - 1 for steps >= 1 \(1, 3, 5",
        ),
        (lambda: bj.solvers.ddim(linear, X0, nfe=2), r"needs the model's `scheduler`"),
        (lambda: bj.solvers.euler(linear, X0[0], nfe=2), r"add a leading batch axis"),
        (
            lambda: bj.solvers.euler(linear, X0, nfe=2, grid=[0.0, 0.7, 0.5]),
            r"increase strictly",
        ),
        (lambda: bj.solvers.euler(linear, X0, nfe=2, grid=[0.1, 0.5, 1.0]), r"start at 0"),
        (lambda: bj.solvers.euler(linear, X0, nfe=2, grid=[0.0, 0.5, 0.9]), r"end at 1"),
        (
            lambda: bj.solvers.euler(linear, X0, nfe=2, grid=[0.0, 1.0]),
            r"must have shape \(3,\), got \(2,\)",
        ),
        (lambda: bj.solvers.make_grid("cosine", 4), r"valid grids: \('uniform'"),
        (lambda: bj.solvers.make_grid("logsnr", 4), r"needs the model's `scheduler`"),
        (lambda: bj.solvers.steps_for("rk5", 4), r"valid names: \('euler'"),
        # learned families
        (lambda: bj.bst(0), r"nfe must be an integer in \[1, 256\], got 0"),
        (lambda: bj.bst(4, base="rk3"), r"valid bases: \('rk1', 'rk2'\)"),
        (lambda: bj.bst(5), r"Use nfe=4 or 6, or base='rk1'"),
        (lambda: bj.bst(4, loss_kind="l2"), r"valid: \('bound', 'direct'\)"),
        (lambda: bj.bns(4, init="rk5"), r"valid names: \('euler'"),
        (lambda: bj.bns(3, init="midpoint"), r"midpoint cannot spend nfe=3"),
        (lambda: bj.bns(4, sigma0=0.0, scheduler=bj.cond_ot()), r"sigma0 must be positive"),
        (lambda: bj.bns(4, sigma0=2.0), r"sigma0=2.0 needs the model's `scheduler`"),
        (lambda: bj.bns(4, init="unipc"), r"init='unipc' needs the model's `scheduler`"),
        (
            lambda: bj.family_from_config({"name": "dpm"}),
            r"known families: \['bns', 'bst', 'grid'\]",
        ),
        # models, outputs, data
        (
            lambda: bj.to_velocity(linear, bj.cond_ot(), "score"),
            r"valid predictions: \('velocity'",
        ),
        (lambda: scheduler_from_config({"name": "linear"}), r"valid names: \["),
        (
            lambda: bj.GaussianMixture(jnp.zeros((3, 2)), jnp.ones(2), jnp.ones(3)),
            r"must have shape \(3,\) to match means",
        ),
        (lambda: bj.GaussianMixture(jnp.zeros(3), jnp.ones(3), jnp.ones(3)), r"shape \(K, d\)"),
        (lambda: bj.pretrained("mnist"), r"valid names: \['checkerboard', 'digits', 'patches16'\]"),
        (lambda: bj.pretrained("checkerboard").args(guidance=2.0), r"without labels or guidance"),
        (lambda: bj.pretrained("digits").args(), r"pass labels, ints of shape \(B,\)"),
        (lambda: bj.pretrained("digits").args(labels=np.array([3, 11])), r"lie in \[0, 10\]"),
        (lambda: bj.pretrained("digits").args(labels=np.array([1.0])), r"must be ints"),
        (
            lambda: bj.pretrained("digits").velocity(
                jnp.zeros(()), jnp.zeros((2, 8, 8)), bj.pretrained("digits").args(np.arange(3))
            ),
            r"args\['labels'\] must have shape \(B,\) = \(2,\)",
        ),
        # numbers at every entry: noise, args, grids, tolerances, sizes
        (lambda: bj.solvers.euler(linear, X0.at[0, 0].set(jnp.nan), nfe=2), r"x0 contains NaN"),
        (lambda: bj.solvers.heun(linear, X0.at[1, 2].set(jnp.inf), nfe=2), r"x0 contains NaN"),
        (
            lambda: bj.solvers.euler(linear, X0.astype(jnp.complex64), nfe=2),
            r"complex\).*pass jnp.real\(x0\)",
        ),
        (
            lambda: bj.solvers.euler(linear, jnp.ones((2, 3), int), nfe=2),
            r"int32: .*pass x0.astype\(jnp.float32\)",
        ),
        (lambda: bj.solvers.euler(linear, jnp.ones((0, 3)), nfe=2), r"x0 is empty"),
        (lambda: bj.bns(2).sample(bj.bns(2).init(), linear, X0.astype(jnp.complex64)), r"complex"),
        (lambda: bj.solvers.euler(linear, X0, nfe=2, args=NAN_GUIDANCE), r"guidance must be"),
        (lambda: bj.solvers.euler(linear, X0, nfe=2, args=HUGE_GUIDANCE), r"\|w\| <= 1000"),
        (lambda: bj.solvers.euler(linear, X0, nfe=2, args={"c": NAN}), r"args\['c'\] contains"),
        (
            lambda: bj.solvers.euler(linear, X0, nfe=2, grid=[0.0, jnp.nan, 1.0]),
            r"must be finite",
        ),
        (lambda: bj.solvers.euler(linear, X0, nfe=10**6), r"above the bound of 100000"),
        (lambda: bj.bns(10000), r"nfe must be an integer in \[1, 256\], got 10000"),
        (lambda: bj.bst(1000), r"nfe must be an integer in \[1, 256\]"),
        (lambda: bj.ground_truth(linear, X0, rtol=-1, atol=-1), r"rtol must be .* got -1"),
        (lambda: bj.ground_truth(linear, X0, rtol=0, atol=0), r"rtol must be .* positive"),
        (lambda: bj.ground_truth(linear, X0, atol=NAN), r"atol must be a finite positive"),
        (lambda: bj.ground_truth(linear, X0, max_steps=0), r"max_steps must be an integer >= 1"),
        (lambda: bj.ground_truth(linear, X0.astype(jnp.complex64)), r"complex"),
        (lambda: bj.psnr(X0, X0 + 1, data_range=0.0), r"data_range must be .* positive"),
        (
            lambda: bj.train(bj.bst(2), linear, jnp.ones((4, 3)), X0, data_range=0),
            r"data_range must be a finite positive number, got 0",
        ),
        (
            lambda: bj.train(bj.bst(2), linear, jnp.ones((4, 3)), X0, learning_rate=NAN),
            r"learning_rate must be a finite positive number, got nan",
        ),
        (
            lambda: bj.train(bj.bst(2), linear, jnp.ones((4, 3)), X0, learning_rate=-1e-3),
            r"learning_rate must be a finite positive",
        ),
        (
            lambda: bj.train(bj.bst(2), linear, jnp.ones((4, 3), int), X0),
            r"x0_train must be real floating point",
        ),
        (
            lambda: bj.train(bj.bst(2), linear, jnp.ones((4, 3)), X0, rtol=0.0),
            r"rtol must be a finite positive",
        ),
        # ground truth
        (lambda: bj.ground_truth(linear, X0[0]), r"add a leading batch axis"),
        (lambda: bj.ground_truth(linear, X0.at[0, 0].set(jnp.nan)), r"NaN or inf"),
        (lambda: bj.ground_truth(linear, X0, save_ts=[0.0, 0.5, 0.5]), r"strictly increasing"),
        (lambda: bj.ground_truth(linear, X0, save_ts=[0.5, 1.5]), r"inside \[0, 1\]"),
        # training
        (
            lambda: bj.train(bj.bst(2), linear, jnp.ones((4, 3)), jnp.ones((2, 2))),
            r"must share a sample shape",
        ),
        (
            lambda: bj.train(bj.bst(2), linear, jnp.ones((4, 3)), X0, batch_size=8),
            r"batch_size must be in \[1, 4\]",
        ),
        (
            lambda: bj.train(bj.bst(2), linear, jnp.ones((0, 3)), X0),
            r"x0_train is empty \(shape \(0, 3\)\): give at least one sample",
        ),
        (
            lambda: bj.train(bj.bst(2), linear, jnp.ones((4, 3)), X0, steps=0),
            r"steps must be an integer >= 1, got 0",
        ),
        # storage
        (
            lambda: bj.save_solver("unused", bj.bst(2), bj.bst(4).init()),
            r"params do not fit bst",
        ),
        (
            lambda: bj.save_solver("unused", bj.bst(2), bj.bst(2).init(), {"nfe": 3}),
            r"reserved for the format; rename them",
        ),
    ],
)
def test_refused(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_load_missing_path(tmp_path):
    with pytest.raises(ValueError, match=r"not a saved solver .*save with save_solver"):
        bj.load_solver(tmp_path / "nowhere")


def test_load_damaged_metadata(tmp_path):
    (tmp_path / "solver.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"solver.json is damaged"):
        bj.load_solver(tmp_path)


def test_load_other_format_version(saved, tmp_path):
    path = shutil.copytree(saved, tmp_path / "copy")
    record = json.loads((path / "solver.json").read_text())
    record["format_version"] = 99
    (path / "solver.json").write_text(json.dumps(record))
    with pytest.raises(
        ValueError, match=r"version 99; this bespoke_jax .* reads .* versions 1 to 2"
    ):
        bj.load_solver(path)


# A solver.json as bespoke_jax 0.1.0 wrote it (format version 1, no record checksum), for
# bst(2).init() (the ``saved`` fixture's parameters).
VERSION_1 = """{"format": "bespoke_jax.solver", "format_version": 1, "package_version": "0.1.0",
 "family": {"name": "bst", "nfe": 2, "base": "rk2", "l_tau": 1.0, "loss_kind": "bound",
  "path_points": 65},
 "nfe": 2, "num_params": 7,
 "params_shapes": {"['ds']": [[2], "float32"], "['dt']": [[2], "float32"],
  "['s']": [[2], "float32"], "['t']": [[1], "float32"]},
 "params_sha256": "d3cddac522a7750226184f5d272df7db647a5988a9d389e244a86321e0353404",
 "model": "checkerboard"}"""


def test_a_version_1_solver_still_loads(saved, tmp_path):
    path = shutil.copytree(saved, tmp_path / "old")
    (path / "solver.json").write_text(VERSION_1)
    family, params, record = bj.load_solver(path)
    assert family == bj.bst(2) and record["format_version"] == 1
    assert params_sha256(params) == params_sha256(bj.bst(2).init())


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda r: {**r, "model": "/elsewhere/evil.py:make"}, r"fails its record_sha256"),
        (lambda r: {**r, "nfe": 4}, r"fails its record_sha256"),
        (lambda r: [r], r"holds a JSON list, not an object"),
        (lambda r: {k: v for k, v in r.items() if k != "family"}, r"lacks family"),
        (lambda r: {**r, "format_version": "2"}, r"version '2'"),
    ],
)
def test_edited_or_malformed_solver_json_is_refused(saved, tmp_path, edit, match):
    path = shutil.copytree(saved, tmp_path / "copy")
    record = json.loads((path / "solver.json").read_text())
    (path / "solver.json").write_text(json.dumps(edit(record)))
    with pytest.raises(ValueError, match=match):
        bj.load_solver(path)


def test_loading_never_runs_the_model_it_names(saved, tmp_path):
    sentinel = tmp_path / "ran"
    entry = tmp_path / "evil.py"
    entry.write_text(f"open({str(sentinel)!r}, 'w').close()\ndef make():\n    return {{}}\n")
    family = bj.bst(2)
    path = bj.save_solver(tmp_path / "s", family, family.init(), {"model": f"{entry}:make"})
    assert bj.load_solver(path)[2]["model"] == f"{entry}:make"
    assert not sentinel.exists()


def test_load_other_family(saved):
    with pytest.raises(ValueError, match=r"holds a bst solver, not a bns one"):
        bj.load_solver(saved, "bns")


def test_nan_model_in_ground_truth_names_the_time():
    with pytest.raises(RuntimeError, match=r"first at t = 0\.5\d* for sample 0"):
        bj.ground_truth(nan_after_half, X0)


def test_nan_loss_stops_training():
    x0 = jnp.ones((4, 3))
    data = bj.make_training_data(linear, x0)
    val = bj.make_training_data(linear, X0)
    with pytest.warns(RuntimeWarning, match=r"diverged at step 1 .* Lower the learning rate"):
        result = bj.train(
            bj.bns(2, init="euler"),
            linear,
            x0,
            X0,
            loss=lambda params, u, batch, args: jnp.nan * jnp.sum(params["a"]),
            steps=3,
            batch_size=2,
            eval_every=1,
            train_data=data,
            val_data=val,
            progress=False,
        )
    assert result.best_step == 0 and result.history["step"] == [0]


def squeezed(t, x, args):
    """Breaks the contract: ``(B, 1)`` for ``(B, d)`` input (it would broadcast silently)."""
    return -x[:, :1]


@pytest.mark.parametrize(
    "call",
    [
        lambda: bj.solvers.euler(squeezed, X0, nfe=2),
        lambda: bj.solvers.dpm_solver_pp(squeezed, X0, nfe=2, scheduler=bj.cond_ot()),
        lambda: bj.ground_truth(squeezed, X0),
        lambda: bj.bns(2, init="euler").sample(bj.bns(2, init="euler").init(), squeezed, X0),
        lambda: bj.bst(2).sample(bj.bst(2).init(), squeezed, X0),
    ],
)
def test_field_of_the_wrong_shape_is_refused_at_trace_time(call):
    with pytest.raises(ValueError, match=r"returned shape \(\d, 1\) for x of shape \(\d, 3\)"):
        call()


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_noise_runs_in_float32(dtype):
    x0 = (jnp.arange(6.0).reshape(2, 3) / 4).astype(dtype)
    exact = x0.astype(jnp.float32)
    family = bj.bns(2, init="euler")
    for run in (
        lambda x: bj.solvers.euler(linear, x, nfe=2),
        lambda x: family.sample(family.init(), linear, x),
        lambda x: bj.ground_truth(linear, x).x1,
    ):
        out = run(x0)
        assert out.dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(out), np.asarray(run(exact)))


# Outputs: what a user owns is never deleted, overwritten or turned into a directory.

USER_FILES = {"notes.txt": b"my notes\n", "sub/data.bin": bytes(range(256))}


def user_files(root: Path, files: dict = USER_FILES) -> dict:
    """Write the user's ``files`` under ``root``; returns a snapshot of them."""
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return snapshot(root, files)


def snapshot(root: Path, names) -> dict:
    return {name: (root / name).read_bytes() for name in names}


def test_save_solver_refuses_a_directory_of_the_users(tmp_path):
    before = user_files(tmp_path)
    with pytest.raises(ValueError, match=r"not empty \(notes.txt, sub\).*overwrite=True"):
        bj.save_solver(tmp_path, bj.bst(2), bj.bst(2).init())
    assert snapshot(tmp_path, USER_FILES) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "sub"]


def test_overwrite_writes_next_to_the_users_files_and_replaces_only_ours(tmp_path):
    before = user_files(tmp_path)
    family = bj.bst(2)
    bj.save_solver(tmp_path, family, family.init(), overwrite=True)
    params = jax.tree.map(lambda leaf: leaf + 1.0, family.init())
    bj.save_solver(tmp_path, family, params)  # now a saved solver: ours to replace
    assert snapshot(tmp_path, USER_FILES) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "notes.txt",
        "params",
        "solver.json",
        "sub",
    ]
    assert params_sha256(bj.load_solver(tmp_path)[1]) == params_sha256(params)


@pytest.mark.parametrize("name", ["solver.json", "params"])
def test_overwrite_never_replaces_a_users_file_of_our_name(tmp_path, name):
    before = user_files(tmp_path, {name: b"[1, 2]"})
    with pytest.raises(ValueError, match=rf"holds {name}, which bespoke_jax did not write"):
        bj.save_solver(tmp_path, bj.bst(2), bj.bst(2).init(), overwrite=True)
    assert snapshot(tmp_path, [name]) == before


@pytest.mark.parametrize("overwrite", [False, True])
def test_an_existing_file_is_never_turned_into_a_directory(tmp_path, overwrite):
    path = tmp_path / "existing.txt"
    before = user_files(tmp_path, {"existing.txt": b"keep me"})
    with pytest.raises(ValueError, match=r"existing.txt is an existing file; it is never"):
        bj.save_solver(path, bj.bst(2), bj.bst(2).init(), overwrite=overwrite)
    assert snapshot(tmp_path, ["existing.txt"]) == before and path.is_file()


def test_export_refuses_a_users_file_and_a_directory(saved, tmp_path):
    family, params, meta = bj.load_solver(saved)
    before = user_files(tmp_path, {"mine.json": b'{"mine": 1}'})
    with pytest.raises(ValueError, match=r"mine.json exists and was not written .*overwrite=True"):
        bj.export_solver(tmp_path / "mine.json", family, params, meta)
    assert snapshot(tmp_path, ["mine.json"]) == before
    with pytest.raises(ValueError, match=r"is a directory: give the path of a file"):
        bj.export_solver(tmp_path, family, params, meta)
    first = bj.export_solver(tmp_path / "ours.json", family, params, meta)
    assert bj.export_solver(first, family, params, meta) == first  # ours: replaced


def test_what_we_write_follows_the_umask(saved, tmp_path):
    old = os.umask(0o027)
    try:
        family, params, meta = bj.load_solver(saved)
        path = bj.save_solver(tmp_path / "solver", family, params)
        exported = bj.export_solver(tmp_path / "solver.json", family, params, meta)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o750
    assert stat.S_IMODE((path / "solver.json").stat().st_mode) == 0o640
    assert stat.S_IMODE(exported.stat().st_mode) == 0o640


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    names=st.lists(
        st.text(st.sampled_from("abcjnoprs._-0"), min_size=1, max_size=12).filter(
            lambda name: name not in (".", "..")
        ),
        min_size=1,
        max_size=4,
        unique=True,
    ),
    contents=st.binary(max_size=64),
    overwrite=st.booleans(),
)
def test_save_solver_never_removes_unrelated_files(tmp_path_factory, names, contents, overwrite):
    root = tmp_path_factory.mktemp("property")
    before = user_files(root, {name: contents + name.encode() for name in names})
    try:
        bj.save_solver(root, bj.bst(2), bj.bst(2).init(), overwrite=overwrite)
    except ValueError as err:
        assert "overwrite=True" in str(err) or "did not write" in str(err)
    assert snapshot(root, names) == before


@pytest.mark.parametrize(
    "options, match",
    [
        ({"checkpoint_dir": "file.txt/ckpt"}, r"checkpoint_dir .*file.txt/ckpt is not writable"),
        ({"checkpoint_dir": "mine"}, r"checkpoint_dir .*mine is not empty \(notes.txt\)"),
        ({"log_path": "file.txt/log.jsonl"}, r"log_path .*file.txt is a file"),
        ({"log_path": "file.txt"}, r"file.txt exists and was not written by bespoke_jax"),
    ],
)
def test_train_checks_its_outputs_before_any_model_call(tmp_path, options, match):
    before = user_files(tmp_path, {"file.txt": b"x", "mine/notes.txt": b"y"})
    field = Counted()
    options = {key: str(tmp_path / value) for key, value in options.items()}
    with pytest.raises(ValueError, match=match):
        bj.train(bj.bns(2, init="euler"), field, jnp.ones((4, 3)), X0, **options)
    assert field.calls == 0
    assert snapshot(tmp_path, ["file.txt", "mine/notes.txt"]) == before


def test_unwritable_cache_warns_and_solves_without_it(tmp_path):
    (tmp_path / "file.txt").write_bytes(b"x")
    with pytest.warns(UserWarning, match=r"cache_dir .* not writable.*without the cache"):
        data = bj.cached_training_data(linear, X0, cache_dir=tmp_path / "file.txt" / "cache")
    np.testing.assert_allclose(np.asarray(data.x1), np.exp(-1.0) * np.asarray(X0), rtol=1e-4)
    assert (tmp_path / "file.txt").read_bytes() == b"x"


def test_ctrl_c_in_train_keeps_a_checkpoint_and_the_same_call_resumes(tmp_path):
    x0, val = jnp.linspace(-1.0, 1.0, 12).reshape(4, 3), X0
    data, val_data = bj.make_training_data(linear, x0), bj.make_training_data(linear, val)
    run = dict(
        steps=6, batch_size=2, eval_every=2, learning_rate=1e-2, train_data=data,
        val_data=val_data, progress=False, checkpoint_dir=str(tmp_path / "ckpt"),
        checkpoint_every=100,
    )  # fmt: skip
    family = bj.bns(2, init="euler")

    def ctrl_c(step, metrics):  # a real SIGINT, as Ctrl-C sends it, during step 4
        if step == 4:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        bj.train(family, linear, x0, val, on_eval=ctrl_c, **run)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir() if p.name.isdigit()) == ["4"]
    resumed = bj.train(family, linear, x0, val, **run)
    reference = bj.train(family, linear, x0, val, **{**run, "checkpoint_dir": None})
    assert params_sha256(resumed.params) == params_sha256(reference.params)
    assert resumed.history["step"] == reference.history["step"] == [0, 2, 4, 6]
