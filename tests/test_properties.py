"""Property tests over random noise, grids and parameters of every learned family.

Each property is one jitted function per family, traced once, and a few derandomised examples.
"""

import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bespoke_jax as bj

SETTINGS = settings(max_examples=10, deadline=None, derandomize=True)
SCHEDULER = bj.cond_ot()
MIXTURE = bj.GaussianMixture.random(jax.random.key(0), num_components=3, dim=4, std=0.2)
U = MIXTURE.velocity(SCHEDULER)
SHAPE = (3, 4)
EPS = float(jnp.finfo(jnp.float32).eps)

# (family, the baseline its init() reproduces)
FAMILIES = {
    "bst-rk1": (bj.bst(3, base="rk1"), bj.solvers.euler),
    "bst-rk2": (bj.bst(4), bj.solvers.midpoint),
    "bns-midpoint": (bj.bns(4), bj.solvers.midpoint),
    "bns-unipc": (bj.bns(3, init="unipc", scheduler=SCHEDULER), bj.solvers.unipc),
}
seeds = st.integers(0, 2**31 - 1)


def _noise(seed):
    return jax.random.normal(jax.random.key(seed), SHAPE)


def _perturbed(family, seed, scale):
    leaves, treedef = jax.tree.flatten(family.init())
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(
        treedef,
        [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)],
    )


@pytest.fixture(scope="module")
def jitted():
    """Per family: ``init_and_base(x0)`` and ``sample(params, x0)``, each traced once."""
    out = {}
    for name, (family, base) in FAMILIES.items():
        kwargs = {"scheduler": SCHEDULER} if base is bj.solvers.unipc else {}

        def init_and_base(x0, family=family, base=base, kwargs=kwargs):
            ours = family.sample(family.init(), U, x0)
            return ours, base(U, x0, nfe=family.nfe, **kwargs)

        sample = jax.jit(lambda params, x0, family=family: family.sample(params, U, x0))
        out[name] = (jax.jit(init_and_base), sample)
    return out


@pytest.mark.parametrize("name", FAMILIES)
def test_init_reproduces_the_base_solver(jitted, name):
    # Same linear combination of x0 and field values, summed in another order: float32 rounding
    # (eps per operation) over a few steps of a field with O(1) Lipschitz constant, on O(1) values.
    @SETTINGS
    @given(seeds)
    def check(seed):
        ours, base = jitted[name][0](_noise(seed))
        scale = 1.0 + float(jnp.max(jnp.abs(base)))
        np.testing.assert_allclose(ours, base, rtol=0, atol=256 * EPS * scale)

    check()


@pytest.mark.parametrize("name", FAMILIES)
def test_perturbed_parameters_give_finite_samples(jitted, name):
    # Parameters are valid by construction: any finite values decode to a valid solver.
    @SETTINGS
    @given(seeds, st.floats(0.0, 1.0))
    def check(seed, scale):
        family = FAMILIES[name][0]
        x1 = jitted[name][1](_perturbed(family, seed, scale), _noise(seed + 1))
        assert x1.shape == SHAPE and bool(jnp.all(jnp.isfinite(x1)))

    check()


_euler_on_grid = jax.jit(lambda x0, grid: bj.solvers.euler(U, x0, nfe=4, grid=grid))


@SETTINGS
@given(seeds, st.lists(st.floats(0.05, 1.0), min_size=4, max_size=4))
def test_random_valid_grids_are_accepted_and_disorder_refused(seed, increments):
    grid = np.concatenate([[0.0], np.cumsum(increments) / np.sum(increments)])
    grid[-1] = 1.0
    x1 = _euler_on_grid(_noise(seed), jnp.asarray(grid, jnp.float32))
    assert bool(jnp.all(jnp.isfinite(x1)))
    swapped = grid.copy()
    swapped[[1, 2]] = grid[[2, 1]]  # increments >= 0.05: the swap breaks the order
    with pytest.raises(ValueError, match="increase strictly"):
        bj.solvers.euler(U, _noise(seed), nfe=4, grid=swapped)


@pytest.mark.parametrize("name", FAMILIES)
def test_save_load_round_trip_is_bitwise(name):
    @settings(max_examples=3, deadline=None, derandomize=True)
    @given(seeds, st.floats(0.0, 1.0))
    def check(seed, scale):
        family = FAMILIES[name][0]
        params = _perturbed(family, seed, scale)
        with tempfile.TemporaryDirectory() as root:
            loaded, loaded_params, _ = bj.load_solver(bj.save_solver(f"{root}/s", family, params))
        assert loaded == family
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded_params), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
            assert np.asarray(a).dtype == np.asarray(b).dtype

    check()


def test_training_is_deterministic_for_a_key():
    family = bj.bns(2, init="euler")
    x0_train, x0_val = _noise(1).repeat(2, axis=0), _noise(2)

    def run(seed, **data):
        return bj.train(
            family, U, x0_train, x0_val, steps=4, batch_size=4, eval_every=2,
            key=jax.random.key(seed), progress=False, **data,
        )  # fmt: skip

    first = run(7)
    second = run(7, train_data=first.train_data, val_data=first.val_data)
    for a, b in zip(jax.tree.leaves(first.params), jax.tree.leaves(second.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert first.history["loss"][1:] == second.history["loss"][1:]
    assert first.best_step == second.best_step
