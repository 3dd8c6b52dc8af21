"""Cached ground-truth paths: cubic Hermite interpolation of a solve saved on a fine grid.

A loss that needs the exact path ``x(t)`` at learned, moving times (the BST bound,
docs/bst.md) reads it from one saved solve per noise sample instead of solving again at every
step. The solve keeps ``x(tau_k)`` and ``u_k = u_{tau_k}(x(tau_k))`` at ``S`` times ``tau``; on
``[tau_k, tau_{k+1}]``, with ``h = tau_{k+1} - tau_k`` and ``theta = (t - tau_k) / h``,

    x(t) ~ h00(theta) x_k + h h10(theta) u_k + h01(theta) x_{k+1} + h h11(theta) u_{k+1},

``h00 = 2 theta^3 - 3 theta^2 + 1``, ``h10 = theta^3 - 2 theta^2 + theta``,
``h01 = 3 theta^2 - 2 theta^3``, ``h11 = theta^3 - theta^2``: exact at the saved times (value
and velocity), error ``O(h^4)`` in value and ``O(h^3)`` in velocity in between.

The saved times are uniform, ``tau_k = k / (S - 1)``. Measured on the 64-d, 32-component,
std 0.05 CondOT mixture (float32, Dopri5 at rtol = atol = 1e-7, 256 samples, 512 random query
times; the error of the interpolant against a direct solve at the query times, relative RMS
over everything / worst per-sample RMS; ``experiments/bench_bst.py`` regenerates it), uniform
times beat times denser towards the data end, ``tau_k = 1 - (1 - k / (S - 1))^2``: the error
peaks where the posterior switches components (t ~ 0.4-0.6) as much as near t = 1.

=====  ==================  ==================
S      uniform             denser near t = 1
=====  ==================  ==================
33     9.3e-6 / 2.5e-4     1.6e-5 / 5.0e-4
65     7.3e-7 / 2.8e-5     1.4e-6 / 5.7e-5
129    2.1e-7 / 2.1e-6     2.6e-7 / 5.0e-6
=====  ==================  ==================

The default ``S = 65`` puts the worst error (2.8e-5: PSNR ~ 97 dB at R = 2) well below what
few-step solvers reach and near the ground truth's own tolerance (1e-5).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

NUM_POINTS = 65


def save_times(num_points: int = NUM_POINTS) -> np.ndarray:
    """``(S,)`` uniform saved times ``k / (S - 1)``, from exactly 0 to exactly 1."""
    if not isinstance(num_points, int | np.integer) or num_points < 2:
        raise ValueError(f"num_points must be an integer >= 2, got {num_points!r}.")
    return np.linspace(0.0, 1.0, num_points)


def path_velocities(u, ts: jax.Array, xs: jax.Array, args=None) -> jax.Array:
    """``(N, S, *shape)`` velocities ``u_{ts_k}(xs[:, k])`` on a saved path: ``S`` batched calls.

    Args:
      u: the field ``u(t, x, args)``.
      ts: ``(S,)`` saved times.
      xs: ``(N, S, *shape)`` the path at ``ts``.
      args: the field's args for the N samples.
    """
    us = jax.lax.map(
        lambda tx: u(tx[0], tx[1], args).astype(xs.dtype), (ts, jnp.swapaxes(xs, 0, 1))
    )
    return jnp.swapaxes(us, 0, 1)


def hermite(ts: jax.Array, xs: jax.Array, us: jax.Array, t: jax.Array):
    """The cubic Hermite interpolant of a saved path, and its derivative, at times ``t``.

    Args:
      ts: ``(S,)`` increasing saved times.
      xs: ``(N, S, *shape)`` the path at ``ts``.
      us: ``(N, S, *shape)`` its velocity at ``ts``.
      t: ``(m,)`` query times in ``[ts[0], ts[-1]]``.

    Returns:
      ``(x, u)``, each ``(m, N, *shape)``: ``x(t_j)`` and ``dx/dt(t_j)``.
    """
    k = jnp.clip(jnp.searchsorted(ts, t, side="right") - 1, 0, ts.shape[0] - 2)
    h = ts[k + 1] - ts[k]
    theta = (t - ts[k]) / h
    th2, th3 = theta**2, theta**3
    xa, xb = jnp.moveaxis(xs[:, k], 1, 0), jnp.moveaxis(xs[:, k + 1], 1, 0)
    ua, ub = jnp.moveaxis(us[:, k], 1, 0), jnp.moveaxis(us[:, k + 1], 1, 0)

    def weigh(w, v):
        return jnp.reshape(w, (-1,) + (1,) * (v.ndim - 1)) * v

    x = (
        weigh(2 * th3 - 3 * th2 + 1, xa)
        + weigh(h * (th3 - 2 * th2 + theta), ua)
        + weigh(3 * th2 - 2 * th3, xb)
        + weigh(h * (th3 - th2), ub)
    )
    u = (
        weigh((6 * th2 - 6 * theta) / h, xa - xb)
        + weigh(3 * th2 - 4 * theta + 1, ua)
        + weigh(3 * th2 - 2 * theta, ub)
    )
    return x, u
