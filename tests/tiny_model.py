"""Entry points of a tiny user model for the CLI tests (``--model path/tiny_model.py:NAME``)."""

import bespoke_jax as bj


def mixture():
    """A closed-form 2-D Gaussian-mixture field under CondOT."""
    field = bj.GaussianMixture([[-1.0, -1.0], [1.0, 1.0], [1.0, -1.0]], [0.2] * 3, [1.0] * 3)
    return {"velocity": field.velocity(bj.cond_ot()), "shape": (2,), "scheduler": bj.cond_ot()}


def no_shape():
    """Breaks the contract: no ``shape``."""
    return {"velocity": mixture()["velocity"]}


def guided(guidance=0.0):
    """Classifier-free guidance between two closed-form 2-D mixtures (``bj.guided``)."""
    scheduler = bj.cond_ot()
    means, stds = [[-1.0, -1.0], [1.0, 1.0], [1.0, -1.0]], [0.2] * 3
    cond = bj.GaussianMixture(means[:1], stds[:1], [1.0])
    return {
        "velocity": bj.guided(cond.velocity(scheduler), mixture()["velocity"]),
        "shape": (2,),
        "scheduler": scheduler,
        "args": {"guidance": guidance},
    }


def two_args():
    """Breaks the contract: a field without ``args``."""
    return {"velocity": lambda t, x: -x, "shape": (2,)}
