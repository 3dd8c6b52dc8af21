"""A small class-conditional convolutional UNet in Flax NNX (the ``patches16`` network).

The network is a noise (eps) predictor in the usual diffusion convention:
``net(x, timestep, labels) -> eps_hat`` with ``x`` of shape ``(B, H, W, C)``, ``timestep`` the
DDPM timestep (0 at data, ``N - 1`` at noise; real-valued between the integers) and ``labels``
ints in ``[0, num_classes]``, where ``num_classes`` is the null label of classifier-free guidance.

Layout: an input conv, then per resolution level residual blocks (GroupNorm, SiLU, 3x3 conv,
the time + class embedding added in between) and a stride-2 downsampling conv; single-head
self-attention between two residual blocks at the lowest resolution; the mirror path upsamples
(nearest, then a 3x3 conv) and concatenates the skip of the same level.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from bespoke_jax.models.networks import time_embedding

MAX_TIMESTEP = 1000.0
"""Timesteps are divided by this before the sinusoidal embedding (periods up to ~6000 steps)."""


def _groups(channels: int) -> int:
    return min(8, channels)


class ResBlock(nnx.Module):
    """``skip(h) + conv(silu(norm(conv(silu(norm(h))) + W e))))``, ``e`` the embedding."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, *, rngs: nnx.Rngs):
        self.norm1 = nnx.GroupNorm(c_in, num_groups=_groups(c_in), rngs=rngs)
        self.conv1 = nnx.Conv(c_in, c_out, (3, 3), rngs=rngs)
        self.emb = nnx.Linear(emb_dim, c_out, rngs=rngs)
        self.norm2 = nnx.GroupNorm(c_out, num_groups=_groups(c_out), rngs=rngs)
        self.conv2 = nnx.Conv(
            c_out, c_out, (3, 3), kernel_init=nnx.initializers.zeros_init(), rngs=rngs
        )
        self.skip = nnx.Conv(c_in, c_out, (1, 1), rngs=rngs) if c_in != c_out else None

    def __call__(self, h, e):
        """``h``: ``(B, H, W, c_in)``, ``e``: ``(B, emb_dim)`` -> ``(B, H, W, c_out)``."""
        y = self.conv1(nnx.silu(self.norm1(h)))
        y = y + self.emb(e)[:, None, None, :]
        y = self.conv2(nnx.silu(self.norm2(y)))
        return (h if self.skip is None else self.skip(h)) + y


class SelfAttention(nnx.Module):
    """Single-head self-attention over the ``H W`` positions, pre-norm and residual."""

    def __init__(self, channels: int, *, rngs: nnx.Rngs):
        self.norm = nnx.GroupNorm(channels, num_groups=_groups(channels), rngs=rngs)
        self.qkv = nnx.Linear(channels, 3 * channels, rngs=rngs)
        self.out = nnx.Linear(
            channels, channels, kernel_init=nnx.initializers.zeros_init(), rngs=rngs
        )

    def __call__(self, h):
        """``(B, H, W, C)`` -> ``(B, H, W, C)``: ``h + W_o softmax(q k^T / sqrt(C)) v``."""
        b, height, width, c = h.shape
        q, k, v = jnp.split(self.qkv(self.norm(h).reshape(b, height * width, c)), 3, axis=-1)
        weights = jax.nn.softmax(jnp.einsum("bqc,bkc->bqk", q, k) / jnp.sqrt(c), axis=-1)
        return h + self.out(jnp.einsum("bqk,bkc->bqc", weights, v)).reshape(h.shape)


class UNet(nnx.Module):
    """A class-conditional UNet noise predictor (see the module docstring).

    Args:
        channels: image channels ``C`` of ``x``.
        widths: feature channels of each resolution level, finest first; each level but the
            last halves the resolution (``H`` and ``W`` must divide by ``2 ** (len - 1)``).
        num_classes: number of classes; the embedding table has ``num_classes + 1`` rows, the
            last being the null label.
        emb_dim: size of the time + class embedding.
        rngs: parameter initialisation.
    """

    def __init__(
        self,
        channels: int,
        widths: tuple[int, ...] | list[int],
        num_classes: int,
        emb_dim: int = 128,
        *,
        rngs: nnx.Rngs,
    ):
        widths = tuple(widths)
        self.emb_dim = emb_dim
        self.time1 = nnx.Linear(emb_dim, emb_dim, rngs=rngs)
        self.time2 = nnx.Linear(emb_dim, emb_dim, rngs=rngs)
        self.label = nnx.Embed(num_classes + 1, emb_dim, rngs=rngs)
        self.input = nnx.Conv(channels, widths[0], (3, 3), rngs=rngs)
        self.down_blocks = nnx.List([ResBlock(c, c, emb_dim, rngs=rngs) for c in widths])
        self.downsample = nnx.List(
            [
                nnx.Conv(c_in, c_out, (3, 3), strides=(2, 2), rngs=rngs)
                for c_in, c_out in zip(widths[:-1], widths[1:], strict=True)
            ]
        )
        bottom = widths[-1]
        self.mid1 = ResBlock(bottom, bottom, emb_dim, rngs=rngs)
        self.attention = SelfAttention(bottom, rngs=rngs)
        self.mid2 = ResBlock(bottom, bottom, emb_dim, rngs=rngs)
        self.upsample = nnx.List(
            [
                nnx.Conv(c_in, c_out, (3, 3), rngs=rngs)
                for c_in, c_out in zip(widths[:0:-1], widths[-2::-1], strict=True)
            ]
        )
        self.up_blocks = nnx.List([ResBlock(2 * c, c, emb_dim, rngs=rngs) for c in widths[::-1]])
        self.out_norm = nnx.GroupNorm(widths[0], num_groups=_groups(widths[0]), rngs=rngs)
        self.output = nnx.Conv(
            widths[0], channels, (3, 3), kernel_init=nnx.initializers.zeros_init(), rngs=rngs
        )

    def __call__(self, x, timestep, labels):
        """Noise prediction.

        Args:
            x: noisy images ``(B, H, W, C)``.
            timestep: DDPM timesteps ``(B,)`` or a scalar (0 data, ``N - 1`` noise).
            labels: ints ``(B,)`` in ``[0, num_classes]``.

        Returns:
            ``(B, H, W, C)``, the predicted noise.
        """
        # The embedding in float32 (timesteps up to 999 are not exact in bfloat16), then x's dtype.
        timestep = jnp.broadcast_to(jnp.asarray(timestep, jnp.float32), x.shape[:1])
        e = time_embedding(timestep / MAX_TIMESTEP, self.emb_dim, max_frequency=MAX_TIMESTEP)
        e = e.astype(x.dtype)
        e = self.time2(nnx.silu(self.time1(e))) + self.label(labels)
        e = nnx.silu(e)
        h = self.input(x)
        skips = []
        for level, block in enumerate(self.down_blocks):
            h = block(h, e)
            skips.append(h)
            if level < len(self.downsample):
                h = self.downsample[level](h)
        h = self.mid2(self.attention(self.mid1(h, e)), e)
        for level, block in enumerate(self.up_blocks):
            if level > 0:
                h = self.upsample[level - 1](jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2))
            h = block(jnp.concatenate([h, skips.pop()], axis=-1), e)
        return self.output(nnx.silu(self.out_norm(h)))


def build_unet(architecture: dict, seed: int = 0) -> UNet:
    """A freshly initialised ``UNet`` from its architecture config (the keyword arguments)."""
    return nnx.jit(lambda: UNet(**architecture, rngs=nnx.Rngs(seed)))()
