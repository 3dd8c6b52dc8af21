"""One BNS solver for a range of guidance scales, and per-sample guidance through the package."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bespoke_jax as bj
from bespoke_jax import export as bj_export
from bespoke_jax.families.bns import BNS
from tests.test_cli import assert_clean_error, invoke

SCHEDULER = bj.cond_ot()
RANGE = (0.0, 4.0)
NFE = 4


@pytest.fixture(scope="module")
def field():
    """Guidance between a 2-component (conditional) and a 4-component mixture in 8-d."""
    full = bj.GaussianMixture.random(jax.random.key(0), num_components=4, dim=8, std=0.2)
    part = bj.GaussianMixture(full.means[:2], full.stds[:2], full.weights[:2])
    return bj.guided(part.velocity(SCHEDULER), full.velocity(SCHEDULER))


@pytest.fixture(scope="module")
def family():
    return bj.bns(NFE, sigma0=2.0, scheduler=SCHEDULER, guidance=RANGE)


@pytest.fixture(scope="module")
def params(family):
    """Random residuals of every Chebyshev order (a trained solver's stand-in)."""
    leaves, tree = jax.tree.flatten(family.init())
    keys = jax.random.split(jax.random.key(3), len(leaves))
    noisy = [0.3 * jax.random.normal(k, leaf.shape) for k, leaf in zip(keys, leaves, strict=True)]
    return jax.tree.unflatten(tree, noisy)


@pytest.fixture(scope="module")
def sample(family, field):
    """The jitted range sampler and the number of times it was traced."""
    traces = []

    def run(params, x0, args):
        traces.append(1)
        return family.sample(params, field, x0, args)

    return jax.jit(run), traces


X0 = jax.random.normal(jax.random.key(1), (6, 8))
WS = jnp.array([0.0, 0.7, 2.0, 2.5, 3.3, 4.0])


def test_without_guidance_is_todays_family(family):
    plain = bj.bns(NFE, sigma0=2.0, scheduler=SCHEDULER)
    assert type(plain) is BNS and plain == BNS(NFE, "midpoint", 2.0, SCHEDULER)
    assert "guidance" not in plain.config()
    assert family != plain and family.num_params == NFE + 1 + 3 * (NFE + 1 + NFE * (NFE + 1) // 2)


@pytest.mark.parametrize("w", [0.0, 1.3, 4.0])
def test_scalar_w_is_the_bns_solver_of_its_series_bit_for_bit(family, params, field, w):
    # At one w the range solver is a plain BNS solver with residuals sum_k c_k T_k(z(w)):
    # the same operations in the same order, so the same bits.
    basis = family.basis(w)
    residuals = {
        "grid": params["grid"],
        "a": basis @ params["a"],
        "b": jnp.tensordot(basis, params["b"], axes=1),
    }
    plain = bj.bns(NFE, sigma0=2.0, scheduler=SCHEDULER)
    args = {"guidance": jnp.float32(w)}
    ours = family.sample(params, field, X0, args)
    np.testing.assert_array_equal(ours, plain.sample(residuals, field, X0, args))
    # init reproduces the source solver at every w
    np.testing.assert_array_equal(
        family.sample(family.init(), field, X0, args), plain.sample(plain.init(), field, X0, args)
    )


def test_per_sample_w_matches_one_w_at_a_time_without_recompiling(params, sample):
    run, traces = sample
    batched = run(params, X0, {"guidance": WS})
    for i, w in enumerate(WS):
        one = run(params, X0, {"guidance": w})
        # the batched product sums the same n + 1 terms per sample as the matrix-vector
        # product: float32 rounding (~1e-7 relative) of O(1) values
        np.testing.assert_allclose(batched[i], one[i], atol=1e-5)
    run(params, X0, {"guidance": WS[::-1]})
    assert len(traces) == 2  # one trace for a scalar w, one for a (B,) w


def test_sampling_spends_exactly_nfe(family, params):
    times = []

    def counting(t, x, args):
        times.append(float(t))
        return -x

    with jax.disable_jit():
        family.sample(params, counting, X0, {"guidance": WS})
    assert len(times) == NFE


def test_outside_the_range_warns_and_clamps(family, params, field):
    with pytest.warns(UserWarning, match=r"\[0, 4\]"):
        family.sample(params, field, X0, {"guidance": 5.5})
    # the field runs at w = 5.5; the solver's weights are those of w = 4
    above, end = family.coefficients(params, 5.5), family.coefficients(params, 4.0)
    for key in ("grid", "a", "b"):
        np.testing.assert_array_equal(above[key], end[key])


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"guidance": (4.0, 0.0)}, "w_min < w_max"),
        ({"guidance": 3.0}, "range (w_min, w_max)"),
        ({"degree": 2}, "give guidance"),
        ({"guidance": RANGE, "degree": -1}, "non-negative"),
    ],
)
def test_bad_ranges_are_refused(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        bj.bns(NFE, **kwargs)


def test_sampling_needs_the_guidance_in_args(family, params, field):
    with pytest.raises(ValueError, match="'guidance'"):
        family.sample(params, field, X0, None)
    with pytest.raises(ValueError, match=r"shape \(6,\)"):
        family.sample(params, field, X0, {"guidance": jnp.ones(3)})


def test_guided_and_ground_truth_carry_a_per_sample_w(field):
    per_sample = field(0.4, X0, {"guidance": WS})
    for i, w in enumerate(WS):
        np.testing.assert_allclose(per_sample[i], field(0.4, X0, {"guidance": w})[i], atol=1e-6)
    # ground truth solves each sample on its own: its w travels with it
    both = bj.ground_truth(field, X0[:2], args={"guidance": WS[1:3]}).x1
    for i in range(2):
        alone = bj.ground_truth(field, X0[i : i + 1], args={"guidance": WS[1 + i]}).x1
        np.testing.assert_allclose(both[i], alone[0], atol=1e-6)


def test_pretrained_takes_one_scale_per_label():
    model = bj.pretrained("digits")
    labels = jnp.array([1, 7, 3])
    w = jnp.array([0.0, 2.0, 4.0])
    x = jax.random.normal(jax.random.key(0), (3, *model.shape))
    per_sample = model.velocity(0.5, x, model.args(labels, guidance=w))
    for i in range(3):
        alone = model.velocity(0.5, x, model.args(labels, guidance=w[i]))
        np.testing.assert_allclose(per_sample[i], alone[i], atol=1e-5)
    with pytest.raises(ValueError, match="one scale per label"):
        model.args(labels, guidance=jnp.ones(2))


def test_training_over_the_range_saves_loads_and_exports(family, field, tmp_path):
    keys = jax.random.split(jax.random.key(5), 4)
    x_train, x_val = (jax.random.normal(k, (n, 8)) for k, n in zip(keys[:2], (32, 16), strict=True))
    train_w, val_w = family.draw_guidance(keys[2], 32), family.draw_guidance(keys[3], 16)
    assert float(train_w.min()) >= 0.0 and float(train_w.max()) <= 4.0
    result = bj.train(
        family, field, x_train, x_val, args={"guidance": train_w}, val_args={"guidance": val_w},
        steps=40, batch_size=8, eval_every=20, progress=False,
    )  # fmt: skip
    assert result.best_val_psnr > result.history["val_psnr"][0]

    path = bj.save_solver(tmp_path / "range", family, result.params)
    loaded, params, _ = bj.load_solver(path, "bns_range")
    assert loaded == family
    for w in (0.0, 1.7, 4.0):
        args = {"guidance": jnp.float32(w)}
        np.testing.assert_array_equal(
            loaded.sample(params, field, X0, args), family.sample(result.params, field, X0, args)
        )

    record = __import__("json").loads(
        bj.export_solver(tmp_path / "range.json", family, params, guidance=[0.0, 1.7]).read_text()
    )
    assert record["guidance_range"] == [0.0, 4.0] and record["guidance"] == [0.0, 1.7]
    for w, a, b in zip(record["guidance"], record["a"], record["b"], strict=True):
        # the tabulated NS form on the model's own field runs as the solver at that w
        args = {"guidance": jnp.float32(w)}
        table = {"times": record["times"], "a": a, "b": b}
        # float32 sampling against the float64 NumPy loop: rounding of O(1) values
        np.testing.assert_allclose(
            bj_export.sample(table, field, np.asarray(X0), args),
            loaded.sample(params, field, X0, args),
            atol=1e-4,
        )
        # the series gives the solver's weights at w: sum_k A_k T_k(z)
        c = family.coefficients(params, w)
        basis = np.asarray(family.basis(w), np.float64)
        np.testing.assert_allclose(basis @ np.asarray(record["a_series"]), c["a"], atol=1e-6)
        np.testing.assert_allclose(
            np.tensordot(basis, np.asarray(record["b_series"]), axes=1), c["b"], atol=1e-6
        )


def test_command_line_trains_evaluates_and_samples_over_a_range(tmp_path):
    model = f"{__import__('pathlib').Path(__file__).parent / 'tiny_model.py'}:guided"
    out = tmp_path / "range"
    train = ("train", "--model", model, "--nfe", 4, "--quick", "--out", out)
    result = invoke(*train, "--guidance-range", 0, 4)
    assert result.exit_code == 0, result.output
    assert bj.load_solver(out)[0].guidance == RANGE
    assert_clean_error(invoke(*train, "--guidance-range", 0, 4, "--guidance", 1), "not both")
    assert_clean_error(invoke("eval", out, "--n", 4, "--model", model), "[0, 4]", "--guidance")
    result = invoke("eval", out, "--n", 4, "--model", model, "--guidance", 2.5)
    assert result.exit_code == 0 and "bns_range-4 (saved)" in result.output, result.output
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = invoke(
            "sample", out, "--n", 4, "--model", model, "--guidance", 6, "--out", tmp_path / "s"
        )
    assert result.exit_code == 0, result.output
    assert any("[0, 4]" in str(w.message) for w in caught)


@pytest.mark.parametrize(
    "distribution, outer",
    # P(|z| > 0.8): 0.2 for uniform z; 1 - (2 / pi) asin(0.8) = 0.41 for z = cos(pi U)
    [("uniform", 0.2), ("chebyshev", 1.0 - 2.0 / np.pi * np.arcsin(0.8))],
)
def test_draws_cover_the_range_with_their_law(family, distribution, outer):
    w = np.asarray(family.draw_guidance(jax.random.key(7), 4000, distribution))
    assert w.min() >= 0.0 and w.max() <= 4.0
    z = w / 2.0 - 1.0
    # binomial standard deviation sqrt(p (1 - p) / n) <= 0.008: 4 of them
    assert abs(np.mean(np.abs(z) > 0.8) - outer) < 0.032
    with pytest.raises(ValueError, match="'uniform' or 'chebyshev'"):
        family.draw_guidance(jax.random.key(7), 4, "normal")
