"""The shipped image model ``patches16``: its UNet, its data split, its DDPM maths, its record."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bespoke_jax.models.networks import num_params
from bespoke_jax.models.pretrained import pretrained
from bespoke_jax.models.unet import UNet
from experiments.shipped_models.ddpm import ddim_sample, linear_alphas_cumprod
from experiments.shipped_models.patches import PATCH, held_out, patch_corners
from experiments.shipped_models.quality import missed_targets
from experiments.train_patches16 import ARCHITECTURE


def _abstract_unet():
    """The shipped architecture, parameters as shapes only (no compilation)."""
    return nnx.eval_shape(lambda: UNet(**ARCHITECTURE, rngs=nnx.Rngs(0)))


@pytest.fixture(scope="module")
def patches16():
    return pretrained("patches16")


def test_unet_maps_images_to_images_within_the_parameter_budget():
    graphdef, state = nnx.split(_abstract_unet())
    assert num_params(nnx.merge(graphdef, state)) <= 500_000

    def forward(state, x):
        return nnx.merge(graphdef, state)(x, jnp.full(5, 10.0), jnp.arange(5))

    x = jax.ShapeDtypeStruct((5, PATCH, PATCH, 3), jnp.float32)
    out = jax.eval_shape(forward, state, x)
    assert out.shape == x.shape and out.dtype == x.dtype


def test_split_keeps_training_patches_off_the_held_out_blocks():
    height, width = 150, 170
    train, test = patch_corners(height, width)
    offsets = np.arange(PATCH)
    for corners, inside in ((train, False), (test, True)):
        rows = corners[:, 0, None, None] + offsets[None, :, None]
        cols = corners[:, 1, None, None] + offsets[None, None, :]
        assert np.all(rows < height) and np.all(cols < width)
        assert np.all(held_out(rows, cols) == inside)
    positions = (height - PATCH + 1) * (width - PATCH + 1)
    assert len(train) > positions / 2 and len(test) > 0


def test_ddim_recovers_the_data_point_of_the_exact_noise_predictor():
    # Data a single point x1: the exact eps-predictor is (x - sqrt(abar) x1) / sqrt(1 - abar),
    # on which each DDIM step is exact, so any number of steps lands on x1.
    abar = linear_alphas_cumprod()
    assert abar.shape == (1000,) and np.isclose(abar[0], 1 - 1e-4)
    np.testing.assert_allclose(np.diff(np.log(abar)), np.log1p(-np.linspace(1e-4, 0.02, 1000))[1:])
    x1 = jnp.linspace(-1.0, 1.0, 12).reshape(1, 12)
    table = jnp.asarray(abar, jnp.float32)

    def eps(x, timestep):
        a = table[timestep.astype(jnp.int32)][:, None]
        return (x - jnp.sqrt(a) * x1) / jnp.sqrt(1.0 - a)

    noise = jax.random.normal(jax.random.key(0), (3, 12))
    np.testing.assert_allclose(
        ddim_sample(eps, noise, abar, steps=7), np.broadcast_to(x1, (3, 12)), atol=1e-4
    )


def test_record_describes_an_eps_unet_on_ddpm(patches16):
    assert patches16.prediction == "eps" and patches16.shape == (16, 16, 3)
    assert patches16.num_classes == 7 and patches16.null_label == 7
    assert patches16.scheduler.to_config()["beta_schedule"] == "linear"
    assert patches16.training_cost["num_params"] == num_params(_abstract_unet())
    assert missed_targets("patches16", patches16.quality) == []


def test_guided_velocity_is_finite_and_affine_in_the_guidance(patches16):
    x = jax.random.normal(jax.random.key(1), (4, 16, 16, 3))
    labels = jnp.array([0, 3, 6, 7])
    velocity = jax.jit(patches16.velocity)
    for t in (0.0, 0.5, 1.0):
        cond = velocity(t, x, patches16.args(labels))
        uncond = velocity(t, x, patches16.args(jnp.full(4, patches16.null_label)))
        guided = velocity(t, x, patches16.args(labels, 2.0))
        assert guided.shape == x.shape and np.all(np.isfinite(guided))
        np.testing.assert_allclose(guided, 3.0 * cond - 2.0 * uncond, rtol=1e-4, atol=1e-3)
