"""Bespoke scale-time (BST) solvers (Shaul et al. 2023, arXiv:2310.19075; docs/bst.md).

A BST solver takes ``n`` steps of a base Runge-Kutta method (RK1 = Euler, RK2 = midpoint) with
``h = 1 / n`` on the scale-time transformed field ``ubar_r(x) = (s'/s) x + t' s u_{t(r)}(x / s)``
(``xbar = s x``), mapping each step back by ``1 / s_{i+1}``. RK1 (``n`` NFE):

    x_{i+1} = ((s_i + h s'_i) / s_{i+1}) x_i + h t'_i (s_i / s_{i+1}) u_{t_i}(x_i).

RK2 (``2n`` NFE; also the half points ``i + 1/2``):

    z_i     = (s_i + (h/2) s'_i) x_i + (h/2) s_i t'_i u_{t_i}(x_i),
    x_{i+1} = (s_i / s_{i+1}) x_i + (h / s_{i+1}) [(s'_{i+1/2} / s_{i+1/2}) z_i
              + t'_{i+1/2} s_{i+1/2} u_{t_{i+1/2}}(z_i / s_{i+1/2})].

The coefficients live on the grid ``r_j = j / m`` (``m = nfe``: ``n`` for RK1, ``2n`` for RK2)
and are decoded from unconstrained parameters, valid by construction and the identity at zero:
``t_j = sum_{k<j} w_k / sum_k w_k`` with ``w = softmax([0, p_t])`` (increasing, ``t_0 = 0``,
``t_m = 1``), ``t'_j = exp(p_dt)``, ``s_0 = 1``, ``s_j = exp(p_s)``, ``s'_j = p_ds``:
``m - 1 + 3 m`` scalars, ``4n - 1`` (RK1) or ``8n - 1`` (RK2). Any valid parameters keep the
base order (Theorem 2.2).

Training minimises the RMSE upper bound (eqs. 24-26) by default: the local errors
``d_{i+1} = ||x(t_{i+1}) - step_i(x(t_i))||`` of all steps started on the exact path, at once,
weighted by ``M_i = prod_{j > i} L_j`` with the steps' Lipschitz constants ``L_j`` (for a field
with Lipschitz constant ``L_tau``). The path at the learned times comes from the cached solve
(``_paths.hermite``) through ``x(t) = sg[x(t)] + sg[x'(t)] (t - sg[t])`` (eq. 27): the exact
value, and the path's velocity as its derivative in ``t``, with no solver to differentiate.
The paper evaluates ``x'(t) = u_t(x(t))`` with the model; the cached path's velocity (exact to
``O(h^3)``) saves those calls, so one loss evaluation costs what sampling does: ``nfe`` calls
of the model, on ``n`` steps of ``B`` samples at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from bespoke_jax.core.checks import (
    MAX_LEARNED_NFE,
    as_noise,
    check_count,
    checked_field,
    finite_or_raise,
)
from bespoke_jax.core.metrics import per_sample_mse, rmse
from bespoke_jax.core.transforms import ScaleTime
from bespoke_jax.families.base import AdamDefaults
from bespoke_jax.truth.data import TrainingData
from bespoke_jax.truth.paths import NUM_POINTS, hermite, save_times

BASES = ("rk1", "rk2")
LOSS_KINDS = ("bound", "direct")
_STAGES = {"rk1": 1, "rk2": 2}


@dataclasses.dataclass(frozen=True)
class BST(AdamDefaults):
    """The BST family at a fixed NFE; build it with ``bst``.

    Attributes:
      nfe: model calls per sample: ``n`` (RK1) or ``2n`` (RK2) for ``n`` steps.
      source: the base Runge-Kutta method, ``"rk1"`` (Euler) or ``"rk2"`` (midpoint)
        (``bst(base=...)``).
      l_tau: ``L_tau``, the Lipschitz constant the bound assumes for the model's field.
      loss_kind: ``"bound"`` (RMSE upper bound on the cached path) or ``"direct"`` (the RMSE of
        the sample against the ground truth, through all ``n`` steps).
      path_points: saved times of the cached path (``"bound"`` only).
      default_steps, default_batch_size: training defaults for ``bj.train``, with
        ``default_learning_rate(steps)`` (Adam, warm-up then cosine decay from 1e-2).
    """

    nfe: int
    source: str = "rk2"
    l_tau: float = 1.0
    loss_kind: str = "bound"
    path_points: int = NUM_POINTS
    default_steps: int = 1000
    default_batch_size: int = 40

    name: ClassVar[str] = "bst"
    optimizer_name: ClassVar[str] = "Adam"
    peak_learning_rate: ClassVar[float] = 1e-2
    renamed_keys: ClassVar[dict[str, str]] = {"base": "source"}

    def __post_init__(self):
        if self.source not in BASES:
            raise ValueError(f"Unknown base {self.source!r}; valid bases: {BASES}.")
        check_count("nfe", self.nfe, 1, MAX_LEARNED_NFE)
        if self.nfe % _STAGES[self.source]:
            near = " or ".join(str(v) for v in (self.nfe - 1, self.nfe + 1) if v >= 2)
            raise ValueError(
                f"RK2-BST spends 2 NFE per step, so nfe must be even (2, 4, 6, 8, ...); got "
                f"{self.nfe}. Use nfe={near}, or base='rk1'."
            )
        if self.loss_kind not in LOSS_KINDS:
            raise ValueError(f"Unknown loss_kind {self.loss_kind!r}; valid: {LOSS_KINDS}.")
        if not self.l_tau >= 0.0:
            raise ValueError(f"l_tau must be >= 0, got {self.l_tau}.")
        if not isinstance(self.path_points, int | np.integer) or self.path_points < 2:
            raise ValueError(f"path_points must be an integer >= 2, got {self.path_points!r}.")

    @property
    def label(self) -> str:
        """``"RK1-BST"`` or ``"RK2-BST"``."""
        return f"{self.source.upper()}-BST"

    @property
    def num_steps(self) -> int:
        """``n``, the number of base RK steps."""
        return self.nfe // _STAGES[self.source]

    @property
    def num_params(self) -> int:
        """``4n - 1`` (RK1) or ``8n - 1`` (RK2): ``m - 1`` time logits, ``m`` each of t', s, s'."""
        return 4 * self.nfe - 1

    @property
    def save_ts(self) -> np.ndarray | None:
        """The cached path's times for the bound loss; ``None`` for the direct loss."""
        return save_times(self.path_points) if self.loss_kind == "bound" else None

    def init(self) -> dict:
        """The identity transform (``t = r``, ``t' = 1``, ``s = 1``, ``s' = 0``): plain RK1/RK2."""
        zeros = jnp.zeros((self.nfe,), dtype=jnp.result_type(float))
        return {"t": zeros[1:], "dt": zeros, "s": zeros, "ds": zeros}

    def coefficients(self, params) -> dict:
        """The decoded transform on the grid ``r_j = j / m``.

        Returns:
          ``{"r", "t", "s"}`` of shape ``(m + 1,)`` and ``{"dt", "ds"}`` (``t'``, ``s'``) of shape
          ``(m,)`` (the last point needs none).
        """
        one = jnp.ones((1,), dtype=params["s"].dtype)
        w = jax.nn.softmax(jnp.concatenate([0.0 * one, params["t"]]))
        t = jnp.concatenate([0.0 * one, jnp.cumsum(w)[:-1], one])
        s = jnp.concatenate([one, jnp.exp(params["s"])])
        r = jnp.linspace(0.0, 1.0, self.nfe + 1, dtype=t.dtype)
        return {"r": r, "t": t, "dt": jnp.exp(params["dt"]), "s": s, "ds": params["ds"]}

    def params_from_transform(self, transform: ScaleTime) -> dict:
        """The parameters whose coefficients are ``transform`` sampled on the grid.

        ``s`` is divided by ``s(0)`` (the solver is unchanged: ``xbar`` and the final ``1 / s_1``
        scale together). ``transform.t`` must increase from 0 to 1 on the grid, ``t' > 0``,
        ``s > 0``.
        """
        r = np.linspace(0.0, 1.0, self.nfe + 1)
        t, dt = np.asarray(transform.t(r)), np.asarray(transform.dt(r))[:-1]
        s, ds = np.asarray(transform.s(r)), np.asarray(transform.ds(r))[:-1]
        if not np.allclose([t[0], t[-1]], [0.0, 1.0]) or np.any(np.diff(t) <= 0):
            raise ValueError("transform.t must increase strictly from t(0) = 0 to t(1) = 1.")
        if np.any(dt <= 0) or np.any(s <= 0):
            raise ValueError("transform.t' and transform.s must be positive on [0, 1].")
        log_w = np.log(np.diff(t))
        dtype = jnp.result_type(float)
        return {
            "t": jnp.asarray(log_w[1:] - log_w[0], dtype),
            "dt": jnp.asarray(np.log(dt), dtype),
            "s": jnp.asarray(np.log(s[1:] / s[0]), dtype),
            "ds": jnp.asarray(ds / s[0], dtype),
        }

    def _step(self, c: dict, i, x, u: Callable, args):
        """Step ``i`` (0-based) from ``x (B, *shape)`` on the decoded coefficients ``c``."""
        h = 1.0 / self.num_steps
        t, dt, s, ds = c["t"], c["dt"], c["s"], c["ds"]
        if self.source == "rk1":
            v = u(t[i], x, args).astype(x.dtype)
            return ((s[i] + h * ds[i]) / s[i + 1]) * x + (h * dt[i] * s[i] / s[i + 1]) * v
        j, mid, end = 2 * i, 2 * i + 1, 2 * i + 2
        z = (s[j] + 0.5 * h * ds[j]) * x + (0.5 * h * s[j] * dt[j]) * u(t[j], x, args).astype(
            x.dtype
        )
        v = u(t[mid], z / s[mid], args).astype(x.dtype)
        return (s[j] / s[end]) * x + (h / s[end]) * ((ds[mid] / s[mid]) * z + dt[mid] * s[mid] * v)

    def step(self, params, i, x, u: Callable, args=None):
        """One bespoke RK step: ``x_{i+1} (B, *shape)`` from ``x_i``, ``i`` in ``[0, n)``."""
        return self._step(self.coefficients(params), i, x, u, args)

    def sample(self, params, u: Callable, x0: jax.Array, args=None) -> jax.Array:
        """``x1 (B, *shape)`` from noise ``x0 (B, *shape)`` in exactly ``nfe`` calls of ``u``."""
        c = self.coefficients(params)
        u, x0 = checked_field(u), as_noise(x0, args)
        x1, _ = lax.scan(
            lambda x, i: (self._step(c, i, x, u, args), None), x0, jnp.arange(self.num_steps)
        )
        return finite_or_raise(x1, u, x0, args, "BST sampling")

    def lipschitz(self, params) -> jax.Array:
        """``(n,)`` Lipschitz constants ``L_i`` of the steps, for a field with constant ``L_tau``.

        ``Lbar_j = |s'_j| / s_j + t'_j L_tau``; RK1: ``L_i = (s_i / s_{i+1}) (1 + h Lbar_i)``;
        RK2: ``L_i = (s_i / s_{i+1}) (1 + h Lbar_{i+1/2} (1 + (h/2) Lbar_i))``.
        """
        c = self.coefficients(params)
        h = 1.0 / self.num_steps
        s = c["s"]
        lbar = jnp.abs(c["ds"]) / s[:-1] + c["dt"] * self.l_tau
        if self.source == "rk1":
            return (s[:-1] / s[1:]) * (1.0 + h * lbar)
        return (s[:-2:2] / s[2::2]) * (1.0 + h * lbar[1::2] * (1.0 + 0.5 * h * lbar[::2]))

    def local_errors(self, params, u: Callable, batch: TrainingData, args=None) -> jax.Array:
        """``(n, B)`` local errors ``d_{i+1}`` (RMS norm) of every step started on the exact path.

        The path at the learned times ``t_i`` is the cached one (eq. 27 for the gradient); the
        ``n`` steps run as one batched (vmapped) step.
        """
        if batch.path_xs is None or batch.path_us is None:
            raise ValueError(
                "The bound loss needs the ground-truth path: build the training data with "
                "make_training_data(..., save_ts=family.save_ts)."
            )
        c = self.coefficients(params)
        t = c["t"][:: _STAGES[self.source]]
        fixed = lax.stop_gradient(t)
        x, v = hermite(batch.path_ts, batch.path_xs, batch.path_us, fixed)
        x = x + v * jnp.reshape(t - fixed, (-1,) + (1,) * (x.ndim - 1))
        u = checked_field(u)
        steps = jax.vmap(lambda i, xi: self._step(c, i, xi, u, args))(
            jnp.arange(self.num_steps), x[:-1]
        )
        return jnp.sqrt(jax.vmap(per_sample_mse)(x[1:], steps))

    def bound(self, params, u: Callable, batch: TrainingData, args=None) -> jax.Array:
        """``(B,)`` RMSE upper bounds ``sum_i M_i d_i``, ``M_i = prod_{j > i} L_j`` (eqs. 25-26)."""
        later = jnp.cumprod(self.lipschitz(params)[::-1])[::-1]
        weights = jnp.concatenate([later[1:], jnp.ones_like(later[:1])])
        return weights @ self.local_errors(params, u, batch, args)

    def loss(self, params, u: Callable, batch: TrainingData, args=None) -> jax.Array:
        """The mean bound (``loss_kind="bound"``) or the mean RMSE of the sample (``"direct"``)."""
        if self.loss_kind == "bound":
            return jnp.mean(self.bound(params, u, batch, args))
        return rmse(self.sample(params, u, batch.x0, args), batch.x1)

    def export(self, params) -> dict:
        """The decoded coefficients as plain lists for ``export_solver``: the transform on the
        grid, ``"r", "t", "s"`` (``m + 1``) and ``"dt", "ds"`` (``m``). ``export_solver`` adds
        the solver itself as ``"times", "a", "b"``."""
        return {k: np.asarray(v, np.float64).tolist() for k, v in self.coefficients(params).items()}

    def config(self) -> dict:
        """The fields of ``BST`` (``source`` is ``bst``'s ``base``)."""
        return {
            "nfe": int(self.nfe),
            "source": self.source,
            "l_tau": self.l_tau,
            "loss_kind": self.loss_kind,
            "path_points": self.path_points,
        }


def bst(
    nfe: int,
    *,
    base: str = "rk2",
    l_tau: float = 1.0,
    loss_kind: str = "bound",
    path_points: int = NUM_POINTS,
) -> BST:
    """Bespoke scale-time solvers with ``nfe`` model calls.

    Args:
      nfe: model calls per sample; even for ``base="rk2"``.
      base: ``"rk1"`` (Euler, ``nfe`` steps) or ``"rk2"`` (midpoint, ``nfe / 2`` steps).
      l_tau: the Lipschitz constant the RMSE bound assumes (paper: 1).
      loss_kind: ``"bound"`` (default, local errors on the cached path) or ``"direct"``.
      path_points: saved times of the cached ground-truth path for the bound.

    Returns:
      The ``BST`` family; ``init()`` reproduces ``bj.solvers.euler`` / ``midpoint`` at ``nfe``.
    """
    return BST(nfe, base, float(l_tau), loss_kind, int(path_points))
