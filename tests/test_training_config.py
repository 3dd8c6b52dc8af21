"""Training settings resolved from the family: its defaults, optimizer and their names."""

import optax
import pytest

import bespoke_jax as bj
from bespoke_jax.training.config import resolve


@pytest.mark.parametrize(
    ("family", "steps", "name"), [(bj.bns(4), 1000, "Prodigy"), (bj.bst(4), 1000, "Adam")]
)
def test_defaults_come_from_the_family(family, steps, name):
    config = resolve(family, 520)
    assert (config.steps, config.batch_size) == (family.default_steps, family.default_batch_size)
    assert config.steps == steps and config.optimizer_name == family.optimizer_name == name
    # The batch never exceeds the training set.
    assert resolve(family, 12).batch_size == 12


def test_a_learning_rate_means_adam_and_an_optimizer_is_taken_as_given():
    assert resolve(bj.bns(4), 100, learning_rate=1e-3).optimizer_name == "Adam"
    sgd = optax.sgd(0.1)
    config = resolve(bj.bns(4), 100, optimizer=sgd, learning_rate=1e-3)
    assert config.optimizer is sgd and config.optimizer_name == "custom"
    assert config.fingerprint()["learning_rate"] == 1e-3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 6, "num_devices": 4}, "multiple of the 4 devices of the mesh.*use 4 or 8"),
        ({"batch_size": 0}, r"batch_size must be in \[1, 100\]"),
        ({"eval_every": 0}, "must be positive"),
    ],
)
def test_inconsistent_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        resolve(bj.bst(4), 100, **kwargs)
