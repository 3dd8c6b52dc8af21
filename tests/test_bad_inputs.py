"""Bad inputs at the public entry points are refused with a message that names the fix."""

import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

import bespoke_jax as bj
from bespoke_jax.core.schedulers import scheduler_from_config

X0 = jnp.ones((2, 3))


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
        (lambda: bj.bst(0), r"nfe must be a positive integer"),
        (lambda: bj.bst(4, base="rk3"), r"valid bases: \('rk1', 'rk2'\)"),
        (lambda: bj.bst(5), r"Use nfe=4 or 6, or base='rk1'"),
        (lambda: bj.bst(4, loss_kind="l2"), r"valid: \('bound', 'direct'\)"),
        (lambda: bj.bns(4, init="rk5"), r"valid names: \('euler'"),
        (lambda: bj.bns(3, init="midpoint"), r"midpoint cannot spend nfe=3"),
        (lambda: bj.bns(4, sigma0=0.0, scheduler=bj.cond_ot()), r"sigma0 must be positive"),
        (lambda: bj.bns(4, sigma0=2.0), r"sigma0=2.0 needs the model's `scheduler`"),
        (lambda: bj.bns(4, init="unipc"), r"init='unipc' needs the model's `scheduler`"),
        (lambda: bj.family_from_config({"name": "dpm"}), r"known families: \['bns', 'bst'\]"),
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
        (lambda: bj.pretrained("mnist"), r"valid names: \['checkerboard', 'digits'\]"),
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
            r"x0_train is empty: give at least one noise sample",
        ),
        (
            lambda: bj.train(bj.bst(2), linear, jnp.ones((4, 3)), X0, steps=0),
            r"must be positive",
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
    with pytest.raises(ValueError, match=r"version 99; this bespoke_jax .* reads .* version 1"):
        bj.load_solver(path)


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
