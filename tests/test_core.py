"""Schedulers, model-output conversions, the Gaussian mixture, scale-time transforms, metrics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bespoke_jax as bj
from bespoke_jax.core.outputs import PREDICTIONS, data_prediction
from bespoke_jax.core.schedulers import VE, Scaled, Truncated, scheduler_from_config
from bespoke_jax.core.transforms import ScaleTime

SCHEDULERS = {
    "cond_ot": bj.cond_ot(),
    "cosine": bj.cosine(),
    "vp": bj.vp(),
    "ve": VE(80.0),
    "scaled": Scaled(bj.cond_ot(), 5.0),
    "ddpm": bj.ddpm("squaredcos_cap_v2", num_train_timesteps=100),
    "truncated": Truncated(bj.cosine(), 0.01, 0.98),
}
PATHS = ["cond_ot", "cosine", "vp"]  # Gaussian paths from noise (alpha_0 ~ 0)
INTERIOR = (0.05, 0.3, 0.5, 0.7, 0.95)


@pytest.fixture(scope="module")
def mixture():
    return bj.GaussianMixture.random(jax.random.PRNGKey(0), 5, 6, std=0.2)


@pytest.fixture(scope="module")
def x():
    return jax.random.normal(jax.random.PRNGKey(1), (4, 6))


def close(a, b, tol=1e-4):
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


# ---------------------------------------------------------------------------------------------
# Schedulers


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_snr_inverse_round_trip(name):
    sched = SCHEDULERS[name]
    t = jnp.array(INTERIOR)
    close(sched.snr_inverse(sched.snr(t)), t, 2e-5)
    close(sched.snr_inverse_ratio(jnp.float32(1.0), jnp.float32(0.0)), 1.0, 1e-6)  # finite at t = 1
    assert bool(jnp.all(jnp.diff(sched.snr(t)) > 0))


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_derivatives_match_finite_differences(name):
    sched = SCHEDULERS[name]
    with jax.enable_x64(True):
        t, eps = jnp.array(INTERIOR, dtype=jnp.float64), 1e-6
        for f, df in [(sched.alpha, sched.d_alpha), (sched.sigma, sched.d_sigma)]:
            np.testing.assert_allclose(df(t), (f(t + eps) - f(t - eps)) / (2 * eps), atol=1e-6)


@pytest.mark.parametrize("name", PATHS)
def test_end_points_and_log_snr(name):
    sched = SCHEDULERS[name]
    ends = jnp.array([0.0, 1.0])
    assert sched.alpha(ends)[1] == 1.0 and sched.sigma(ends)[1] == 0.0
    assert sched.log_snr(ends)[1] == jnp.inf
    if name == "vp":
        close(sched.alpha(ends)[0], np.exp(-(20.0 - 0.1) / 4 - 0.1 / 2), 1e-6)
    else:
        assert sched.alpha(ends)[0] == 0.0 and sched.sigma(ends)[0] == 1.0
        assert sched.log_snr(ends)[0] == -jnp.inf
    t = jnp.array(INTERIOR)
    close(sched.log_snr(t), jnp.log(sched.snr(t)), 1e-5)
    if name != "cond_ot":  # variance preserving
        close(jnp.square(sched.alpha(t)) + jnp.square(sched.sigma(t)), 1.0, 1e-6)


def test_scheduler_config_round_trip_and_validation():
    for sched in SCHEDULERS.values():
        assert scheduler_from_config(sched.to_config()) == sched
    with pytest.raises(ValueError, match="beta_min"):
        bj.vp(beta_min=1.0, beta_max=0.5)
    with pytest.raises(ValueError, match="Unknown scheduler"):
        scheduler_from_config({"name": "linear"})


# ---------------------------------------------------------------------------------------------
# Model outputs and the Gaussian mixture


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("name", [*PATHS, "ddpm"])
def test_to_velocity_is_exact_on_the_mixture(name, prediction, mixture, x):
    """The converted field is the mixture's exact velocity on the field's path (the model's own,
    or its truncation where the conversion is singular at an end)."""
    sched = SCHEDULERS[name]
    u = bj.to_velocity(mixture.prediction(sched, prediction), sched, prediction)
    for t in (0.1, 0.5, 0.9):
        close(u(jnp.float32(t), x, None), mixture.velocity(u.scheduler)(jnp.float32(t), x, None))


@pytest.mark.parametrize("name", PATHS)
def test_predictions_are_consistent(name, mixture, x):
    """``x = alpha x1_hat + sigma eps_hat``, ``v = alpha eps - sigma x1`` and the data prediction
    read off the velocity is the mixture's posterior mean."""
    sched = SCHEDULERS[name]
    u = mixture.velocity(sched)
    for t in map(jnp.float32, (0.1, 0.5, 0.9)):
        x1, eps, v = (mixture.prediction(sched, p)(t, x) for p in ("x1", "eps", "v"))
        close(sched.alpha(t) * x1 + sched.sigma(t) * eps, x)
        close(v, sched.alpha(t) * eps - sched.sigma(t) * x1)
        close(data_prediction(u, sched)(t, x, u(t, x, None)), x1)


@pytest.mark.parametrize("name", PATHS)
def test_single_gaussian_flow_is_exact(name):
    """For one component the flow is ``x(t) = alpha_t mu + sqrt(v(t)) z``: ``dx/dt = u_t(x(t))``."""
    sched = SCHEDULERS[name]
    mu, std = jnp.array([[0.3, -0.5, 0.8]]), 0.4
    gaussian = bj.GaussianMixture(mu, jnp.array([std]), jnp.array([1.0]))
    z = jax.random.normal(jax.random.PRNGKey(2), (5, 3))
    path = lambda t: (
        sched.alpha(t) * mu + jnp.sqrt(sched.alpha(t) ** 2 * std**2 + sched.sigma(t) ** 2) * z
    )
    for t in map(jnp.float32, (0.1, 0.5, 0.9)):
        x_t, dx_dt = jax.jvp(path, (t,), (jnp.ones_like(t),))
        close(gaussian.velocity(sched)(t, x_t, None), dx_dt)


def test_mixture_and_conversion_errors(mixture):
    with pytest.raises(ValueError, match="shape"):
        bj.GaussianMixture(jnp.zeros((3, 2)), jnp.ones(2), jnp.ones(3))
    with pytest.raises(ValueError, match="means"):
        bj.GaussianMixture(jnp.zeros(3), jnp.ones(3), jnp.ones(3))
    with pytest.raises(ValueError, match="prediction"):
        mixture.prediction(bj.cond_ot(), "score")
    with pytest.raises(ValueError, match="prediction"):
        bj.to_velocity(mixture.prediction(bj.cond_ot(), "x1"), bj.cond_ot(), "score")
    samples = mixture.sample(jax.random.PRNGKey(3), 100)
    assert samples.shape == (100, 6) and float(jnp.abs(samples).max()) < 1.5


# ---------------------------------------------------------------------------------------------
# Scale-time transforms, scheduler changes, preconditioning


def test_scale_time_formula(mixture, x):
    """``ubar_r(x) = (s'/s) x + t' s u_{t(r)}(x / s)`` for ``t = r^2``, ``s = 1 + r``."""
    u = mixture.velocity(bj.cond_ot())
    ubar = bj.scale_time(u, ScaleTime(t=lambda r: r**2, s=lambda r: 1.0 + r))
    for r in map(jnp.float32, (0.0, 0.4, 1.0)):
        expected = x / (1.0 + r) + 2.0 * r * (1.0 + r) * u(r**2, x / (1.0 + r), None)
        close(ubar(r, x, None), expected)


@pytest.mark.parametrize(
    ("source", "target"), [("cond_ot", "cosine"), ("cosine", "vp"), ("cond_ot", "ve")]
)
def test_scheduler_change_gives_the_target_field(source, target, mixture, x):
    """Theorem 2.3: the changed field is the target scheduler's closed-form field, ends included."""
    source, target = SCHEDULERS[source], SCHEDULERS[target]
    ubar, transform = bj.scheduler_change(mixture.velocity(source), source, target)
    rs = (0.0, 0.3, 0.7, 1.0) if target.name != "vp" else (0.3, 0.7)  # the VP field is nan at t = 1
    for r in map(jnp.float32, rs):
        close(ubar(r, x, None), mixture.velocity(target)(r, x, None))
    close(transform.t(jnp.float32(1.0)), 1.0, 1e-6)
    close(transform.s(jnp.float32(1.0)), 1.0, 1e-6)


@pytest.mark.parametrize("sigma0", [0.5, 5.0])
def test_precondition_closed_form_for_cond_ot(sigma0, mixture, x):
    u = mixture.velocity(bj.cond_ot())
    ubar, transform = bj.precondition(u, bj.cond_ot(), sigma0)
    reference = mixture.velocity(Scaled(bj.cond_ot(), sigma0))
    for r in map(jnp.float32, (0.0, 0.3, 0.8, 1.0)):
        s, ds = sigma0 * (1 - r) + r, 1.0 - sigma0
        t, dt = r / s, sigma0 / s**2
        close(
            [transform.t(r), transform.s(r), transform.dt(r), transform.ds(r)], [t, s, dt, ds], 1e-5
        )
        close(ubar(r, x, None), (ds / s) * x + dt * s * u(t, x / s, None))
        close(ubar(r, x, None), reference(r, x, None))
    with pytest.raises(ValueError, match="sigma0"):
        bj.precondition(u, bj.cond_ot(), 0.0)


def test_psnr_and_rmse():
    x = jax.random.uniform(jax.random.PRNGKey(4), (3, 8, 8), minval=-1.0, maxval=1.0)
    y = x + 0.02
    close(bj.rmse(x, y), 0.02, 1e-5)
    close(bj.psnr(x, y), 40.0, 1e-3)  # 10 log10(2^2 / 0.02^2)
    close(bj.psnr(x, y, data_range=1.0), 40.0 - 20.0 * np.log10(2.0), 1e-3)
