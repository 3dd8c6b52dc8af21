"""Small Flax NNX velocity networks for the pre-trained models shipped with the package.

Both networks predict the CondOT flow-matching velocity ``dx/dt`` from ``(t, x)``; the digits
network also takes a class label, with the extra label ``num_classes`` meaning "no label" (the
unconditional field used by classifier-free guidance).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx


def time_embedding(t, dim: int, max_frequency: float = 1000.0):
    """Sinusoidal embedding of times in [0, 1].

    Args:
        t: times, shape ``(B,)``.
        dim: embedding size (even).
        max_frequency: the highest angular frequency; frequencies are geometric from 1.

    Returns:
        ``(B, dim)``: ``[sin(f_k t), cos(f_k t)]``.
    """
    freqs = jnp.exp(jnp.linspace(0.0, math.log(max_frequency), dim // 2))
    angles = t[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class ResidualBlock(nnx.Module):
    """``h + W2 silu(W1 LayerNorm(h) + c)``: a pre-norm residual MLP block fed a condition."""

    def __init__(self, width: int, *, rngs: nnx.Rngs):
        self.norm = nnx.LayerNorm(width, rngs=rngs)
        self.linear1 = nnx.Linear(width, width, rngs=rngs)
        self.linear2 = nnx.Linear(width, width, rngs=rngs)

    def __call__(self, h, c):
        """``h``, ``c``: ``(B, width)`` -> ``(B, width)``."""
        return h + self.linear2(nnx.silu(self.linear1(self.norm(h)) + c))


class VelocityMLP(nnx.Module):
    """A residual MLP velocity field on flat vectors, optionally class-conditional.

    Args:
        dim: the data dimension (flattened).
        width: hidden width.
        depth: number of residual blocks.
        time_dim: size of the sinusoidal time embedding.
        num_classes: number of classes, or ``None`` for an unconditional field. A conditional
            field has ``num_classes + 1`` label embeddings; the last one is the null label.
        rngs: parameter initialisation.
    """

    def __init__(
        self,
        dim: int,
        width: int,
        depth: int,
        time_dim: int = 32,
        num_classes: int | None = None,
        *,
        rngs: nnx.Rngs,
    ):
        self.time_dim = time_dim
        self.input = nnx.Linear(dim, width, rngs=rngs)
        self.time = nnx.Linear(time_dim, width, rngs=rngs)
        self.label = None if num_classes is None else nnx.Embed(num_classes + 1, width, rngs=rngs)
        self.blocks = nnx.List([ResidualBlock(width, rngs=rngs) for _ in range(depth)])
        self.out_norm = nnx.LayerNorm(width, rngs=rngs)
        self.output = nnx.Linear(width, dim, rngs=rngs)

    def __call__(self, t, x, labels=None):
        """Velocity.

        Args:
            t: times, shape ``(B,)``.
            x: points, shape ``(B, dim)``.
            labels: int labels ``(B,)`` (conditional network only).

        Returns:
            ``(B, dim)``.
        """
        c = self.time(time_embedding(t, self.time_dim).astype(x.dtype))
        if self.label is not None:
            c = c + self.label(labels).astype(c.dtype)
        c = nnx.silu(c)
        h = self.input(x) + c
        for block in self.blocks:
            h = block(h, c)
        return self.output(nnx.silu(self.out_norm(h)))


def build_model(architecture: dict, seed: int = 0) -> VelocityMLP:
    """A freshly initialised network from its architecture config (the keyword arguments)."""
    # One compiled initialisation instead of an eager dispatch (and compile) per random op.
    return nnx.jit(lambda: VelocityMLP(**architecture, rngs=nnx.Rngs(seed)))()


def num_params(model: nnx.Module) -> int:
    """Number of trainable scalars."""
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
