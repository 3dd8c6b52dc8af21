"""Learned grids: init is the baseline, valid grids by construction, exact NFE, training."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bespoke_jax as bj
from bespoke_jax.core.metrics import log_mse
from bespoke_jax.solvers import SOLVERS, SPECS

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
    family = bj.learned_grid(6, solver="unipc", scheduler=SCHEDULER)
    params = {"grid": 3.0 * jax.random.normal(jax.random.key(2), (6,))}
    grid = np.asarray(family.coefficients(params)["grid"])
    assert grid[0] == 0.0 and grid[-1] == 1.0 and np.all(np.diff(grid) > 0)
    times = []

    def counting(t, x, args):
        times.append(float(t))
        return -x

    with jax.disable_jit():  # lax.scan runs as a Python loop: one entry per call
        family.sample(params, counting, jnp.ones((2, 8)))
    # UniPC never evaluates the data end t = 1: its calls are at the first six grid points.
    np.testing.assert_allclose(times, grid[:-1], rtol=1e-6)


@pytest.fixture(scope="module")
def trained(mixture):
    u = mixture.velocity(SCHEDULER)
    family = bj.learned_grid(4, solver="dpm_solver_pp", scheduler=SCHEDULER)
    x0_train = jax.random.normal(jax.random.key(4), (64, 8))
    x0_val = jax.random.normal(jax.random.key(5), (64, 8))
    result = bj.train(family, u, x0_train, x0_val, steps=150, eval_every=50, progress=False)
    return family, u, result


def test_training_beats_the_default_grid(trained):
    family, u, result = trained
    # DPM-Solver++(2M) at NFE 4 on a uniform CondOT grid wastes its steps near the data; the
    # MATH.md prototype gained ~29 dB at NFE 8. A few Adam steps must gain well over rounding.
    assert result.history["step"][0] == 0
    assert result.best_val_psnr > result.history["val_psnr"][0] + 3.0
    data = result.train_data
    batch = bj.TrainingData(data.x0[:8], data.x1[:8])
    value, grads = jax.value_and_grad(lambda p: family.loss(p, u, batch))(result.params)
    assert np.isfinite(float(value)) and bool(jnp.all(jnp.isfinite(grads["grid"])))
    x1 = family.sample(result.params, u, batch.x0)
    np.testing.assert_allclose(float(value), float(log_mse(x1, batch.x1)))


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
