"""Learned grids: init is the baseline, valid grids by construction, exact NFE, training."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from click.testing import CliRunner

import bespoke_jax as bj
from bespoke_jax import export
from bespoke_jax.app.cli import main
from bespoke_jax.app.jobs import make_family
from bespoke_jax.core.outputs import data_prediction
from bespoke_jax.solvers import SOLVERS, SPECS
from tests.test_storage import _perturbed

SCHEDULER = bj.cond_ot()


@pytest.fixture(scope="module")
def mixture():
    return bj.GaussianMixture.random(jax.random.key(0), num_components=4, dim=8, std=0.2)


@pytest.mark.parametrize(
    ("name", "init_grid", "options"),
    [
        ("euler", None, {}),
        ("midpoint", "logsnr", {}),
        ("dpm_solver_pp", None, {"order": 3}),
        ("unipc", "logsnr", {}),
        ("edm", None, {}),
    ],
)
def test_init_reproduces_the_solver_on_its_grid(mixture, name, init_grid, options):
    # The grid goes through log(diff) -> softmax -> cumsum: in float64 a rounding of ~1e-16 per
    # point, amplified by the field's Lipschitz constant and EDM's sigma_max = 80 start.
    nfe = SPECS[name].rule.nfe(3)
    with jax.enable_x64(True):
        u = mixture.velocity(SCHEDULER)
        x0 = jax.random.normal(jax.random.key(1), (3, 8), dtype=jnp.float64)
        family = bj.learned_grid(
            nfe, solver=name, scheduler=SCHEDULER, init_grid=init_grid, **options
        )
        grid = init_grid or SPECS[name].default_grid
        ours = family.sample(family.init(), u, x0)
        ref = SOLVERS[name](u, x0, nfe=nfe, scheduler=SCHEDULER, grid=grid, **options)
        assert ours.dtype == jnp.float64
        assert float(jnp.max(jnp.abs(ours - ref))) < 1e-10
    assert family.num_params == SPECS[name].rule.steps(nfe) <= nfe + 1


def test_any_parameters_give_a_valid_grid_and_exact_nfe():
    family = bj.learned_grid(6, solver="euler")
    params = {"grid": 3.0 * jax.random.normal(jax.random.key(2), (6,))}
    grid = np.asarray(family.coefficients(params)["grid"])
    assert grid[0] == 0.0 and grid[-1] == 1.0 and np.all(np.diff(grid) > 0)
    times = []

    def counting(t, x, args):
        times.append(float(t))
        return -x

    with jax.disable_jit():  # lax.scan runs as a Python loop: one entry per call
        family.sample(params, counting, jnp.ones((2, 8)))
    # Euler never evaluates the data end t = 1: its calls are at the first six grid points.
    np.testing.assert_allclose(times, grid[:-1], rtol=1e-6)


@pytest.fixture(scope="module")
def trained(mixture):
    u = mixture.velocity(SCHEDULER)
    family = bj.learned_grid(4, solver="dpm_solver_pp", scheduler=SCHEDULER)
    x0_train = jax.random.normal(jax.random.key(4), (64, 8))
    x0_val = jax.random.normal(jax.random.key(5), (64, 8))
    result = bj.train(family, u, x0_train, x0_val, steps=100, eval_every=50, progress=False)
    return family, u, result


def test_training_beats_the_default_grid(trained):
    family, u, result = trained
    # DPM-Solver++(2M) at NFE 4 on a uniform CondOT grid wastes its steps near the data; the
    # A prototype gained ~29 dB at NFE 8. A few Adam steps must gain well over rounding.
    assert result.history["step"][0] == 0
    assert result.best_val_psnr > result.history["val_psnr"][0] + 3.0
    data = result.train_data
    batch = bj.TrainingData(data.x0[:8], data.x1[:8])
    value, grads = jax.jit(jax.value_and_grad(lambda p: family.loss(p, u, batch)))(result.params)
    assert np.isfinite(float(value)) and bool(jnp.all(jnp.isfinite(grads["grid"])))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"solver": "dpm"}, "Unknown solver 'dpm'"),
        ({"solver": "midpoint", "nfe": 3}, "midpoint cannot spend nfe=3"),
        ({"solver": "unipc", "scheduler": None}, "unipc needs the model's `scheduler`"),
        ({"init_grid": "karras"}, "Unknown init_grid 'karras'"),
        ({"solver": "euler", "scheduler": None, "init_grid": "logsnr"}, "needs the model's"),
        ({"order": 5}, "order=2 or order=3"),
        ({"solver": "euler", "order": 2}, "euler does not take {'order': 2}"),
    ],
)
def test_bad_input_is_refused_when_the_family_is_built(kwargs, match):
    kwargs = {"nfe": 4, "scheduler": SCHEDULER, **kwargs}
    with pytest.raises(ValueError, match=match):
        bj.learned_grid(kwargs.pop("nfe"), **kwargs)


def _numpy_field(u):
    return lambda t, x, args: np.asarray(u(jnp.float32(t), jnp.asarray(x, jnp.float32), args))


EXPORTED = {
    "bst-rk2": bj.bst(4),
    "bns": bj.bns(4, init="midpoint"),
    "bns-preconditioned": bj.bns(4, init="ddim", sigma0=2.0, scheduler=SCHEDULER),
    "grid-dpm": bj.learned_grid(4, scheduler=SCHEDULER),
    "grid-midpoint": bj.learned_grid(4, solver="midpoint"),
}


@pytest.mark.parametrize("name", EXPORTED)
def test_numpy_reference_sampler_runs_every_exported_family(mixture, name, tmp_path):
    # The export is the family's own linear map, read off in float64: the two agree to the
    # float32 rounding of family.sample (~1e-7 of O(1) values over 4 steps).
    family = EXPORTED[name]
    params = _perturbed(family)
    u = mixture.velocity(SCHEDULER)
    x0 = jax.random.normal(jax.random.key(6), (16, 8))
    path = bj.export_solver(tmp_path / "solver.json", family, params, {"scheduler": SCHEDULER})
    ours = export.sample(path, _numpy_field(u), np.asarray(x0))
    np.testing.assert_allclose(ours, family.sample(params, u, x0), atol=1e-5)


def _version_1(family, params) -> dict:
    """The record version 1 of export_solver wrote (BNS on the preconditioned field)."""
    record = {"format": export.EXPORT_FORMAT, "format_version": 1, "nfe": family.nfe}
    record["family"] = {"name": family.name, **family.config()}
    if family.name == "bst":
        c = family.coefficients(params)
        return record | {k: np.asarray(c[k]).tolist() for k in ("r", "t", "dt", "s", "ds")}
    c = family.coefficients(params)
    grid, a, b = (np.asarray(c[k]).tolist() for k in ("grid", "a", "b"))
    s_start = s_end = 1.0
    if family.sigma0 != 1.0:
        _, transform = bj.precondition(lambda t, x, args: x, family.scheduler, family.sigma0)
        s_start, s_end = float(transform.s(0.0)), float(transform.s(1.0))
    r = np.append(grid, 1.0).tolist()
    return (
        record
        | {"grid": grid, "a": a, "b": b, "sigma0": family.sigma0, "times": r}
        | {
            "s_start": s_start,
            "s_end": s_end,
        }
    )


@pytest.mark.parametrize("name", ["bst-rk2", "bns", "bns-preconditioned"])
def test_version_1_exports_are_still_read(mixture, name, tmp_path):
    family = EXPORTED[name]
    params = _perturbed(family, seed=1)
    path = tmp_path / "v1.json"
    path.write_text(json.dumps(_version_1(family, params)))
    record = export.read_export(path)
    assert record["format_version"] == export.EXPORT_VERSION
    u = mixture.velocity(SCHEDULER)
    x0 = jax.random.normal(jax.random.key(7), (16, 8))
    ours = export.sample(record, _numpy_field(u), np.asarray(x0))
    np.testing.assert_allclose(ours, family.sample(params, u, x0), atol=1e-5)


def test_unknown_export_versions_are_refused(tmp_path):
    path = tmp_path / "v9.json"
    path.write_text(json.dumps({"format": export.EXPORT_FORMAT, "format_version": 9}))
    with pytest.raises(ValueError, match="version 9.*upgrade bespoke_jax"):
        export.read_export(path)
    path.write_text("{}")
    with pytest.raises(ValueError, match="not an exported solver"):
        export.read_export(path)


def test_cli_builds_a_grid_family():
    family = make_family("grid", 6, init="unipc", scheduler=SCHEDULER)
    assert family == bj.learned_grid(6, solver="unipc", scheduler=SCHEDULER)
    with pytest.raises(ValueError, match="--sigma0"):
        make_family("grid", 6, sigma0=0.5, scheduler=SCHEDULER)


def _diffusers_run(scheduler, x, model):
    """diffusers' denoising loop: ``model(x_in, timestep, sigma)``, then ``scheduler.step``."""
    torch = pytest.importorskip("torch")
    x = torch.from_numpy(np.array(x)) * getattr(scheduler, "init_noise_sigma", 1.0)
    for timestep in scheduler.timesteps:  # flow matching has no noise scale nor input scaling
        scale = getattr(scheduler, "scale_model_input", lambda x, timestep: x)
        x_in = scale(x, timestep)
        sigma = float(scheduler.sigmas[scheduler.step_index or 0])
        out = torch.from_numpy(model(x_in.numpy(), float(timestep), sigma))
        x = scheduler.step(out, timestep, x).prev_sample
    return x.numpy()


@pytest.mark.parametrize("kind", ["flow", "diffusion"])
def test_diffusers_schedulers_run_the_exported_grid(mixture, kind, tmp_path):
    # Flow matching: FlowMatchEulerDiscreteScheduler on sigmas = 1 - t is Euler in t, with the
    # model's velocity dx/dsigma = -u and its time t = 1 - timestep / 1000. Diffusion (VP):
    # EulerDiscreteScheduler on sigma / alpha is Euler on x / alpha in sigma / alpha: DDIM, run
    # with the data prediction at t = snr^-1(1 / sigma). Same maps in float32: 1e-4.
    diffusers = pytest.importorskip("diffusers")
    scheduler = SCHEDULER if kind == "flow" else bj.vp()
    family = bj.learned_grid(4, solver="euler" if kind == "flow" else "ddim", scheduler=scheduler)
    params = _perturbed(family, seed=2)
    record = json.loads(bj.export_solver(tmp_path / "g.json", family, params).read_text())
    u = mixture.velocity(scheduler)
    x0 = np.asarray(jax.random.normal(jax.random.key(8), (16, 8)))
    if kind == "flow":
        peer = diffusers.FlowMatchEulerDiscreteScheduler(shift=1.0)
        peer.set_timesteps(sigmas=record["diffusers_flow_sigmas"])

        def model(x, timestep, sigma):
            return -np.asarray(u(jnp.float32(1.0 - timestep / 1000.0), jnp.asarray(x), None))
    else:
        peer = diffusers.EulerDiscreteScheduler(prediction_type="sample")
        peer.set_timesteps(sigmas=record["diffusers_sigmas"])
        x1_hat = data_prediction(u, scheduler)

        def model(x, timestep, sigma):
            t = scheduler.snr_inverse(jnp.float32(1.0 / sigma))
            return np.asarray(x1_hat(t, jnp.asarray(x), u(t, jnp.asarray(x), None)))

    ours = _diffusers_run(peer, x0, model)
    np.testing.assert_allclose(ours, family.sample(params, u, jnp.asarray(x0)), atol=1e-4)


def test_choose_sigma0_keeps_the_best_untrained_scale(mixture):
    u = mixture.velocity(SCHEDULER)
    x0 = jax.random.normal(jax.random.key(9), (32, 8))
    x1 = bj.ground_truth(u, x0).x1
    options = {"nfe": 4, "scheduler": SCHEDULER, "x1_val": x1, "candidates": (0.5, 1.0, 2.0)}
    choice = bj.choose_sigma0(u, x0, **options)
    assert set(choice.psnr) == {0.5, 1.0, 2.0}
    assert choice.psnr[choice.sigma0] == max(choice.psnr.values())
    # sigma0 = 1 is the source solver itself (midpoint): the same PSNR to float32 rounding.
    midpoint = float(bj.psnr(bj.solvers.midpoint(u, x0, nfe=4), x1))
    assert choice.psnr[1.0] == pytest.approx(midpoint, abs=1e-3)
    # Preconditioning moves the steps: the candidates differ by more than rounding.
    assert max(choice.psnr.values()) - min(choice.psnr.values()) > 0.1
    with pytest.raises(ValueError, match="positive finite"):
        bj.choose_sigma0(u, x0, nfe=4, scheduler=SCHEDULER, x1_val=x1, candidates=[0.0])
    # Briefly trained: the best validation PSNR over the steps, step 0 (untrained) included.
    x0_train = jax.random.normal(jax.random.key(10), (32, 8))
    options["candidates"] = (2.0,)  # one candidate: one more compiled training step
    trained = bj.choose_sigma0(u, x0, x0_train=x0_train, steps=20, **options)
    assert trained.sigma0 == 2.0 and trained.psnr[2.0] >= choice.psnr[2.0] - 1e-3
    with pytest.raises(ValueError, match="pass x0_train"):
        bj.choose_sigma0(u, x0, steps=20, **options)


TINY = f"{Path(__file__).parent / 'tiny_model.py'}:mixture"


def test_cli_chooses_sigma0(tmp_path):
    runner = CliRunner()
    common = ["--model", TINY, "--nfe", "4", "--quick"]
    auto = ["train", *common, "--sigma0", "auto", "--out", tmp_path / "b"]
    result = runner.invoke(main, [str(a) for a in auto], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    family, _, _ = bj.load_solver(tmp_path / "b")
    assert f"sigma0 auto: chose {family.sigma0:g}" in result.output
    bad = ["train", *common, "--sigma0", "big", "--out", tmp_path / "x"]
    result = runner.invoke(main, [str(a) for a in bad], catch_exceptions=False)
    assert result.exit_code != 0 and "--sigma0 must be a number or 'auto'" in result.output
