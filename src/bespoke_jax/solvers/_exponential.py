"""Exponential integrators in data prediction: DDIM, DPM-Solver++ (2M, 3M) and UniPC (bh2).

On the grid ``t_i`` with ``alpha_i, sigma_i``, ``lambda_i = log(alpha_i / sigma_i)`` and
``h_i = lambda_{i+1} - lambda_i``, every step is the first-order update (docs/baselines.md)

    x_{i+1} = (sigma_{i+1} / sigma_i) x_i - alpha_{i+1} expm1(-h_i) D_i,

with ``D_i`` the data prediction ``m_i = x1_hat(t_i, x_i)`` (DDIM) or a multistep combination of
``m_i, m_{i-1}, ...`` (Lu et al. 2022; Zhao et al. 2023). The data prediction is read off the
velocity, ``x1_hat = (sigma' x - sigma u) / (sigma' alpha - sigma alpha')``, so each solver is a
linear combination of ``x0`` and the velocities. The model is never evaluated at ``t = 1``: the
last step is first order and goes into ``sigma = 0`` (``lambda = +inf``, ``x_n = m_{n-1}``), or
into ``sigma(1) > 0`` for a path that ends at a noise level (DDPM, truncated).
``lambda`` is ``-inf`` at ``t = 0`` when ``alpha_0 = 0`` (CondOT, cosine); a history point there
is infinitely far in ``lambda`` and drops out of the multistep corrections (their limit).

Per-step coefficients are computed from the grid first (static orders per step), then one
``lax.scan`` applies ``x_{i+1} = a_i x_i + sum_k c_{i,k} m_{i-k}``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from bespoke_jax.core.checks import require_scheduler
from bespoke_jax.core.outputs import data_prediction
from bespoke_jax.core.schedulers import Scheduler, reaches_data
from bespoke_jax.solvers._generic import ONE_PER_STEP, solver_grid
from bespoke_jax.solvers._spec import reports_nonfinite


class _Grid:
    """``alpha, sigma, lambda`` at the grid points and the first-order coefficients of each step.

    The data end ``t = 1`` is pinned to ``alpha = 1, sigma = 0, lambda = +inf`` when the path
    reaches the data there (no gradient flows through it: VP's ``sigma'`` is infinite there; a
    path that ends at a noise level, as DDPM's or a truncated one, keeps its own values) and
    ``lambda = -inf`` where ``alpha = 0``.
    """

    def __init__(self, scheduler: Scheduler, ts):
        data_end = (ts >= 1.0) & reaches_data(scheduler)
        ts = jnp.where(data_end, 0.5, ts)
        self.alpha = jnp.where(data_end, 1.0, scheduler.alpha(ts))
        self.sigma = jnp.where(data_end, 0.0, scheduler.sigma(ts))
        noise_end = self.alpha <= 0.0
        lam = scheduler.log_snr(jnp.where(noise_end, 0.5, ts))
        self.lam = jnp.where(data_end, jnp.inf, jnp.where(noise_end, -jnp.inf, lam))
        self.h = self.lam[1:] - self.lam[:-1]
        self.a = self.sigma[1:] / self.sigma[:-1]  # on x_i
        self.phi1 = jnp.expm1(-self.h)  # h phi_1(h) of the papers
        self.c0 = -self.alpha[1:] * self.phi1  # on m_i

    def q(self, idx, k):
        """``h_i / (lambda_i - lambda_{i-k})`` at steps ``idx`` (0 when ``lambda_{i-k} = -inf``)."""
        return self.h[idx] / (self.lam[idx] - self.lam[idx - k])


def _step_orders(order: int, steps: int, lower_order_final: bool) -> tuple[int, ...]:
    """Static order of each step: warm start ``min(order, i + 1)``, then lower order at the end."""
    i = np.arange(steps)
    orders = np.minimum(order, i + 1)
    if lower_order_final:
        orders = np.minimum(orders, steps - i)
    orders[-1] = 1  # into sigma = 0 (lambda = +inf) only the first-order step is finite
    return tuple(int(o) for o in orders)


def _multistep_scan(x1_hat, x0, ts, a, coeffs, args):
    """One NFE a step: ``m_i = x1_hat(t_i, x_i)``, ``x_{i+1} = a_i x_i + sum_k c_ik m_{i-k}``."""

    def step(carry, inputs):
        x, history = carry
        t, a_i, c_i = inputs
        history = jnp.concatenate([x1_hat(t, x, args)[None], history[:-1]])
        return (a_i * x + jnp.tensordot(c_i, history, axes=1), history), None

    history = jnp.zeros((coeffs.shape[1], *x0.shape), dtype=jnp.result_type(x0))
    (x1, _), _ = lax.scan(step, (x0, history), (ts[:-1], a, coeffs))
    return x1


def _data_prediction(u: Callable, scheduler: Scheduler) -> Callable:
    x1_hat = data_prediction(u, scheduler)
    return lambda t, x, args: x1_hat(t, x, u(t, x, args))


@reports_nonfinite(ONE_PER_STEP)
def ddim(u: Callable, x0, *, nfe: int, args=None, scheduler=None, grid=None) -> jax.Array:
    """DDIM: the first-order exponential integrator in data prediction, one NFE per step.

    ``x_{i+1} = (sigma_{i+1}/sigma_i) x_i + (alpha_{i+1} - sigma_{i+1} alpha_i / sigma_i) m_i``;
    for a CondOT model this is exactly Euler.

    Args:
      u: the velocity field ``u(t, x, args)``.
      x0: the noise, ``(B, *shape)``.
      nfe: the number of steps (any ``nfe >= 1``).
      args: passed to ``u``.
      scheduler: the model's scheduler (required).
      grid: ``"uniform"`` (default), ``"logsnr"``, ``"edm"`` or an ``(nfe + 1,)`` array.

    Returns:
      ``x1``, shape of ``x0``.
    """
    require_scheduler("ddim", scheduler)
    u, x0, ts = solver_grid("ddim", ONE_PER_STEP, u, x0, nfe, grid, scheduler, args)
    a, coeffs = _dpm_coefficients(ts, scheduler, (1,) * (ts.shape[0] - 1))
    return _multistep_scan(_data_prediction(u, scheduler), x0, ts, a, coeffs, args)


@functools.partial(jax.jit, static_argnames=("scheduler", "orders"))
def _dpm_coefficients(ts, scheduler: Scheduler, orders: tuple[int, ...]):
    """``multistep_dpm_solver_*_update`` as weights, for the static order of each step.

    Returns:
      ``(a, coeffs)``: ``(steps,)`` weights on ``x_i``, ``(steps, order)`` on ``m_i, m_{i-1}, ...``
    """
    g = _Grid(scheduler, ts)
    orders = np.asarray(orders)
    order = int(orders.max())
    coeffs = jnp.zeros((orders.size, order), dtype=g.h.dtype).at[:, 0].set(g.c0)
    idx = np.flatnonzero(orders == 2)
    if idx.size:  # D = m_i + (1/2) D1_0, D1_0 = q0 (m_i - m_{i-1})
        half = 0.5 * g.alpha[idx + 1] * g.phi1[idx] * g.q(idx, 1)
        coeffs = coeffs.at[idx, 0].add(-half).at[idx, 1].set(half)
    idx = np.flatnonzero(orders == 3)
    if idx.size:
        h, alpha = g.h[idx], g.alpha[idx + 1]
        q0 = g.q(idx, 1)  # 1 / r0
        q1 = h / (g.lam[idx - 1] - g.lam[idx - 2])  # 1 / r1
        phi2 = g.phi1[idx] / h + 1.0
        phi3 = phi2 / h - 0.5
        # D1 = D1_0 + w (D1_0 - D1_1), D2 = v (D1_0 - D1_1); D1_0 = q0 (m_i - m_{i-1}),
        # D1_1 = q1 (m_{i-1} - m_{i-2}); the update adds alpha (phi2 D1 - phi3 D2).
        w = q1 / (q0 + q1)
        v = q0 * q1 / (q0 + q1)
        on_d10 = alpha * (phi2 * (1.0 + w) - phi3 * v)
        on_d11 = alpha * (phi3 * v - phi2 * w)
        coeffs = (
            coeffs.at[idx, 0]
            .add(on_d10 * q0)
            .at[idx, 1]
            .set(on_d11 * q1 - on_d10 * q0)
            .at[idx, 2]
            .set(-on_d11 * q1)
        )
    return g.a, coeffs


@reports_nonfinite(ONE_PER_STEP)
def dpm_solver_pp(
    u: Callable,
    x0,
    *,
    nfe: int,
    args=None,
    scheduler=None,
    grid=None,
    order: int = 2,
    lower_order_final: bool = True,
) -> jax.Array:
    """Multistep DPM-Solver++ (2M or 3M) in data prediction (Lu et al. 2022, Algorithm 2).

    One NFE per step. Step ``i`` has order ``min(order, i + 1)`` (warm start); with
    ``lower_order_final`` and fewer than 10 steps, also at most ``n - i`` (as the official
    implementation); the last step, into ``sigma = 0``, is always first order. With
    ``r = h_{i-1} / h_i``, 2M is ``D_i = (1 + 1/(2r)) m_i - (1/(2r)) m_{i-1}`` in the first-order
    update; 3M adds the second difference (``multistep_dpm_solver_third_update``). The first-order
    first and last steps bound the global order of 2M and 3M to 2.

    Args:
      u: the velocity field ``u(t, x, args)``.
      x0: the noise, ``(B, *shape)``.
      nfe: the number of steps (any ``nfe >= 1``).
      args: passed to ``u``.
      scheduler: the model's scheduler (required).
      grid: ``"uniform"`` (default), ``"logsnr"``, ``"edm"`` or an ``(nfe + 1,)`` array.
      order: 2 or 3.
      lower_order_final: lower the order of the final steps when ``nfe < 10``.

    Returns:
      ``x1``, shape of ``x0``.
    """
    require_scheduler("dpm_solver_pp", scheduler)
    if order not in (2, 3):
        raise ValueError(f"dpm_solver_pp supports order=2 or order=3, got {order!r}.")
    u, x0, ts = solver_grid("dpm_solver_pp", ONE_PER_STEP, u, x0, nfe, grid, scheduler, args)
    steps = ts.shape[0] - 1
    orders = _step_orders(order, steps, lower_order_final and steps < 10)
    a, coeffs = _dpm_coefficients(ts, scheduler, orders)
    return _multistep_scan(_data_prediction(u, scheduler), x0, ts, a, coeffs, args)


def _unipc_b(hh, p: int):
    """``b_k = k! h phi_{k+1}(hh) / B(h)`` for ``k = 1..p`` with ``B(h) = expm1(hh)`` (bh2)."""
    phi1 = jnp.expm1(hh)
    phi_k = phi1 / hh - 1.0
    b, factorial = [], 1.0
    for k in range(1, p + 1):
        b.append(phi_k * factorial / phi1)
        factorial *= k + 1
        phi_k = phi_k / hh - 1.0 / factorial
    return jnp.stack(b, axis=-1)


def _vandermonde_solve(nodes, b):
    """``s`` with ``sum_k nodes_k^(P-j) s_k = b_j`` for ``j = 1..P``, by the Lagrange basis.

    ``s_k = sum_j l_{k,j} b_j / prod_{l != k} (z_k - z_l)`` where ``l_{k,j}`` are the coefficients,
    highest power first, of ``prod_{l != k} (z - z_l)``. Shapes: ``nodes, b`` ``(G, P)``.
    """
    size = nodes.shape[-1]
    s = []
    for k in range(size):
        poly, denominator = [jnp.ones_like(nodes[:, k])], jnp.ones_like(nodes[:, k])
        for l in range(size):
            if l != k:
                z = nodes[:, l]
                # poly * (x - z), highest power first
                poly = [
                    poly[0],
                    *(c - z * d for c, d in zip(poly[1:], poly[:-1], strict=True)),
                    -z * poly[-1],
                ]
                denominator = denominator * (nodes[:, k] - z)
        s.append(sum(c * b[:, j] for j, c in enumerate(poly)) / denominator)
    return jnp.stack(s, axis=-1)


def _unipc_weights(qs, b, with_new: bool):
    """Weights of ``m_{i-k} - m_i`` (and of ``m_{i+1} - m_i`` if ``with_new``) from ``R rho = b``.

    With ``r_k = 1 / q_k`` and ``rho_k = q_k^(P-1) s_k`` the system ``sum_k r_k^(j-1) rho_k = b_j``
    becomes ``sum_k q_k^(P-j) s_k (+ s_new) = b_j``: a Vandermonde system in the nodes ``q_k``
    (and 1), finite at ``q_k = 0``; the weight of ``m_{i-k} - m_i`` is ``rho_k / r_k = q_k^P s_k``.

    Args:
      qs: ``(G, p - 1)``, the ``q_k`` of the history points of ``G`` steps.
      b: ``(G, P)`` with ``P = p`` (corrector, ``with_new``) or ``p - 1`` (predictor).
    """
    nodes = jnp.concatenate([qs, jnp.ones_like(qs[:, :1])], axis=-1) if with_new else qs
    s = _vandermonde_solve(nodes, b)
    history = s[:, : qs.shape[1]] * qs ** b.shape[-1]
    return history, (s[:, -1] if with_new else None)


@functools.partial(jax.jit, static_argnames=("scheduler", "orders"))
def _unipc_coefficients(ts, scheduler: Scheduler, orders: tuple[int, ...]):
    """Predictor and corrector weights of ``multistep_uni_pc_bh_update`` (bh2, data prediction).

    Returns:
      ``(a, pred, corr, new)``: ``(steps,)`` weights on ``x_i``; ``(steps, order)`` weights on
      ``m_i, m_{i-1}, ...`` for the predicted and the corrected point; ``(steps,)`` the
      corrector's weight on ``m_{i+1}``.
    """
    g = _Grid(scheduler, ts)
    orders = np.asarray(orders)
    order = int(orders.max())
    pred = jnp.zeros((orders.size, order), dtype=g.h.dtype).at[:, 0].set(g.c0)
    corr, new = pred, jnp.zeros_like(g.h)
    for p in range(1, order + 1):
        idx = np.flatnonzero(orders == p)
        if not idx.size:
            continue
        scale = -g.alpha[idx + 1] * g.phi1[idx]  # -alpha_t B(h): residuals enter with this weight
        if p == 1:  # predictor: DDIM; corrector: rho_c = 1/2
            new = new.at[idx].set(0.5 * scale)
            corr = corr.at[idx, 0].add(-0.5 * scale)
            continue
        # q_k = 1 / r_k = h_i / (lambda_{i-k} - lambda_i) < 0 (0 for a point at lambda = -inf)
        qs = -jnp.stack([g.q(idx, k) for k in range(1, p)], axis=-1)
        b = _unipc_b(-g.h[idx], p)
        if p == 2:  # the reference's simplified predictor, rho_p = 1/2
            w_pred = 0.5 * qs
        else:
            w_pred, _ = _unipc_weights(qs, b[:, :-1], with_new=False)
        w_corr, w_new = _unipc_weights(qs, b, with_new=True)
        pred = (
            pred.at[idx, 0].add(-scale * w_pred.sum(-1)).at[idx, 1:p].set(scale[:, None] * w_pred)
        )
        corr = (
            corr.at[idx, 0]
            .add(-scale * (w_corr.sum(-1) + w_new))
            .at[idx, 1:p]
            .set(scale[:, None] * w_corr)
        )
        new = new.at[idx].set(scale * w_new)
    return g.a, pred, corr, new


@reports_nonfinite(ONE_PER_STEP)
def unipc(
    u: Callable,
    x0,
    *,
    nfe: int,
    args=None,
    scheduler=None,
    grid=None,
    order: int = 2,
    lower_order_final: bool = True,
) -> jax.Array:
    """Multistep UniPC (Zhao et al. 2023), ``B(h) = expm1(-h)`` (bh2), data prediction.

    One NFE per step. Step ``i`` (order ``min(order, i + 1, n - i)`` with ``lower_order_final``)
    predicts ``x_{i+1}`` with UniP, evaluates ``m_{i+1}`` there (the next step's model value, no
    extra NFE) and corrects ``x_{i+1}`` with UniC using it; the last step (into ``sigma = 0``) is
    the first-order predictor alone, ``x_n = m_{n-1}``. Follows ``multistep_uni_pc_bh_update`` of
    the reference implementation, including its simplified ``rho = 1/2`` of the order-2 predictor
    and of the order-1 corrector. The first-order last step bounds the global order to 2 (UniPC-2
    shows order 3 where the end steps are short, e.g. on the ``"logsnr"`` grid).

    Args:
      u: the velocity field ``u(t, x, args)``.
      x0: the noise, ``(B, *shape)``.
      nfe: the number of steps (any ``nfe >= 1``).
      args: passed to ``u``.
      scheduler: the model's scheduler (required).
      grid: ``"uniform"`` (default), ``"logsnr"``, ``"edm"`` or an ``(nfe + 1,)`` array.
      order: 1, 2 (default, UniPC-2) or 3.
      lower_order_final: lower the order of the final steps to ``n - i``.

    Returns:
      ``x1``, shape of ``x0``.
    """
    require_scheduler("unipc", scheduler)
    if order not in (1, 2, 3):
        raise ValueError(f"unipc supports order=1, 2 or 3, got {order!r}.")
    u, x0, ts = solver_grid("unipc", ONE_PER_STEP, u, x0, nfe, grid, scheduler, args)
    orders = _step_orders(order, ts.shape[0] - 1, lower_order_final)
    a, pred, corr, new = _unipc_coefficients(ts, scheduler, orders)
    x1_hat = _data_prediction(u, scheduler)
    # Scan step i evaluates m_i at the predicted point, completes the correction of step i - 1
    # with it (step -1 is the identity x_0 = x0) and predicts x_{i+1}; the last prediction, a
    # first-order step, is x_n.
    a_prev = jnp.concatenate([jnp.ones_like(a[:1]), a[:-1]])
    corr_prev = jnp.concatenate([jnp.zeros_like(corr[:1]), corr[:-1]])
    new_prev = jnp.concatenate([jnp.zeros_like(new[:1]), new[:-1]])

    def step(carry, inputs):
        x_prev, x_pred, history = carry  # history: m_{i-1}, m_{i-2}, ..., newest first
        t, a_p, c_corr, c_new, a_i, c_pred = inputs
        m = x1_hat(t, x_pred, args)
        x = a_p * x_prev + jnp.tensordot(c_corr, history, axes=1) + c_new * m
        history = jnp.concatenate([m[None], history[:-1]])
        return (x, a_i * x + jnp.tensordot(c_pred, history, axes=1), history), None

    history = jnp.zeros((pred.shape[1], *x0.shape), dtype=jnp.result_type(x0))
    inputs = (ts[:-1], a_prev, corr_prev, new_prev, a, pred)
    (_, x1, _), _ = lax.scan(step, (x0, x0, history), inputs)
    return x1
