"""BNS: init reproduces every baseline, exact NFE, finite gradients, training, conditioning."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bespoke_jax as bj
from bespoke_jax.core.schedulers import Scaled
from bespoke_jax.solvers import NAMES, SOLVERS, SPECS

SCHEDULER = bj.cond_ot()


@pytest.fixture(scope="module")
def mixture():
    return bj.GaussianMixture.random(jax.random.key(0), num_components=4, dim=8, std=0.2)


@pytest.mark.parametrize("sigma0", [1.0, 3.0])
@pytest.mark.parametrize("name", NAMES)
def test_init_reproduces_source_solver(mixture, name, sigma0):
    # Both sides are the same linear combination of x0 and the same field values, summed in
    # another order: in float64 they agree to rounding (~1e-16) amplified by the field's
    # Lipschitz constant over the steps and by EDM's sigma_max = 80 start, far below 1e-10.
    nfe = SPECS[name].rule.nfe(2)
    with jax.enable_x64(True):
        u = mixture.velocity(SCHEDULER)
        x0 = jax.random.normal(jax.random.key(1), (3, 8), dtype=jnp.float64)
        family = bj.bns(nfe, init=name, sigma0=sigma0, scheduler=SCHEDULER)
        ubar, transform = bj.precondition(u, SCHEDULER, sigma0)
        target = Scaled(SCHEDULER, sigma0)

        @jax.jit
        def both(x0):
            ref = SOLVERS[name](ubar, transform.s(0.0) * x0, nfe=nfe, scheduler=target)
            return family.sample(family.init(), u, x0), ref / transform.s(1.0)

        ours, ref = both(x0)
        assert ours.dtype == jnp.float64
        assert np.all(np.isfinite(ours)) and np.all(np.isfinite(ref))
        assert float(jnp.max(jnp.abs(ours - ref))) < 1e-10


def smooth_field(t, x, args=None):
    """A closed-form nonlinear field, finite on all of ``[0, 1]`` under any scheduler.

    (The mixture's own VP velocity is NaN at t = 1, where VP's sigma' is infinite.)
    """
    return jnp.cos(2.0 * t) * jnp.tanh(x[:, ::-1]) - x + t


OTHER_SCHEDULERS = {"cosine": bj.cosine(), "vp": bj.vp()}
# Every source under every scheduler; preconditioned too for a generic and the scheduler-aware
# sources. (Preconditioned VP is NaN at r = 1, where heun and rk4 evaluate the field.)
OTHER_CASES = [(name, scheduler, 1.0) for name in NAMES for scheduler in OTHER_SCHEDULERS] + [
    (name, scheduler, 2.0)
    for name in ("midpoint", "ddim", "dpm_solver_pp", "unipc", "edm")
    for scheduler in OTHER_SCHEDULERS
]


@pytest.mark.parametrize(("name", "scheduler", "sigma0"), OTHER_CASES)
def test_init_reproduces_source_under_other_schedulers(name, scheduler, sigma0):
    """Away from CondOT the weights ``a_i`` of ``x0`` differ between steps (exponential
    integrators, EDM, preconditioning), so ``init()`` must also place them at the right step.

    In float64 with the rounding argument of the CondOT test; three steps, so the multistep
    solvers use their history. Eagerly: the operations are mostly those already run to read the
    coefficients off the source, cheaper than compiling two programs per case.
    """
    scheduler = OTHER_SCHEDULERS[scheduler]
    nfe = SPECS[name].rule.nfe(3)
    with jax.enable_x64(True), jax.disable_jit():
        x0 = jax.random.normal(jax.random.key(1), (3, 8), dtype=jnp.float64)
        family = bj.bns(nfe, init=name, sigma0=sigma0, scheduler=scheduler)
        ours = family.sample(family.init(), smooth_field, x0)
        if sigma0 == 1.0:
            ref = SOLVERS[name](smooth_field, x0, nfe=nfe, scheduler=scheduler)
        else:
            ubar, transform = bj.precondition(smooth_field, scheduler, sigma0)
            target = Scaled(scheduler, sigma0)
            ref = SOLVERS[name](ubar, transform.s(0.0) * x0, nfe=nfe, scheduler=target)
            ref = ref / transform.s(1.0)
    assert ours.dtype == jnp.float64
    assert np.all(np.isfinite(ours)) and np.all(np.isfinite(ref))
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-10)


def test_init_reproduces_solver_without_preconditioning_in_float32(mixture):
    u = mixture.velocity(SCHEDULER)
    x0 = jax.random.normal(jax.random.key(1), (3, 8))
    family = bj.bns(6, init="heun")
    ours = family.sample(family.init(), u, x0)
    ref = SOLVERS["heun"](u, x0, nfe=6)
    # float32 rounding (eps ~ 1.2e-7) of O(1) values, amplified as in the float64 test.
    assert np.all(np.isfinite(ours))
    assert float(jnp.max(jnp.abs(ours - ref))) < 1e-5


@pytest.mark.parametrize("name", ["heun", "edm"])
def test_sample_spends_exactly_nfe(name):
    nfe = SPECS[name].rule.nfe(2)
    family = bj.bns(nfe, init=name, scheduler=SCHEDULER)
    times = []

    def counting(t, x, args):
        times.append(float(t))
        return t - x

    with jax.disable_jit():  # lax.scan runs as a Python loop: one entry per call
        family.sample(family.init(), counting, jnp.ones((2, 8)))
    assert len(times) == nfe
    np.testing.assert_allclose(times, family.initial.ts, atol=1e-6)


@pytest.mark.parametrize("nfe", [1, 4, 7])
def test_num_params(nfe):
    family = bj.bns(nfe, init="euler")
    n = nfe
    # The paper's n (n + 5) / 2 + 1 plus a_0, the scale of the first evaluation point.
    assert family.num_params == n * (n + 5) // 2 + 2
    params = family.init()
    free = params["grid"].size + params["a"].size + n * (n + 1) // 2
    assert family.num_params == free
    assert family.save_ts is None


def coefficients(family, params):
    """``(ts, a, b)`` of ``params``: the family's parameter-to-coefficient map."""
    c = family.coefficients(params)
    return c["grid"], c["a"], c["b"]


def test_coefficients_in_closed_form():
    """docs/bns.md#the-parameters by hand: Euler at n = 2 (``h = 1/2``) has ``ts = (0, 1/2)``,
    ``a = 1``, ``b = [[1/2, 0], [1/2, 1/2]]``; the grid weights start at
    ``w = (0, 1/sqrt 2, 1/sqrt 2)`` (``t_0 = 0`` is the float floor, below float32 resolution here).

    ``p_grid = (1, 1, 0)``: ``w = w_init + sqrt(h) p = (1/sqrt 2, sqrt 2, 1/sqrt 2)``,
    ``d = w^2 = (1/2, 2, 1/2)``, ``ts = (1/2, 5/2) / 3``. ``a = 1 + h p_a``, and
    ``b = b_init + h p_b`` on and below the diagonal only.
    """
    family = bj.bns(2, init="euler")
    params = {
        "grid": jnp.array([1.0, 1.0, 0.0]),
        "a": jnp.array([2.0, -1.0, 4.0]),
        "b": jnp.array([[2.0, 7.0], [4.0, -2.0]]),
    }
    ts, a, b = coefficients(family, params)
    np.testing.assert_allclose(ts, [1 / 6, 5 / 6], rtol=1e-6)
    np.testing.assert_allclose(a, [2.0, 0.5, 3.0], rtol=1e-6)
    np.testing.assert_allclose(b, [[1.5, 0.0], [2.5, -0.5]], rtol=1e-6)


def test_masked_upper_triangle_is_inert(mixture):
    """Parameters above the diagonal of ``b`` reach neither the coefficients nor the samples."""
    u = mixture.velocity(SCHEDULER)
    family = bj.bns(4, init="euler")
    keys = jax.random.split(jax.random.key(2), 3)
    params = {
        name: 0.3 * jax.random.normal(key, leaf.shape)
        for (name, leaf), key in zip(family.init().items(), keys, strict=True)
    }
    upper = params | {"b": params["b"] + jnp.triu(jnp.ones((4, 4)), k=1)}
    for got, want in zip(coefficients(family, upper), coefficients(family, params), strict=True):
        np.testing.assert_array_equal(got, want)
    assert np.all(np.triu(coefficients(family, upper)[2], k=1) == 0)
    x0 = jax.random.normal(jax.random.key(3), (2, 8))
    sample = jax.jit(lambda params: family.sample(params, u, x0))
    np.testing.assert_array_equal(sample(upper), sample(params))


def test_grid_stays_valid_and_ties_can_open():
    family = bj.bns(4, init="heun")  # times 0, 0.5, 0.5, 1: two ties
    ts = family.coefficients(family.init())["grid"]
    chex.assert_trees_all_close(ts, jnp.asarray([0.0, 0.5, 0.5, 1.0]), atol=1e-7)
    params = family.init()
    params = params | {"grid": jax.random.normal(jax.random.key(3), (5,))}
    ts = family.coefficients(params)["grid"]
    assert np.all(np.diff(ts) >= 0) and ts[0] >= 0 and ts[-1] <= 1
    # The gradient of a tied time with respect to its (floor) weight is not zero.
    grad = jax.grad(lambda p: jnp.diff(family.coefficients(p)["grid"])[1])(family.init())
    assert float(grad["grid"][2]) > 0


@pytest.fixture(scope="module")
def trained(mixture):
    u = mixture.velocity(SCHEDULER)
    family = bj.bns(4, init="euler")
    x0_train = jax.random.normal(jax.random.key(4), (64, 8))
    x0_val = jax.random.normal(jax.random.key(5), (64, 8))
    result = bj.train(
        family,
        u,
        x0_train,
        x0_val,
        steps=300,
        eval_every=100,
        progress=False,
        optimizer=family.default_optimizer(300),
    )
    return family, u, result


def test_loss_gradients_finite(trained):
    family, u, result = trained
    data = result.train_data
    batch = bj.TrainingData(data.x0[:8], data.x1[:8])
    value_and_grad = jax.jit(jax.value_and_grad(lambda p: family.loss(p, u, batch)))
    for params in (family.init(), result.params):
        value, grads = value_and_grad(params)
        assert np.isfinite(float(value))
        assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
        assert float(jnp.sum(jnp.abs(grads["b"]))) > 0


def test_loss_is_mean_log_squared_error(trained):
    family, u, result = trained
    data = result.train_data
    batch = bj.TrainingData(data.x0[:8], data.x1[:8])
    x1 = family.sample(family.init(), u, batch.x0)
    mse = jnp.mean(jnp.square(x1 - batch.x1), axis=-1)
    # PSNR = 10 log10(R^2 / mse): minimising E log mse maximises mean PSNR.
    expected = jnp.mean(jnp.log(mse))
    np.testing.assert_allclose(family.loss(family.init(), u, batch), expected, rtol=1e-6)


def test_training_improves_validation_psnr(trained):
    family, u, result = trained
    init_psnr = result.history["val_psnr"][0]
    assert result.best_step > 0
    assert result.best_val_psnr > init_psnr + 3.0  # the mean squared error halved at least
    assert float(jnp.max(jnp.abs(result.params["grid"]))) > 0  # the grid moved too
    x1 = family.sample(result.params, u, result.val_data.x0)
    np.testing.assert_allclose(bj.psnr(x1, result.val_data.x1), result.best_val_psnr, rtol=1e-4)


def test_class_conditional_field_follows_labels():
    # One Gaussian per class: under CondOT x(1) = mu_label + s x0 exactly.
    means = jnp.stack([jnp.full((4,), 0.5), jnp.full((4,), -0.5)])
    std = 0.1
    fields = [
        bj.GaussianMixture(m[None], jnp.array([std]), jnp.array([1.0])).velocity(SCHEDULER)
        for m in means
    ]

    def u(t, x, args):
        return jnp.where(args["label"][:, None] == 0, fields[0](t, x), fields[1](t, x))

    x0_train = jax.random.normal(jax.random.key(6), (16, 4))
    x0_val = jax.random.normal(jax.random.key(7), (16, 4))
    labels = {"label": jnp.arange(16) % 2}
    family = bj.bns(4, init="euler")
    result = bj.train(
        family,
        u,
        x0_train,
        x0_val,
        args=labels,
        val_args=labels,
        steps=100,
        batch_size=8,
        progress=False,
        optimizer=family.default_optimizer(100),
    )
    x0 = jax.random.normal(jax.random.key(8), (6, 4))
    sample = jax.jit(lambda params, label: family.sample(params, u, x0, {"label": label}))
    for label in (jnp.zeros(6, int), jnp.array([1, 0, 1, 1, 0, 1])):
        exact = means[label] + std * x0
        trained = jnp.abs(sample(result.params, label) - exact)
        # The class means are 1 apart in every coordinate: an error below 0.5 everywhere puts
        # each sample on its own label's side; training on labelled args reduced the error.
        assert float(jnp.max(trained)) < 0.5
        assert float(jnp.mean(trained)) < float(
            jnp.mean(jnp.abs(sample(family.init(), label) - exact))
        )


def test_unknown_init_lists_valid_names():
    with pytest.raises(ValueError, match="valid names.*midpoint"):
        bj.bns(4, init="adams")


@pytest.mark.parametrize(("name", "nfe"), [("midpoint", 3), ("rk4", 6), ("edm", 4), ("euler", 0)])
def test_nfe_the_source_cannot_spend(name, nfe):
    with pytest.raises(ValueError, match=f"{name} cannot spend nfe={nfe}"):
        bj.bns(nfe, init=name, scheduler=SCHEDULER)


@pytest.mark.parametrize("sigma0", [0.0, -1.0, float("inf")])
def test_sigma0_must_be_positive_and_finite(sigma0):
    with pytest.raises(ValueError, match="sigma0 must be positive and finite"):
        bj.bns(4, sigma0=sigma0, scheduler=SCHEDULER)


@pytest.mark.parametrize(("init", "sigma0"), [("dpm_solver_pp", 1.0), ("midpoint", 2.0)])
def test_missing_scheduler_is_named(init, sigma0):
    with pytest.raises(ValueError, match="needs the model's `scheduler`"):
        bj.bns(4, init=init, sigma0=sigma0)


def test_config_round_trip():
    family = bj.bns(5, init="euler", sigma0=2.0, scheduler=SCHEDULER)
    again = bj.family_from_config({"name": family.name, **family.config()})
    assert again == family
    np.testing.assert_array_equal(again.initial.b, family.initial.b)


@pytest.mark.parametrize("steps", [1, 5, 19, 40])
def test_default_schedules_step_from_the_first_step(steps):
    """Warm-up ``steps // 20`` never leaves a zero-length decay, and a short run still moves."""
    family = bj.bns(4, scheduler=SCHEDULER)
    rates = [float(family.default_learning_rate(steps)(i)) for i in range(steps)]
    assert np.all(np.isfinite(rates)) and max(rates[:2]) > 0
    bst_rates = [float(bj.bst(4).default_learning_rate(steps)(i)) for i in range(steps)]
    assert np.all(np.isfinite(bst_rates)) and max(bst_rates[:2]) > 0
    params = family.init()
    optimizer = family.default_optimizer(steps)
    with jax.numpy_dtype_promotion("standard"):  # Optax mixes int step counts and floats
        updates, _ = optimizer.update(
            jax.tree.map(jnp.ones_like, params), optimizer.init(params), params
        )
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(updates))
