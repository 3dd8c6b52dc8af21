"""Training data of the shipped models: a 2-D checkerboard and the 8x8 handwritten digits."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

BOARD_SIZE = 4
"""The checkerboard has ``BOARD_SIZE x BOARD_SIZE`` unit squares covering ``[-2, 2]^2``."""


def checkerboard_sample(key, n: int):
    """Points uniform on the dark squares of a 4x4 board on ``[-2, 2]^2``.

    A square ``(i, j)`` (row of ``x[0]``, column of ``x[1]``, from 0 at -2) is dark when
    ``i + j`` is even; there are 8.

    Returns:
        ``(n, 2)`` float32.
    """
    k_square, k_offset = jax.random.split(key)
    square = jax.random.randint(k_square, (n,), 0, BOARD_SIZE**2 // 2)
    row = square // 2
    col = row % 2 + 2 * (square % 2)
    corner = jnp.stack([row, col], axis=-1).astype(jnp.float32)
    return corner + jax.random.uniform(k_offset, (n, 2)) - BOARD_SIZE / 2


def dark_square(x):
    """Index ``0..7`` of the dark square holding each point, or -1 off the dark squares.

    Args:
        x: points, shape ``(n, 2)``.

    Returns:
        ``(n,)`` int numpy array.
    """
    cell = np.floor(np.asarray(x) + BOARD_SIZE / 2).astype(int)
    row, col = cell[:, 0], cell[:, 1]
    inside = np.all((cell >= 0) & (cell < BOARD_SIZE), axis=-1)
    dark = inside & ((row + col) % 2 == 0)
    return np.where(dark, row * 2 + col // 2, -1)


@dataclasses.dataclass(frozen=True)
class Digits:
    """A fixed, stratified split of scikit-learn's 8x8 digits, pixels scaled to [-1, 1].

    Attributes:
        x_train: ``(N_train, 8, 8)`` float32.
        y_train: ``(N_train,)`` int32 labels 0..9.
        x_test: ``(N_test, 8, 8)`` float32, never seen by the model.
        y_test: ``(N_test,)`` int32.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@functools.lru_cache(maxsize=2)
def digits(test_fraction: float = 0.2, seed: int = 0) -> Digits:
    """The digits split (1797 images; offline, shipped with scikit-learn)."""
    # scikit-learn is an optional dependency ("experiments"/"test" extras): import it on use.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.images / 16.0 * 2.0 - 1.0).astype(np.float32)
    y = bunch.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    return Digits(x_train, y_train, x_test, y_test)
