"""Training data of ``patches16``: 16x16 RGB patches of scikit-image's bundled colour photographs.

Each photograph is one class. It is downscaled by ``SCALE`` (so that a patch holds texture, not
flat colour) and cut into ``BLOCK x BLOCK`` blocks; every ``HOLDOUT``-th block (in a diagonal
pattern) is held out, and a patch is a training patch when it touches no held-out block and a
test patch when it lies inside one. Pixels are scaled to [-1, 1]; a patch has shape (16, 16, 3).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

PHOTOGRAPHS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
    "retina",
)
"""The classes, in label order: ``skimage.data`` loaders of bundled colour photographs."""

PATCH = 16
SCALE = 0.5
BLOCK = 32
HOLDOUT = 5
RETINA_CROP = slice(300, 1100)
"""The retina photograph is cropped to its centre (its corners are black, like hubble's sky)."""


@dataclasses.dataclass(frozen=True)
class Patches:
    """The photographs and where training and test patches may start.

    Attributes:
        images: ``(K, H, W, 3)`` float32 in [-1, 1], the photographs zero-padded to a common size.
        train: per class, ``(n_k, 2)`` int32 top-left corners of training patches.
        test: per class, ``(m_k, 2)`` int32 top-left corners of held-out patches.
    """

    images: np.ndarray
    train: tuple[np.ndarray, ...]
    test: tuple[np.ndarray, ...]

    @property
    def num_classes(self) -> int:
        return len(self.train)

    def patches(self, corners: np.ndarray, label: int) -> np.ndarray:
        """The patches of class ``label`` at ``corners`` ``(n, 2)``: ``(n, 16, 16, 3)``."""
        rows = corners[:, :1, None] + np.arange(PATCH)[None, :, None]
        cols = corners[:, None, 1:] + np.arange(PATCH)[None, None, :]
        return self.images[label][rows, cols]

    def split(self, which: str, per_class: int, seed: int = 0):
        """``per_class`` random patches of each class from ``"train"`` or ``"test"``.

        Returns:
            ``(x (K per_class, 16, 16, 3), labels (K per_class,))``.
        """
        rng = np.random.default_rng(seed)
        corners = getattr(self, which)
        xs = [
            self.patches(c[rng.choice(len(c), per_class, replace=False)], k)
            for k, c in enumerate(corners)
        ]
        labels = np.repeat(np.arange(len(corners), dtype=np.int32), per_class)
        return np.concatenate(xs), labels


def _photograph(name: str) -> np.ndarray:
    # scikit-image is an optional dependency ("experiments"/"test" extras): import it on use.
    import skimage.data
    import skimage.transform

    image = getattr(skimage.data, name)()
    if name == "retina":
        image = image[RETINA_CROP, RETINA_CROP]
    image = skimage.transform.rescale(
        image.astype(np.float64) / 255.0, SCALE, channel_axis=-1, anti_aliasing=True
    )
    return (image * 2.0 - 1.0).astype(np.float32)


def held_out(row, col):
    """Whether pixel ``(row, col)`` lies in a held-out block (arrays broadcast)."""
    return (row // BLOCK * 3 + col // BLOCK) % HOLDOUT == 0


def patch_corners(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Training and test top-left corners in a ``height x width`` photograph.

    Returns:
        ``(train (n, 2), test (m, 2))`` int32: corners of patches touching no held-out block,
        and of patches inside one held-out block.
    """
    i, j = np.meshgrid(np.arange(height - PATCH + 1), np.arange(width - PATCH + 1), indexing="ij")
    i, j = i.ravel(), j.ravel()

    last = PATCH - 1
    corners = [held_out(i + a, j + b) for a in (0, last) for b in (0, last)]
    same_block = (i // BLOCK == (i + last) // BLOCK) & (j // BLOCK == (j + last) // BLOCK)
    test = corners[0] & same_block
    train = ~np.any(corners, axis=0)
    both = np.stack([i, j], axis=-1).astype(np.int32)
    return both[train], both[test]


@functools.cache
def patches() -> Patches:
    """The patch data set (offline: the photographs ship with scikit-image)."""
    images = [_photograph(name) for name in PHOTOGRAPHS]
    height = max(x.shape[0] for x in images)
    width = max(x.shape[1] for x in images)
    padded = np.zeros((len(images), height, width, 3), np.float32)
    for k, x in enumerate(images):
        padded[k, : x.shape[0], : x.shape[1]] = x
    train, test = zip(*(patch_corners(*x.shape[:2]) for x in images), strict=True)
    return Patches(padded, tuple(train), tuple(test))


def training_sampler(data: Patches):
    """``sample(key, batch_size) -> (x (B, 16, 16, 3), labels (B,))``, traceable.

    The class is uniform, then the patch is uniform among the class's training patches.
    """
    images = jnp.asarray(data.images)
    counts = np.array([len(c) for c in data.train])
    offsets = jnp.asarray(np.concatenate([[0], np.cumsum(counts)[:-1]]))
    corners = jnp.asarray(np.concatenate(data.train))
    counts = jnp.asarray(counts, jnp.float32)

    def one(label, corner):
        start = (label, corner[0], corner[1], 0)
        return jax.lax.dynamic_slice(images, start, (1, PATCH, PATCH, 3))[0]

    def sample(key, batch_size):
        k_class, k_patch = jax.random.split(key)
        labels = jax.random.randint(k_class, (batch_size,), 0, data.num_classes)
        u = jax.random.uniform(k_patch, (batch_size,))
        within = jnp.minimum(jnp.floor(u * counts[labels]), counts[labels] - 1)
        index = offsets[labels] + within.astype(jnp.int32)
        return jax.vmap(one)(labels, corners[index]), labels

    return sample
