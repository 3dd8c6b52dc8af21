"""Bespoke scale-time solvers: parametrisation, base order, the RMSE bound and its gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bespoke_jax as bj
from bespoke_jax import solvers
from bespoke_jax.truth.paths import hermite, save_times

BASE_SOLVER = {"rk1": solvers.euler, "rk2": solvers.midpoint}
ORDER = {"rk1": 1, "rk2": 2}
STAGES = {"rk1": 1, "rk2": 2}


@pytest.fixture(scope="module")
def field():
    """A smooth 8-d, 4-component mixture under CondOT."""
    mixture = bj.GaussianMixture.random(jax.random.key(0), 4, 8, 0.2)
    return mixture.velocity(bj.cond_ot())


@pytest.fixture(scope="module")
def x0():
    return jax.random.normal(jax.random.key(1), (16, 8))


@pytest.fixture(scope="module")
def exact_x1(field, x0):
    return bj.ground_truth(field, x0, rtol=1e-7, atol=1e-7).x1


def random_params(family, key, scale=0.3):
    """Unconstrained parameters drawn around the identity: every draw is a valid solver."""
    leaves, tree = jax.tree.flatten(family.init())
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(
        tree,
        [scale * jax.random.normal(k, leaf.shape) for k, leaf in zip(keys, leaves, strict=True)],
    )


def smooth_transform(key):
    """A random smooth scale-time transform: ``t`` increasing from 0 to 1, ``s > 0``."""
    a, b, c = jax.random.uniform(key, (3,), minval=0.4, maxval=1.2)
    return bj.ScaleTime(
        t=lambda r: jnp.expm1(a * r) / jnp.expm1(a),
        s=lambda r: jnp.exp(b * r + c * jnp.sin(jnp.pi * r)),
    )


@pytest.mark.parametrize(("base", "nfe", "count"), [("rk1", 3, 11), ("rk2", 4, 15), ("rk2", 6, 23)])
def test_num_params_counts_the_free_scalars(base, nfe, count):
    family = bj.bst(nfe, base=base)
    assert family.num_params == count
    assert sum(leaf.size for leaf in jax.tree.leaves(family.init())) == count


def test_structural_errors_say_what_to_change():
    with pytest.raises(ValueError, match=r"even.*nfe=4 or 6"):
        bj.bst(5)
    with pytest.raises(ValueError, match="valid bases"):
        bj.bst(4, base="rk3")
    with pytest.raises(ValueError, match="loss_kind"):
        bj.bst(4, loss_kind="rmse")
    with pytest.raises(ValueError, match="save_ts=family.save_ts"):
        family = bj.bst(4)
        family.loss(family.init(), lambda t, x, a: x, bj.TrainingData(jnp.ones((2, 3)), None))


def test_direct_loss_needs_no_path():
    assert bj.bst(4, loss_kind="direct").save_ts is None
    assert bj.bst(4).save_ts[0] == 0.0 and bj.bst(4).save_ts[-1] == 1.0


def _params(t, dt, s, ds):
    """BST parameters from ``w_1.. / w_0``, ``t'``, ``s_1..`` and ``s'`` (so by their logs)."""
    log = lambda v: jnp.log(jnp.asarray(v, dtype=jnp.float32))  # noqa: E731
    return {"t": log(t), "dt": log(dt), "s": log(s), "ds": jnp.asarray(ds, dtype=jnp.float32)}


RK1_PARAMS = _params(t=[3.0], dt=[1.0, 2.0], s=[2.0, 0.5], ds=[0.3, -0.7])
RK2_PARAMS = _params(t=[2.0, 1.0, 2.0], dt=[1.0, 2.0, 3.0, 1.0], s=[2.0, 0.5, 1.0, 4.0],
                     ds=[0.0, 0.5, -1.0, 2.0])  # fmt: skip


def test_coefficients_in_closed_form():
    """The decoding of the module docstring by hand, RK1 at m = 2 and RK2 at m = 4.

    ``w = softmax([0, p_t])``: ``p_t = log 3`` gives ``w = (1/4, 3/4)``; ``p_t = (log 2, 0, log 2)``
    gives ``w = (1, 2, 1, 2) / 6``. ``t' = exp(p_dt)``, ``s = (1, exp(p_s))``, ``s' = p_ds``.
    """
    rk1 = bj.bst(2, base="rk1").coefficients(RK1_PARAMS)
    np.testing.assert_allclose(rk1["r"], [0, 1 / 2, 1], atol=1e-7)
    np.testing.assert_allclose(rk1["t"], [0, 1 / 4, 1], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(rk1["dt"], [1, 2], rtol=1e-6)
    np.testing.assert_allclose(rk1["s"], [1, 2, 1 / 2], rtol=1e-6)
    np.testing.assert_allclose(rk1["ds"], [0.3, -0.7])
    rk2 = bj.bst(4).coefficients(RK2_PARAMS)
    np.testing.assert_allclose(rk2["r"], [0, 1 / 4, 1 / 2, 3 / 4, 1], atol=1e-7)
    np.testing.assert_allclose(rk2["t"], [0, 1 / 6, 1 / 2, 2 / 3, 1], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(rk2["dt"], [1, 2, 3, 1], rtol=1e-6)
    np.testing.assert_allclose(rk2["s"], [1, 2, 1 / 2, 1, 4], rtol=1e-6)
    np.testing.assert_allclose(rk2["ds"], [0, 0.5, -1, 2])


def test_lipschitz_constants_in_closed_form():
    """``Lbar_j = |s'_j| / s_j + t'_j L_tau`` at ``L_tau = 2``, ``h = 1/2``, by hand.

    RK1 (``t' = (1, 2)``, ``s = (1, 2, 1/2)``, ``s' = (0.3, -0.7)``): ``Lbar = (2.3, 4.35)``,
    ``L_i = (s_i / s_{i+1}) (1 + h Lbar_i) = (1.075, 12.7)``.
    RK2 (``RK2_PARAMS``): ``Lbar = (2, 4.25, 8, 4)`` at ``r = 0, 1/4, 1/2, 3/4``;
    ``L_0 = (1 / (1/2)) (1 + h 4.25 (1 + (h/2) 2)) = 8.375``,
    ``L_1 = ((1/2) / 4) (1 + h 4 (1 + (h/2) 8)) = 0.875``. Swapping the half- and full-point
    constants would give ``(6.125, 1.125)``.
    """
    rk1 = bj.bst(2, base="rk1", l_tau=2.0)
    np.testing.assert_allclose(rk1.lipschitz(RK1_PARAMS), [1.075, 12.7], rtol=1e-6)
    rk2 = bj.bst(4, l_tau=2.0)
    np.testing.assert_allclose(rk2.lipschitz(RK2_PARAMS), [8.375, 0.875], rtol=1e-6)


@pytest.mark.parametrize("base", ["rk1", "rk2"])
def test_identity_init_is_the_base_solver(field, x0, base):
    family = bj.bst(4, base=base)
    expected = BASE_SOLVER[base](field, x0, nfe=4)
    ours = family.sample(family.init(), field, x0)
    assert np.all(np.isfinite(ours))
    np.testing.assert_allclose(ours, expected, atol=2e-6)


@pytest.mark.parametrize("base", ["rk1", "rk2"])
def test_sample_is_the_scan_of_step_and_spends_nfe_calls(field, x0, base):
    family = bj.bst(4, base=base)
    params = random_params(family, jax.random.key(2))
    calls = []

    def counted(t, x, args):
        jax.debug.callback(lambda: calls.append(1))
        return field(t, x, args)

    x1 = family.sample(params, counted, x0)
    jax.effects_barrier()
    assert len(calls) == family.nfe

    @jax.jit
    def stepped(params):
        x = x0
        for i in range(family.num_steps):
            x = family.step(params, i, x, field)
        return x

    np.testing.assert_allclose(x1, stepped(params), rtol=1e-5, atol=1e-6)


def test_params_from_transform_samples_the_transform():
    family = bj.bst(6)
    transform = smooth_transform(jax.random.key(3))
    c = family.coefficients(family.params_from_transform(transform))
    r = c["r"]
    np.testing.assert_allclose(c["t"], transform.t(r), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(c["s"], transform.s(r), rtol=1e-5)
    np.testing.assert_allclose(c["dt"], transform.dt(r)[:-1], rtol=1e-5)
    np.testing.assert_allclose(c["ds"], transform.ds(r)[:-1], rtol=1e-5, atol=1e-6)
    identity = family.params_from_transform(bj.ScaleTime(lambda r: r, jnp.ones_like))
    for got, want in zip(jax.tree.leaves(identity), jax.tree.leaves(family.init()), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("base", ["rk1", "rk2"])
def test_random_transforms_keep_the_base_order(field, x0, exact_x1, base):
    """Theorem 2.2: a smooth transform sampled on ever finer grids converges at the base order.

    Error ``C h^p (1 + O(h))``: the log-log slope between ``n = 32`` and ``64`` is ``-p`` up to
    ``O(h)``, and the errors fall at every halving of ``h``.
    """
    transform = smooth_transform(jax.random.key(4))
    steps = np.array([8, 16, 32, 64])
    errors = []
    for n in steps:
        family = bj.bst(int(n) * STAGES[base], base=base)
        params = family.params_from_transform(transform)
        x1 = jax.jit(lambda p, family=family: family.sample(p, field, x0))(params)
        errors.append(float(bj.rmse(x1, exact_x1)))
    slopes = np.diff(np.log(errors)) / np.diff(np.log(steps))
    assert np.all(slopes < 0) and abs(slopes[-1] + ORDER[base]) < 0.25, (slopes, errors)


def linear_path(a, x0, ts):
    """The exact path of ``dx/dt = A x`` at ``ts``: ``xs, us`` of shape ``(B, S, d)``."""
    flows = jax.vmap(lambda t: jax.scipy.linalg.expm(t * a))(ts)
    xs = jnp.einsum("sij,bj->bsi", flows, x0)
    return xs, xs @ a.T


@pytest.mark.parametrize("base", ["rk1", "rk2"])
def test_bound_exceeds_the_error_for_a_field_within_l_tau(base):
    """``||A||_2 = 0.9 < L_tau = 1``: ``sum_i M_i d_i >= ||x_n - x(1)||`` for every sample."""
    d = 6
    a = jax.random.normal(jax.random.key(5), (d, d))
    a = 0.9 * a / jnp.linalg.norm(a, ord=2)
    x0 = jax.random.normal(jax.random.key(6), (8, d))
    ts = jnp.asarray(save_times())
    xs, us = linear_path(a, x0, ts)
    batch = bj.TrainingData(x0, xs[:, -1], ts, xs, us)
    family = bj.bst(6, base=base, l_tau=1.0)
    u = lambda t, x, args: x @ a.T  # noqa: E731

    @jax.jit
    def bound_and_error(params):
        x1 = family.sample(params, u, x0)
        return family.bound(params, u, batch), jnp.sqrt(jnp.mean(jnp.square(x1 - xs[:, -1]), -1))

    for k in range(3):
        bound, error = bound_and_error(random_params(family, jax.random.key(7 + k), scale=0.5))
        assert bool(jnp.all(bound >= error * (1 - 1e-5))), (bound, error)


def test_hermite_path_is_exact_on_cubics():
    ts = jnp.asarray(save_times(5))
    poly = lambda t: 1.0 - 2.0 * t + 3.0 * t**2 - 0.5 * t**3  # noqa: E731
    dpoly = lambda t: -2.0 + 6.0 * t - 1.5 * t**2  # noqa: E731
    query = jnp.array([0.0, 0.1, 0.37, 0.5, 0.99, 1.0])
    x, u = hermite(ts, poly(ts)[None, :, None], dpoly(ts)[None, :, None], query)
    np.testing.assert_allclose(x[:, 0, 0], poly(query), atol=1e-6)
    np.testing.assert_allclose(u[:, 0, 0], dpoly(query), atol=1e-5)


def test_time_gradient_matches_finite_differences_of_the_exact_local_error():
    """Eq. 27 on the cached path gives d(loss)/d(times) of the exact local errors.

    In float64, directional derivatives along random directions of the time logits, against
    central differences of the loss rebuilt from direct solves at the moved times: the cached
    path's velocity is exact to ``O(h^3)`` (``h = 1/64``), the central difference to
    ``O(eps^2)``, the solves to their tolerance over ``eps``.
    """
    with jax.enable_x64(True):
        mixture = bj.GaussianMixture.random(jax.random.key(0), 4, 8, 0.2)
        u = mixture.velocity(bj.cond_ot())
        x0 = jax.random.normal(jax.random.key(1), (4, 8), dtype=jnp.float64)
        family = bj.bst(6)
        params = random_params(family, jax.random.key(8))
        tol = {"rtol": 1e-10, "atol": 1e-10}
        batch = bj.make_training_data(u, x0, save_ts=family.save_ts, **tol)
        grad = jax.jit(jax.grad(lambda p: family.loss(p, u, batch)))(params)["t"]

        @jax.jit
        def loss_on(logits, xs):
            p = {**params, "t": logits}
            steps = jax.vmap(lambda i, x: family.step(p, i, x, u))(
                jnp.arange(family.num_steps), xs[:-1]
            )
            d = jnp.sqrt(jnp.mean(jnp.square(xs[1:] - steps), axis=-1))
            later = jnp.cumprod(family.lipschitz(p)[::-1])[::-1]
            return jnp.mean(jnp.concatenate([later[1:], jnp.ones(1)]) @ d)

        def exact_loss(logits):
            t = family.coefficients({**params, "t": logits})["t"][::2]
            xs = bj.ground_truth(u, x0, save_ts=t, **tol).xs
            return loss_on(logits, jnp.swapaxes(xs, 0, 1))

        eps = 1e-4
        for direction in jax.random.normal(jax.random.key(9), (2, params["t"].shape[0])):
            step = eps * direction
            fd = (exact_loss(params["t"] + step) - exact_loss(params["t"] - step)) / (2 * eps)
            np.testing.assert_allclose(grad @ direction, fd, rtol=1e-4)


def test_training_lowers_the_validation_error(field):
    family = bj.bst(4)
    keys = jax.random.split(jax.random.key(9))
    x_train = jax.random.normal(keys[0], (32, 8))
    x_val = jax.random.normal(keys[1], (32, 8))
    result = bj.train(
        family,
        field,
        x_train,
        x_val,
        steps=100,
        batch_size=16,
        learning_rate=family.default_learning_rate(100),
        eval_every=50,
        progress=False,
    )
    assert result.best_step > 0
    assert result.best_val_psnr > result.history["val_psnr"][0]
