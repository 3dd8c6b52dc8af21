"""Baseline solvers on closed-form mixture fields: order, reference algorithms, contract."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bespoke_jax as bj
from bespoke_jax import solvers
from bespoke_jax.core.schedulers import VE

SCHEDULERS = {"cond_ot": bj.cond_ot(), "cosine": bj.cosine(), "vp": bj.vp()}
NEEDS_SCHEDULER = [name for name in solvers.NAMES if solvers.SPECS[name].requires_scheduler]


def smooth_mixture(dtype):
    """Four wide components in 8 dimensions: a smooth field whose orders show cleanly."""
    means = jax.random.uniform(jax.random.PRNGKey(0), (4, 8), minval=-1.0, maxval=1.0, dtype=dtype)
    return bj.GaussianMixture(means, jnp.full((4,), 0.3, dtype), jnp.ones((4,), dtype))


@pytest.fixture(scope="module")
def mixture():
    return smooth_mixture(jnp.float32)


@pytest.fixture(scope="module")
def x0():
    return jax.random.normal(jax.random.PRNGKey(1), (4, 8))


def run(name, u, x0, steps, **kwargs):
    """Solver ``name`` with ``steps`` steps (its NFE from its rule), CondOT by default."""
    spec = solvers.SPECS[name]
    kwargs.setdefault("scheduler", bj.cond_ot())
    return spec.fn(u, x0, nfe=spec.rule.nfe(steps), **kwargs)


def rms(x):
    return float(jnp.sqrt(jnp.mean(jnp.square(x))))


# ---------------------------------------------------------------------------------------------
# Order of convergence, in float64 (scoped by jax.enable_x64) against a 1024-step RK4 solve.
# A solver's declared order is the global order of the whole solve, its first-order first and
# last steps included; the slope is measured between 64 and 128 steps on a uniform grid, except:
# DPM-Solver++(2M) carries a log factor on uniform grids (its lambda steps near t = 0 are O(1)),
# so it is measured on the EDM grid; UniPC-3 reaches its asymptotic order later; EDM is compared
# with the solve from its own start, x(t_0) = sigma_{t_0} x0 with snr(t_0) = 1/80.
CONVERGENCE = {
    "euler": {},
    "midpoint": {},
    "heun": {},
    "rk4": {},
    "ipndm": {},
    "ddim": {},
    "dpm_solver_pp": {"grid": "edm"},
    "dpm_solver_pp_3m": {"order": 3},
    "unipc": {},
    "unipc_3": {"order": 3, "steps": (128, 256)},
    "edm": {},
}


@pytest.fixture(scope="module")
def float64_problem():
    """The CondOT field of the smooth mixture, noise and exact solutions, all in float64."""
    with jax.enable_x64(True):
        sched = bj.cond_ot()
        u = smooth_mixture(jnp.float64).velocity(sched)
        x0 = jax.random.normal(jax.random.PRNGKey(1), (16, 8), dtype=jnp.float64)
        t0 = sched.snr_inverse(1.0 / 80.0)
        from_t0 = lambda r, x, args: (1.0 - t0) * u(t0 + (1.0 - t0) * r, x, args)
        exact = {
            "from_noise": solvers.rk4(u, x0, nfe=4096),
            "edm": solvers.rk4(from_t0, sched.sigma(t0) * x0, nfe=4096),
        }
    return u, x0, exact


@pytest.mark.parametrize("variant", list(CONVERGENCE))
def test_convergence_order(variant, float64_problem):
    name = variant if variant in solvers.SPECS else variant.rsplit("_", 1)[0]
    kwargs = dict(CONVERGENCE[variant])
    steps = kwargs.pop("steps", (64, 128))
    u, x0, exact = float64_problem
    exact = exact["edm" if name == "edm" else "from_noise"]
    with jax.enable_x64(True):
        errors = [rms(run(name, u, x0, n, **kwargs) - exact) for n in steps]
    slope = np.log2(errors[0] / errors[1]) / np.log2(steps[1] / steps[0])
    assert abs(slope - solvers.SPECS[name].order) < 0.3, (errors, slope)


# ---------------------------------------------------------------------------------------------
# The published algorithms, transcribed step by step from the reference implementations
# (LuChengTHU/dpm-solver DPM_Solver.sample, multistep; wl-zhao/UniPC UniPC.sample, bh2) in NumPy.


def _coefficients(sched, t):
    alpha, sigma = float(sched.alpha(t)), float(sched.sigma(t))
    with np.errstate(divide="ignore"):
        return alpha, sigma, np.log(alpha) - np.log(sigma)


def reference_dpm_solver_pp(model, x, ts, sched, order):
    """``DPM_Solver.sample(method="multistep", lower_order_final=True)``, dpmsolver++."""

    def update(x, models, times, t, step_order):
        _, sigma_s, lam_s = _coefficients(sched, times[-1])
        alpha_t, sigma_t, lam_t = _coefficients(sched, t)
        h = lam_t - lam_s
        phi_1 = np.expm1(-h)
        x_t = sigma_t / sigma_s * x - alpha_t * phi_1 * models[-1]
        if step_order == 1:
            return x_t
        h_0 = lam_s - _coefficients(sched, times[-2])[2]
        r0 = h_0 / h
        d1_0 = (1.0 / r0) * (models[-1] - models[-2])
        if step_order == 2:
            return x_t - 0.5 * (alpha_t * phi_1) * d1_0
        h_1 = _coefficients(sched, times[-2])[2] - _coefficients(sched, times[-3])[2]
        r1 = h_1 / h
        d1_1 = (1.0 / r1) * (models[-2] - models[-3])
        d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
        d2 = (1.0 / (r0 + r1)) * (d1_0 - d1_1)
        phi_2 = phi_1 / h + 1.0
        phi_3 = phi_2 / h - 0.5
        return x_t + alpha_t * phi_2 * d1 - alpha_t * phi_3 * d2

    steps = len(ts) - 1
    times, models = [ts[0]], [model(x, ts[0])]
    for step in range(1, order):
        x = update(x, models, times, ts[step], step)
        times.append(ts[step])
        models.append(model(x, ts[step]))
    for step in range(order, steps + 1):
        step_order = min(order, steps + 1 - step) if steps < 10 else order
        x = update(x, models, times, ts[step], step_order)
        times, models = times[1:] + [ts[step]], models[1:] + [models[-1]]
        if step < steps:
            models[-1] = model(x, ts[step])
    return x


def reference_unipc(model, x, ts, sched, order):
    """``UniPC.sample(method="multistep", lower_order_final=True)``, variant bh2, predict_x0."""

    def update(x, models, times, t, step_order, use_corrector):
        _, sigma_0, lam_0 = _coefficients(sched, times[-1])
        alpha_t, sigma_t, lam_t = _coefficients(sched, t)
        h = lam_t - lam_0
        rks, d1s = [], []
        for i in range(1, step_order):
            rk = (_coefficients(sched, times[-(i + 1)])[2] - lam_0) / h
            rks.append(rk)
            d1s.append((models[-(i + 1)] - models[-1]) / rk)
        rks = np.array(rks + [1.0])
        hh = -h
        h_phi_1 = np.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1.0
        factorial_i = 1
        b_h = np.expm1(hh)
        r_rows, b = [], []
        for i in range(1, step_order + 1):
            r_rows.append(rks ** (i - 1))
            b.append(h_phi_k * factorial_i / b_h)
            factorial_i *= i + 1
            h_phi_k = h_phi_k / hh - 1.0 / factorial_i
        r_matrix, b = np.stack(r_rows), np.array(b)
        x_t_ = sigma_t / sigma_0 * x - alpha_t * h_phi_1 * models[-1]
        pred_res = 0.0
        if d1s:
            rhos_p = (
                np.array([0.5]) if step_order == 2 else np.linalg.solve(r_matrix[:-1, :-1], b[:-1])
            )
            pred_res = sum(rho * d for rho, d in zip(rhos_p, d1s, strict=True))
        x_t = x_t_ - alpha_t * b_h * pred_res
        if not use_corrector:
            return x_t, None
        rhos_c = np.array([0.5]) if step_order == 1 else np.linalg.solve(r_matrix, b)
        model_t = model(x_t, t)
        corr_res = sum(rho * d for rho, d in zip(rhos_c[:-1], d1s, strict=True))
        return x_t_ - alpha_t * b_h * (corr_res + rhos_c[-1] * (model_t - models[-1])), model_t

    steps = len(ts) - 1
    times, models = [ts[0]], [model(x, ts[0])]
    for step in range(1, order):
        x, model_x = update(x, models, times, ts[step], step, True)
        times.append(ts[step])
        models.append(model_x)
    for step in range(order, steps + 1):
        step_order = min(order, steps + 1 - step)
        x, model_x = update(x, models, times, ts[step], step_order, step != steps)
        times, models = times[1:] + [ts[step]], models[1:] + [model_x]
    return x


@pytest.mark.parametrize(
    ("algorithm", "sched_name", "order", "steps"),
    [
        ("dpm_solver_pp", "cond_ot", 2, 6),
        ("dpm_solver_pp", "cond_ot", 3, 7),
        ("dpm_solver_pp", "vp", 3, 9),
        ("unipc", "vp", 2, 6),
        ("unipc", "vp", 3, 8),
    ],
)
def test_matches_reference_implementation(algorithm, sched_name, order, steps):
    reference = {"dpm_solver_pp": reference_dpm_solver_pp, "unipc": reference_unipc}[algorithm]
    sched = SCHEDULERS[sched_name]
    with jax.enable_x64(True):
        mix = smooth_mixture(jnp.float64)
        x1_model = mix.prediction(sched, "x1")
        x0 = jax.random.normal(jax.random.PRNGKey(2), (3, 8), dtype=jnp.float64)
        ts = np.linspace(0.0, 1.0, steps + 1)
        expected = reference(
            lambda x, t: np.asarray(x1_model(jnp.float64(t), jnp.asarray(x))),
            np.asarray(x0),
            ts,
            sched,
            order,
        )
        got = solvers.SOLVERS[algorithm](
            mix.velocity(sched), x0, nfe=steps, scheduler=sched, order=order
        )
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)


def test_ddim_equals_euler_on_cond_ot(mixture, x0):
    u = mixture.velocity(bj.cond_ot())
    ddim = jax.jit(lambda grid: run("ddim", u, x0, 4, grid=grid))
    euler = jax.jit(lambda grid: run("euler", u, x0, 4, grid=grid))
    for kind in solvers.GRIDS:
        grid = solvers.make_grid(kind, 4, bj.cond_ot())
        np.testing.assert_allclose(ddim(grid), euler(grid), atol=2e-5)


def test_edm_grid_is_karras_through_the_scheduler():
    levels = solvers.karras_sigmas(5)
    np.testing.assert_allclose([levels[0], levels[-1]], [80.0, 0.002], rtol=1e-5)
    grid = solvers.make_grid("edm", 5, bj.cond_ot())
    np.testing.assert_allclose(grid[1:-1], 1.0 / (1.0 + levels[1:]), rtol=1e-5)
    assert grid[0] == 0.0 and grid[-1] == 1.0


@pytest.mark.parametrize("sched_name", list(SCHEDULERS))
def test_named_grids(sched_name):
    sched = SCHEDULERS[sched_name]
    for kind in solvers.GRIDS:
        grid = solvers.make_grid(kind, 6, sched)
        assert grid.shape == (7,) and grid[0] == 0.0 and grid[-1] == 1.0
        assert jnp.all(jnp.diff(grid) > 0), (kind, grid)
    lam = sched.log_snr(solvers.make_grid("logsnr", 6, sched)[1:-1])
    np.testing.assert_allclose(jnp.diff(lam), jnp.diff(lam)[0], rtol=1e-3)


def test_edm_is_karras_algorithm_1_on_the_ve_field(mixture, x0):
    """EDM with nfe = 5 on a CondOT field is Karras et al.'s Algorithm 1 (no churn) on the
    closed-form VE field: Heun between the levels 80, sigma_1, 0.002, Euler to 0, from 80 x0."""
    u_ve = mixture.velocity(VE(80.0))  # in r = 1 - sigma / 80

    def algorithm_1(x0):
        rs = jnp.append(1.0 - solvers.karras_sigmas(3) / 80.0, 1.0)
        x = 80.0 * x0
        for r0, r1 in zip(rs[:-2], rs[1:-1], strict=True):
            d = u_ve(r0, x, None)
            x = x + 0.5 * (r1 - r0) * (d + u_ve(r1, x + (r1 - r0) * d, None))
        return x + (rs[-1] - rs[-2]) * u_ve(rs[-2], x, None)

    sched = bj.cond_ot()
    got, expected = jax.jit(
        lambda x: (solvers.edm(mixture.velocity(sched), x, nfe=5, scheduler=sched), algorithm_1(x))
    )(x0)
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3)


# ---------------------------------------------------------------------------------------------
# The contract: NFE, arguments, grids, jit, gradients, linearity. A cheap linear field
# u = (1 + t) x M - x keeps these fast; the schedulers only enter through the coefficients.


def linear_field(t, x, args):
    matrix = jax.random.normal(jax.random.PRNGKey(3), (8, 8)) / 8.0
    return args["scale"] * ((1.0 + t) * x @ matrix - x)


SCALE = {"scale": jnp.float32(1.0)}


@pytest.mark.parametrize("name", solvers.NAMES)
def test_nfe_and_linearity(name, x0):
    """u is called exactly nfe times at t in [0, 1], and x1 is linear in x0 for a linear u."""
    calls = []

    def counted(t, x, args):
        calls.append(float(t))
        return linear_field(t, x, args)

    y0 = jax.random.normal(jax.random.PRNGKey(4), x0.shape)
    with jax.disable_jit():
        solve = lambda z: run(name, counted, z, 3, args=SCALE, scheduler=bj.vp())
        x1, y1, z1 = solve(x0), solve(y0), solve(2.0 * x0 - 3.0 * y0)
    assert len(calls) == 3 * solvers.SPECS[name].rule.nfe(3) and x1.shape == x0.shape
    assert all(0.0 <= t <= 1.0 for t in calls)
    np.testing.assert_allclose(z1, 2.0 * x1 - 3.0 * y1, atol=1e-3)


def test_nfe_validation(x0):
    bad = {"euler": 0, "midpoint": 3, "heun": 5, "rk4": 6, "ipndm": -1, "ddim": 0}
    bad |= {"dpm_solver_pp": 0, "unipc": 0, "edm": 4}
    for name, nfe in bad.items():
        with pytest.raises(ValueError, match="valid NFE"):
            solvers.SOLVERS[name](linear_field, x0, nfe=nfe, args=SCALE, scheduler=bj.cond_ot())
        with pytest.raises(ValueError, match="valid NFE"):
            solvers.steps_for(name, nfe)
    with pytest.raises(ValueError, match="valid NFE"):
        solvers.euler(linear_field, x0, nfe=2.0, args=SCALE)
    assert [solvers.steps_for("edm", nfe) for nfe in (1, 3, 5)] == [1, 2, 3]
    assert solvers.steps_for("rk4", 8) == 2 and solvers.steps_for("heun", 8) == 4
    with pytest.raises(ValueError, match="order"):
        solvers.dpm_solver_pp(linear_field, x0, nfe=4, args=SCALE, scheduler=bj.vp(), order=4)


@pytest.mark.parametrize("name", NEEDS_SCHEDULER)
def test_scheduler_is_required(name, x0):
    with pytest.raises(ValueError, match="`scheduler`"):
        solvers.SOLVERS[name](linear_field, x0, nfe=3, args=SCALE)


def test_explicit_grid_validation(x0):
    solve = lambda grid: solvers.heun(linear_field, x0, nfe=6, args=SCALE, grid=grid)
    for grid, match in [
        (jnp.linspace(0.0, 1.0, 5), "shape"),
        (jnp.linspace(0.0, 1.0, 8).reshape(2, 4), "shape"),
        (jnp.array([0.1, 0.5, 0.7, 1.0]), "start at 0"),
        (jnp.array([0.0, 0.5, 0.7, 0.9]), "start at 0"),
        (jnp.array([0.0, 0.7, 0.5, 1.0]), "increase strictly"),
        (jnp.array([0.0, 0.5, 0.5, 1.0]), "increase strictly"),
    ]:
        with pytest.raises(ValueError, match=match):
            solve(grid)
    with pytest.raises(ValueError, match="Unknown grid"):
        solve("karras")
    with pytest.raises(ValueError, match="`scheduler`"):
        solve("logsnr")
    with pytest.raises(Exception, match="increase strictly"):  # eqx.error_if under jax.jit
        jax.jit(solve)(jnp.array([0.0, 0.7, 0.5, 1.0])).block_until_ready()


@pytest.mark.parametrize("name", solvers.NAMES)
def test_jit_no_retrace_and_grid_gradient(name, x0):
    """Jitted with the field closed over, it equals the un-jitted solve, new values of x0, args
    and an explicit grid do not retrace, and the gradient with respect to the grid is finite."""
    traces, sched = [], bj.cosine()

    def field(t, x, args):
        traces.append(None)  # once per trace under jit
        return linear_field(t, x, args)

    def loss(grid, x, args):
        x1 = run(name, field, x, 3, args=args, scheduler=sched, grid=grid)
        return jnp.sum(jnp.square(x1)), x1

    solve = jax.jit(jax.value_and_grad(loss, has_aux=True))
    grid = solvers.make_grid("edm" if name == "edm" else "logsnr", 3, sched)
    (_, x1), grad = solve(grid, x0, SCALE)
    count = len(traces)
    solve(solvers.make_grid("uniform", 3), x0 + 1.0, {"scale": jnp.float32(0.5)})
    assert len(traces) == count
    with jax.disable_jit():
        np.testing.assert_allclose(x1, loss(grid, x0, SCALE)[1], atol=1e-4, rtol=1e-4)
    assert grad.shape == grid.shape and bool(jnp.all(jnp.isfinite(grad)))
    assert float(jnp.abs(grad[1:-1]).min()) > 0.0


def test_registry():
    assert set(solvers.SOLVERS) == set(solvers.NAMES) == set(solvers.SPECS)
    expected = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4, "ddim": 1, "edm": 2}
    assert {name: solvers.SPECS[name].order for name in expected} == expected
    assert set(NEEDS_SCHEDULER) == {"ddim", "dpm_solver_pp", "unipc", "edm"}
