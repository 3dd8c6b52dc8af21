"""The shipped pre-trained models: loading, the velocity contract, args checks, sample quality."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bespoke_jax.models.pretrained import NAMES, load, pretrained
from experiments.shipped_models.data import checkerboard_sample, dark_square
from experiments.shipped_models.quality import digits_sample_quality, missed_targets, rk4_sample
from experiments.shipped_models.training import TrainConfig, train_pretrained


@pytest.fixture(scope="module")
def checkerboard():
    return pretrained("checkerboard")


@pytest.fixture(scope="module")
def digits():
    return pretrained("digits")


def _inputs(model, batch=6, guidance=0.0, seed=0):
    x = jax.random.normal(jax.random.key(seed), (batch, *model.shape))
    if model.num_classes is None:
        return x, model.args()
    return x, model.args(jnp.arange(batch) % model.num_classes, guidance)


def test_records_describe_the_models(checkerboard, digits):
    assert checkerboard.shape == (2,) and checkerboard.num_classes is None
    assert digits.shape == (8, 8) and digits.num_classes == 10 and digits.null_label == 10
    for model in (checkerboard, digits):
        assert model.prediction == "velocity" and model.scheduler.name == "cond_ot"
        assert len(model.identity) == 64
        assert {"wall_seconds", "model_forwards", "num_params"} <= set(model.training_cost)
        assert pretrained(model.name) is model
    assert checkerboard.identity != digits.identity


def test_unknown_name_is_an_error():
    with pytest.raises(ValueError, match="valid names"):
        pretrained("mnist")


@pytest.mark.parametrize("name", NAMES)
def test_shipped_quality_meets_targets(name):
    assert missed_targets(name, pretrained(name).quality) == []


@pytest.mark.parametrize("name", NAMES)
def test_velocity_under_jit_vmap_and_grad(name):
    model = pretrained(name)
    x, args = _inputs(model, guidance=1.5)
    velocity = jax.jit(lambda t, x, args: model.velocity(t, x, args))
    ts = jnp.array([0.1, 0.5, 0.9])
    looped = jnp.stack([velocity(t, x, args) for t in ts])
    assert looped.shape == (3, *x.shape) and looped.dtype == x.dtype
    assert np.all(np.isfinite(looped))
    batched = jax.jit(jax.vmap(model.velocity, in_axes=(0, None, None)))(ts, x, args)
    # Batched and looped convolutions round differently; an eps network's conversion to a
    # velocity multiplies that by up to ~60 (sigma / alpha at t = 0.1 on the DDPM schedule).
    atol = 1e-5 if model.prediction == "velocity" else 1e-4
    np.testing.assert_allclose(batched, looped, rtol=1e-5, atol=atol)
    grad = jax.jit(jax.grad(lambda x: model.velocity(0.5, x, args).sum()))(x)
    assert grad.shape == x.shape and np.all(np.isfinite(grad))


def test_guidance_combines_conditional_and_unconditional(digits):
    x, _ = _inputs(digits)
    labels = jnp.arange(6)
    velocity = jax.jit(lambda t, x, args: digits.velocity(t, x, args))
    cond = velocity(0.4, x, digits.args(labels))
    uncond = velocity(0.4, x, digits.args(jnp.full(6, digits.null_label)))
    for w in (0.5, 3.0):
        guided = velocity(0.4, x, digits.args(labels, w))
        np.testing.assert_allclose(guided, (1 + w) * cond - w * uncond, rtol=1e-4, atol=1e-4)
    assert velocity._cache_size() == 1


def test_args_of_the_unconditional_model(checkerboard):
    assert checkerboard.args() is None
    with pytest.raises(ValueError, match="unconditional"):
        checkerboard.args(labels=[0, 1])
    with pytest.raises(ValueError, match="unconditional"):
        checkerboard.args(guidance=1.0)


@pytest.mark.parametrize(
    "labels, guidance, match",
    [
        (None, 0.0, "class-conditional"),
        ([0, 11], 0.0, r"\[0, 10\]"),
        ([-1, 3], 0.0, r"\[0, 10\]"),
        ([0.0, 1.0], 0.0, "ints"),
        ([[0, 1]], 0.0, "shape"),
        ([0, 1], [1.0, 2.0, 3.0], "one scale per label"),
    ],
)
def test_args_of_the_conditional_model_are_checked(digits, labels, guidance, match):
    with pytest.raises(ValueError, match=match):
        digits.args(labels, guidance)


def test_velocity_checks_shapes(digits):
    x, args = _inputs(digits)
    with pytest.raises(ValueError, match="x must have shape"):
        digits.velocity(0.5, x.reshape(6, 64), args)
    with pytest.raises(ValueError, match="labels"):
        digits.velocity(0.5, x[:4], args)


def test_checkerboard_data_lies_on_all_dark_squares():
    square = dark_square(checkerboard_sample(jax.random.key(0), 4000))
    assert np.all(square >= 0)
    assert set(np.unique(square)) == set(range(8))


def test_checkerboard_samples_land_on_the_board(checkerboard):
    # Shipped model: about 0.95 on the board with 100 RK4 steps; 40 steps loses little.
    x0 = jax.random.normal(jax.random.key(1), (512, 2))
    samples = rk4_sample(checkerboard.velocity, x0, steps=40)
    assert np.mean(dark_square(samples) >= 0) > 0.85


def test_guided_digits_are_judged_as_their_label(digits):
    # Shipped model: 100% of guided (w = 2) samples judged correct with 100 RK4 steps.
    labels = np.repeat(np.arange(10), 10)
    x0 = jax.random.normal(jax.random.key(2), (100, 8, 8))
    samples = rk4_sample(digits.velocity, x0, digits.args(labels, 2.0), steps=40)
    quality = digits_sample_quality(samples, labels)
    assert quality["accuracy"] >= 0.9
    assert quality["copy_fraction"] < 0.1


def test_training_smoke_loss_decreases_and_round_trips(tmp_path):
    config = TrainConfig(steps=80, batch_size=64, warmup_steps=10, steps_per_call=20)
    architecture = {"dim": 64, "width": 32, "depth": 1, "time_dim": 16, "num_classes": 10}
    record, metadata = train_pretrained(
        "digits", config, architecture, tmp_path, progress=False, evaluate=False
    )
    losses = metadata["losses"]
    assert losses.shape == (80,) and losses[-20:].mean() < losses[:20].mean()
    assert metadata["training_cost"]["model_forwards"] == 80 * 64
    loaded = load("digits", tmp_path)
    x, args = _inputs(loaded, guidance=2.0)
    np.testing.assert_array_equal(loaded.velocity(0.5, x, args), record.velocity(0.5, x, args))
