"""The models people have: DDPM schedules, truncated ends, network wrappers, bfloat16 networks."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bespoke_jax as bj
from bespoke_jax.core.outputs import PREDICTIONS
from bespoke_jax.core.schedulers import VE, Truncated
from bespoke_jax.solvers._exponential import _dpm_coefficients

SCHEDULERS = {"cond_ot": bj.cond_ot(), "cosine": bj.cosine(), "vp": bj.vp(), "ddpm": bj.ddpm()}
PAIRS = [(name, p) for name in SCHEDULERS for p in PREDICTIONS]


def reference_alphas_cumprod(schedule, beta_start, beta_end, n):
    """``alphas_cumprod`` written out as the diffusers schedulers define it, in float64."""
    if schedule == "linear":
        betas = np.linspace(beta_start, beta_end, n, dtype=np.float64)
    elif schedule == "scaled_linear":
        betas = np.linspace(np.sqrt(beta_start), np.sqrt(beta_end), n, dtype=np.float64) ** 2
    else:

        def alpha_bar(s):
            return np.cos((s + 0.008) / 1.008 * np.pi / 2) ** 2

        betas = np.array(
            [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)]
        )
    alphas = 1.0 - betas
    return np.array([np.prod(alphas[: k + 1]) for k in range(n)])


DDPMS = {
    "linear": (1e-4, 0.02, 1000),
    "scaled_linear": (0.00085, 0.012, 1000),
    "squaredcos_cap_v2": (1e-4, 0.02, 50),
}


@pytest.mark.parametrize("schedule", list(DDPMS))
def test_ddpm_matches_alphas_cumprod_at_the_timesteps(schedule):
    start, end, n = DDPMS[schedule]
    sched = bj.ddpm(schedule, start, end, n)
    abar = reference_alphas_cumprod(schedule, start, end, n)
    k = np.arange(n)
    t = jnp.asarray(1.0 - k / (n - 1), jnp.float32)
    np.testing.assert_allclose(sched.timestep(t), k, atol=1e-3)
    np.testing.assert_allclose(jnp.square(sched.alpha(t)), abar, rtol=2e-5, atol=1e-9)
    np.testing.assert_allclose(jnp.square(sched.sigma(t)), 1.0 - abar, rtol=2e-5, atol=1e-9)
    assert sched.sigma(jnp.float32(1.0)) == pytest.approx(np.sqrt(1.0 - abar[0]), rel=1e-5)


@pytest.mark.parametrize("schedule", list(DDPMS))
def test_ddpm_is_c1_and_monotone_across_knots(schedule):
    """``d lambda / d tau`` from both sides of interior knots agrees to O(epsilon), far inside
    the jump ``|delta_k - delta_{k-1}|`` a piecewise-linear interpolant would have there."""
    start, end, n = DDPMS[schedule]
    sched = bj.ddpm(schedule, start, end, n)
    lam = sched._lambda_of_tau
    slope = lambda tau: jax.jvp(lam, (tau,), (jnp.ones_like(tau),))[1]  # noqa: E731
    knots = np.arange(1, n - 1, max(1, n // 40), dtype=np.float32)
    eps = np.float32(1e-3)
    jump = np.abs(slope(jnp.asarray(knots + eps)) - slope(jnp.asarray(knots - eps)))
    lam_k = 0.5 * np.log(reference_alphas_cumprod(schedule, start, end, n))
    lam_k -= 0.5 * np.log1p(-np.exp(2 * lam_k))
    linear_jump = np.abs(np.diff(lam_k, 2))[knots.astype(int) - 1]
    assert np.all(jump <= 0.02 * linear_jump + 1e-5 * np.abs(np.diff(lam_k)).max())
    assert bool(jnp.all(jnp.diff(lam(jnp.linspace(0.0, n - 1.0, 5 * n))) < 0))


def test_ddpm_validation_and_export():
    with pytest.raises(ValueError, match="beta_schedule"):
        bj.ddpm("quadratic")
    with pytest.raises(ValueError, match="beta_start < beta_end"):
        bj.ddpm("linear", 0.02, 1e-4)
    with pytest.raises(ValueError, match="num_train_timesteps"):
        bj.ddpm(num_train_timesteps=2.5)
    assert "ddpm" in bj.__all__ and "wrap_diffusion" in bj.__all__


@pytest.fixture(scope="module")
def mixture():
    return bj.GaussianMixture.random(jax.random.PRNGKey(0), 4, 4, std=0.15)


@pytest.fixture(scope="module")
def pairs_field(mixture):
    """One field holding every (scheduler, prediction) pair and the two untruncated references
    (CondOT's flow, which has the end point of every path reaching the data, and DDPM's own);
    ``args`` (B,) picks each sample's field, so each solver compiles once for all pairs."""
    fields = [
        bj.to_velocity(mixture.prediction(SCHEDULERS[s], p), SCHEDULERS[s], p) for s, p in PAIRS
    ]
    fields += [mixture.velocity(bj.cond_ot()), mixture.velocity(bj.ddpm())]

    def u(t, x, which):
        def one(i, xi):
            return jax.lax.switch(
                i, [lambda t, y, f=f: f(t, y, None) for f in fields], t, xi[None]
            )[0]

        return jax.vmap(one)(which, x)

    return u, fields


@pytest.fixture(scope="module")
def pairs_noise():
    x0 = jax.random.normal(jax.random.PRNGKey(3), (2, 4))
    which = jnp.repeat(jnp.arange(len(PAIRS) + 2), 2)
    return jnp.tile(x0, (len(PAIRS) + 2, 1)), which


def test_every_pair_reaches_the_untruncated_end_point(pairs_field, pairs_noise):
    """Ground truth of every (scheduler, prediction) pair from standard normal noise is finite
    and within 35 dB (data range 1) of the untruncated flow's end point: the truncation error."""
    u, fields = pairs_field
    x0, which = pairs_noise
    x1 = bj.ground_truth(u, x0, args=which, rtol=1e-6, atol=1e-6, per_sample=False).x1
    x1 = x1.reshape(-1, 2, 4)
    cond_ot_end, ddpm_end = x1[-2], x1[-1]
    for i, (name, prediction) in enumerate(PAIRS):
        reference = ddpm_end if name == "ddpm" else cond_ot_end
        assert float(bj.psnr(x1[i], reference, data_range=1.0)) >= 35.0, (name, prediction)
    assert fields[PAIRS.index(("cosine", "eps"))].t_min == pytest.approx(
        (2 / np.pi) * np.arctan(1 / 80), rel=1e-5
    )


def test_every_pair_is_finite_at_the_ends(pairs_field):
    """Each pair's field, and the exponential integrators' coefficients on its path, are finite
    at the ends r = 0 and 1, where the untruncated conversions are 0/0 or infinite."""
    _, fields = pairs_field
    x = jax.random.normal(jax.random.PRNGKey(8), (2, 4))
    ends = jax.jit(lambda x: [[f(r, x) for r in (0.0, 1.0)] for f in fields[: len(PAIRS)]])(x)
    for (name, prediction), values in zip(PAIRS, ends, strict=True):
        assert bool(jnp.all(jnp.isfinite(jnp.stack(values)))), (name, prediction)
    ts = jnp.linspace(0.0, 1.0, 5)
    for scheduler in {f.scheduler for f in fields[: len(PAIRS)]}:
        a, coeffs = _dpm_coefficients(ts, scheduler, (1, 2, 2, 1))
        assert bool(jnp.all(jnp.isfinite(a)) & jnp.all(jnp.isfinite(coeffs))), scheduler


@pytest.mark.parametrize(("name", "prediction"), [("cosine", "eps"), ("vp", "x1"), ("ddpm", "eps")])
def test_every_solver_is_finite(name, prediction, mixture):
    """Every baseline, BNS and BST from standard normal noise on a noise-end truncation, a
    data-end truncation and DDPM's noise-level end: finite (the untruncated fields give NaN)."""
    sched = SCHEDULERS[name]
    u = bj.to_velocity(mixture.prediction(sched, prediction), sched, prediction)
    x0 = jax.random.normal(jax.random.PRNGKey(9), (2, 4))

    families = [(family, family.init()) for family in (bj.bns(4), bj.bst(4))]

    @jax.jit
    def solve_all(x0):
        out = {
            solver: bj.solvers.SOLVERS[solver](
                u, x0, nfe=5 if solver == "edm" else 4, scheduler=u.scheduler
            )
            for solver in bj.solvers.NAMES
        }
        for family, params in families:
            out[type(family).__name__] = family.sample(params, u, x0)
        return out

    for solver, x1 in solve_all(x0).items():
        assert bool(jnp.all(jnp.isfinite(x1))), solver


def test_truncated_field_is_the_closed_form_field_of_its_path(mixture):
    """The truncated eps field equals the mixture's exact velocity under the ``Truncated`` path
    (Theorem 2.3), starts from standard normal noise and ends at ``t_max``."""
    x = jax.random.normal(jax.random.PRNGKey(4), (3, 4))
    for name, prediction in (("cosine", "eps"), ("cond_ot", "x1"), ("vp", "v")):
        sched = SCHEDULERS[name]
        u = bj.to_velocity(mixture.prediction(sched, prediction), sched, prediction)
        assert isinstance(u.scheduler, Truncated) and 0.0 <= u.t_min < u.t_max <= 1.0
        for r in map(jnp.float32, (0.0, 0.4, 1.0)):
            np.testing.assert_allclose(
                u(r, x), mixture.velocity(u.scheduler)(r, x), rtol=2e-4, atol=2e-4
            )
        assert u.scheduler.sigma(jnp.float32(0.0)) == pytest.approx(float(sched.sigma(0.0)))
    assert bj.to_velocity(mixture.prediction(bj.cosine(), "v"), bj.cosine(), "v").t_min == 0.0
    np.testing.assert_array_equal(  # the solvers read the field's scheduler, refuse another one
        bj.solvers.ddim(u, x, nfe=2), bj.solvers.ddim(u, x, nfe=2, scheduler=u.scheduler)
    )
    with pytest.raises(ValueError, match="scheduler=u.scheduler"):
        bj.solvers.ddim(u, x, nfe=2, scheduler=bj.vp())


def test_solvers_name_a_nonfinite_field(mixture):
    """An untruncated eps field is NaN at t = 0 under cosine: the solver says where."""
    cosine = bj.cosine()
    eps = mixture.prediction(cosine, "eps")

    def raw(t, x, args=None):  # the conversion without truncation
        a, s = cosine.alpha(t), cosine.sigma(t)
        da, ds = cosine.d_alpha(t), cosine.d_sigma(t)
        return (da / a) * x + ((ds * a - s * da) / a) * eps(t, x)

    x0 = jax.random.normal(jax.random.PRNGKey(5), (2, 4))
    with pytest.raises(RuntimeError, match=r"euler: first at grid point 0 at t = 0\.0000"):
        bj.solvers.euler(raw, x0, nfe=3)
    late_nan = lambda t, x, args=None: jnp.where(t > 0.4, jnp.nan, 1.0) * x  # noqa: E731
    family = bj.bns(2, init="euler")
    with pytest.raises(RuntimeError, match=r"BNS sampling: first at t = 0\.40"):
        family.sample(family.init(), late_nan, x0)


def test_wrap_diffusion_and_wrap_edm_match_the_mixture(mixture):
    """Networks in the diffusion convention (t = 0 data, an integer-like timestep or an EDM
    noise level) built from the closed-form mixture give the package's own velocity."""
    x = jax.random.normal(jax.random.PRNGKey(6), (3, 4))
    ddpm = bj.ddpm()
    eps = mixture.prediction(ddpm, "eps")
    net = lambda x, k, scale: scale * eps(1.0 - k[0] / 999.0, x)  # noqa: E731
    u = bj.wrap_diffusion(net, ddpm, "eps")
    assert u.scheduler is ddpm
    for t in map(jnp.float32, (0.0, 0.5, 1.0)):
        np.testing.assert_allclose(
            u(t, x, (1.0,)), mixture.velocity(ddpm)(t, x), rtol=2e-4, atol=2e-4
        )
    cosine = bj.cosine()  # a continuous-time eps network takes s = 1 - t
    net = lambda x, s: mixture.prediction(cosine, "eps")(1.0 - s[0], x)  # noqa: E731
    u = bj.wrap_diffusion(net, cosine, "eps")
    r = jnp.float32(0.0)
    np.testing.assert_allclose(u(r, x), mixture.velocity(u.scheduler)(r, x), rtol=2e-4, atol=2e-4)
    ve = VE(80.0)
    denoiser = lambda x, sigma: mixture.prediction(ve, "x1")(1.0 - sigma[0] / 80.0, x)  # noqa: E731
    u = bj.wrap_edm(denoiser)
    assert u.scheduler.snr(jnp.float32(0.0)) == pytest.approx(1 / 80, rel=1e-4)
    assert u.scheduler.snr(jnp.float32(1.0)) == pytest.approx(1 / 0.002, rel=1e-3)
    for r in map(jnp.float32, (0.0, 0.5, 1.0)):
        np.testing.assert_allclose(
            u(r, x), mixture.velocity(u.scheduler)(r, x), rtol=5e-4, atol=5e-4
        )
    with pytest.raises(ValueError, match="tuple"):
        bj.wrap_diffusion(net, cosine, "eps")(r, x, jnp.ones(3))


def test_bfloat16_network_gives_float32_solves():
    """The shipped digits network run in bfloat16 (parameters and inputs cast, output bfloat16):
    every solver, ground truth, BNS/BST sampling and training keep float32 state and outputs,
    ground truth within 40 dB (data range 2) of the float32 network's (measured: 53-54 dB)."""
    f32, b16 = bj.pretrained("digits"), bj.pretrained("digits", dtype=jnp.bfloat16)
    x0 = jax.random.normal(jax.random.PRNGKey(7), (4, 8, 8))
    a32, a16 = f32.args(jnp.arange(4), 2.0), b16.args(jnp.arange(4), 2.0)
    assert b16.velocity(0.5, x0, a16).dtype == jnp.bfloat16
    gt32 = bj.ground_truth(f32.velocity, x0, args=a32, rtol=1e-3, atol=1e-3)
    gt16 = bj.ground_truth(b16.velocity, x0, args=a16, rtol=1e-3, atol=1e-3)
    assert gt16.x1.dtype == jnp.float32 and float(bj.psnr(gt16.x1, gt32.x1)) >= 40.0
    families = [(family, family.init()) for family in (bj.bns(4), bj.bst(4))]

    @jax.jit
    def solve_all(x0, args):
        out = {
            name: bj.solvers.SOLVERS[name](
                b16.velocity, x0, nfe=3 if name == "edm" else 4, args=args, scheduler=b16.scheduler
            )
            for name in bj.solvers.NAMES
        }
        for family, params in families:
            out[type(family).__name__] = family.sample(params, b16.velocity, x0, args)
        return out

    for name, out in solve_all(x0, a16).items():
        assert out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out))), name
    result = bj.train(
        bj.bns(2),
        b16.velocity,
        x0,
        x0[:2],
        args=a16,
        val_args=b16.args(jnp.arange(2), 2.0),
        steps=1,
        batch_size=2,
        eval_every=1,
        progress=False,
        rtol=1e-3,
        atol=1e-3,
    )
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(result.params))
    assert np.isfinite(result.best_val_psnr)


def test_device_check_smoke_writes_every_stage(tmp_path):
    """The GPU script at toy size on CPU: every stage runs and is on disk, and the BENCHMARKS
    section is made from what was recorded."""
    from experiments.device_check import main

    main(["--smoke", "--out", str(tmp_path)])
    results = json.loads((tmp_path / "results.json").read_text())
    assert {"unet", "ground_truth", "bns_nfe2", "peak_memory_bytes", "wall_seconds"} <= set(results)
    row = results["bns_nfe2"]
    assert row["bns_images_per_s"] > 0 and row["euler_images_per_s"] > 0
    assert np.isfinite(row["val_psnr"]) and results["ground_truth"]["nfe"] > 0
    section = (tmp_path / "gpu_section.md").read_text()
    assert "| 2 |" in section and "Ground truth" in section
