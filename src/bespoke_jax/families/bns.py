"""Bespoke non-stationary (BNS) solvers (Shaul et al. 2024, arXiv:2403.01329; docs/bns.md).

An n-NFE NS solver on the grid ``0 <= t_0 <= ... <= t_{n-1} <= 1`` evaluates

    x_0 = a_0 x0,   u_i = u_{t_i}(x_i),   x_{i+1} = a_{i+1} x0 + sum_{j<=i} b_{ij} u_j,

and returns ``x_n``. ``a_0`` (1 for every baseline but EDM) adds one parameter to the paper's
``n (n + 5) / 2 + 1``. With ``sigma0 != 1`` the solver runs on the preconditioned field
``ubar`` in r-time (BNS eq. 14), from ``s(0) x0``, and returns ``x_n / s(1)``.

Parameters are residuals from the initial solver, scaled per coefficient, all zero at ``init()``
(Adam then moves every coefficient in the units of its size, ``h = 1 / n``): the grid is
``t_i = sum_{k<=i} d_k`` with increments ``d = w^2 / sum(w^2)``, ``w = w_init + sqrt(h) p_grid``,
valid by construction; ``d`` may be 0 (heun, rk4 and edm call the field twice at one time),
where ``w_init`` is a floor whose square is below float resolution, so init reproduces the
source and the tie can open. ``a = a_init + h p_a`` and ``b = b_init + h mask * p_b`` with ``b``
a masked lower-triangular ``(n, n)`` matrix, so every shape is static under jit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from bespoke_jax.core.checks import as_noise, check_learned_nfe, checked_field, finite_or_raise
from bespoke_jax.core.metrics import log_mse
from bespoke_jax.core.outputs import broadcast_scale
from bespoke_jax.core.schedulers import Scheduler
from bespoke_jax.core.transforms import precondition
from bespoke_jax.families.base import warmup_cosine
from bespoke_jax.solvers.ns_coefficients import NSCoefficients, ns_coefficients
from bespoke_jax.truth.data import TrainingData


@dataclasses.dataclass(frozen=True)
class BNS:
    """The BNS family at a fixed NFE; build it with ``bns``.

    Attributes:
      nfe: model calls per sample (the number of steps n).
      source: the baseline of ``init()`` (``bns(init=...)``).
      sigma0: the preconditioning scale (1: none).
      scheduler: the model's scheduler (for exponential sources, edm and ``sigma0 != 1``).
      default_steps, default_batch_size: training defaults for ``bj.train``, with
        ``default_optimizer(steps)`` (or Adam with ``default_learning_rate(steps)``).
      initial: the source solver's ``NSCoefficients`` (read off it when the family is built).
    """

    nfe: int
    source: str = "midpoint"
    sigma0: float = 1.0
    scheduler: Scheduler | None = None
    default_steps: int = 1000
    default_batch_size: int = 40
    initial: NSCoefficients = dataclasses.field(init=False, repr=False, compare=False)

    name: ClassVar[str] = "bns"
    label: ClassVar[str] = "BNS"
    optimizer_name: ClassVar[str] = "Prodigy"
    renamed_keys: ClassVar[dict[str, str]] = {"init": "source"}

    def __post_init__(self):
        check_learned_nfe(self.nfe)
        init = ns_coefficients(self.source, self.nfe, scheduler=self.scheduler, sigma0=self.sigma0)
        object.__setattr__(self, "initial", init)

    @property
    def num_params(self) -> int:
        """``(n + 1)`` grid weights, ``n + 1`` values of ``a``, ``n (n + 1) / 2`` of ``b``."""
        n = self.nfe
        return 2 * (n + 1) + n * (n + 1) // 2

    @property
    def save_ts(self) -> None:
        """BNS trains on (noise, sample) pairs only."""
        return None

    def init(self) -> dict:
        """Zero residuals: the source solver."""
        n = self.nfe
        return {"grid": jnp.zeros(n + 1), "a": jnp.zeros(n + 1), "b": jnp.zeros((n, n))}

    def default_optimizer(
        self, steps: int | None = None, learning_rate: float | optax.Schedule | None = None
    ) -> optax.GradientTransformation:
        """Adam at ``learning_rate`` when given; else Prodigy (Adam whose step size is estimated
        from the distance travelled from the init) with a 5% warm-up and cosine decay to 0 over
        ``steps``.

        The distance from the source solver to the optimum differs by orders of magnitude between
        models (a closed-form mixture and a guided network), so no fixed Adam learning rate suits
        both; Prodigy matched the best tuned Adam rate on the mixture and beat it on digits.
        """
        if learning_rate is not None:
            return optax.adam(learning_rate)
        steps = self.default_steps if steps is None else steps
        schedule = optax.warmup_cosine_decay_schedule(0.0, 1.0, steps // 20, steps, 0.0)
        return optax.contrib.prodigy(schedule, safeguard_warmup=True)

    def default_learning_rate(self, steps: int | None = None) -> optax.Schedule:
        """Adam's learning rate when ``default_optimizer`` is not used: a 5% warm-up to ``peak``,
        then cosine decay to 0 over ``steps``.

        ``peak = 8e-3 (4 / n)^2``: the residuals are in units of ``h = 1 / n`` and the distance
        from the source solver to the optimum shrinks with ``n`` (tuned on the 64-d mixture
        from a midpoint init, NFE 4-20; guided digits wanted 10x more).
        """
        steps = self.default_steps if steps is None else steps
        return warmup_cosine(8e-3 * (4.0 / self.nfe) ** 2, steps)

    def coefficients(self, params) -> dict:
        """The NS coefficients of ``params``: ``{"grid": ts (n,), "a": (n + 1,), "b": (n, n)}``
        (``ts`` the solver times r, ``b`` lower triangular)."""
        n = self.nfe
        init = self.initial
        dtype = jnp.result_type(float)
        h = 1.0 / n
        increments = np.diff(init.ts, prepend=0.0, append=1.0)
        floor = float(jnp.finfo(dtype).eps)
        w = jnp.asarray(np.sqrt(np.maximum(increments, floor**2)), dtype)
        w = w + np.sqrt(h) * params["grid"]
        d = jnp.square(w)
        ts = jnp.cumsum(d)[:n] / jnp.sum(d)
        a = jnp.asarray(init.a, dtype) + h * params["a"]
        mask = np.tril(np.ones((n, n)))
        b = jnp.asarray(init.b, dtype) + h * mask * params["b"]
        return {"grid": ts, "a": a, "b": b}

    def export(self, params) -> dict:
        """The family's own keys for ``export_solver``: ``"grid"`` (the ``n`` solver times r of
        the preconditioned field) and ``"sigma0"``. ``export_solver`` adds the solver itself as
        ``"times", "a", "b"`` on the original field, the preconditioning folded in."""
        grid = np.asarray(self.coefficients(params)["grid"], dtype=np.float64)
        return {"grid": grid.tolist(), "sigma0": self.sigma0}

    def _field(self, u: Callable):
        """The field the solver integrates and the preconditioning transform (``None``: none)."""
        if self.sigma0 == 1.0:
            return u, None
        return precondition(u, self.scheduler, self.sigma0)

    def sample(self, params, u: Callable, x0: jax.Array, args=None) -> jax.Array:
        """``x1 (B, *shape)`` from noise ``x0 (B, *shape)`` in exactly ``nfe`` calls of ``u``."""
        return self.integrate(self.coefficients(params), u, x0, args)

    def integrate(self, c: dict, u: Callable, x0: jax.Array, args=None) -> jax.Array:
        """The NS solver of the coefficients ``c`` run on ``u`` from ``x0 (B, *shape)``.

        ``c["grid"] (n,)``; ``c["a"] (n + 1,)`` and ``c["b"] (n, n)`` are shared by the batch,
        or per sample: ``(B, n + 1)`` and ``(B, n, n)``. A fixed ``(n + 1, B * size)`` buffer
        ``[x0, u_0, ..., u_{n-1}]`` (flat, zeros not yet computed) rides in the ``lax.scan``
        carry, so ``x_{i+1} = [a_{i+1}, b_i] @ buffer`` is one matrix-vector product (per
        sample: one batched product ``(B, n + 1) x (B, n + 1, size)``).
        """
        ts, a, b = c["grid"], c["a"], c["b"]
        x0 = as_noise(x0, args)
        field, transform = self._field(checked_field(u))
        start = x0 if transform is None else transform.s(0.0) * x0
        weights = jnp.concatenate([a[..., 1:, None], b], axis=-1)
        per_sample = weights.ndim == 3
        if per_sample:
            weights = jnp.moveaxis(weights, 0, 1)  # (n, B, n + 1): scanned over steps

        def combine(row, buffer):
            if not per_sample:
                return jnp.dot(row, buffer)
            return jnp.einsum(
                "bj,jbd->bd", row, jnp.reshape(buffer, (self.nfe + 1, *row.shape[:1], -1))
            )

        def step(carry, inputs):
            x, buffer = carry
            i, t, row = inputs
            velocity = jnp.reshape(field(t, x, args), (1, -1)).astype(buffer.dtype)
            buffer = lax.dynamic_update_index_in_dim(buffer, velocity, i + 1, 0)
            return (jnp.reshape(combine(row, buffer), x0.shape), buffer), None

        buffer = jnp.zeros((self.nfe + 1, x0.size), dtype=jnp.result_type(x0))
        buffer = buffer.at[0].set(jnp.reshape(start, -1))
        inputs = (jnp.arange(self.nfe), ts, weights)
        (x, _), _ = lax.scan(step, (broadcast_scale(a[..., 0], start) * start, buffer), inputs)
        x1 = x if transform is None else x / transform.s(1.0)
        return finite_or_raise(x1, u, x0, args, "BNS sampling")

    def loss(self, params, u: Callable, batch: TrainingData, args=None) -> jax.Array:
        """``E log ||x_n - x(1)||^2`` (RMS norm; BNS eq. 13 without its sign): minimise it."""
        return log_mse(self.sample(params, u, batch.x0, args), batch.x1)

    def config(self) -> dict:
        """The fields of ``BNS`` (``source`` is ``bns``'s ``init``; the scheduler as its config)."""
        scheduler = None if self.scheduler is None else self.scheduler.to_config()
        return {
            "nfe": self.nfe,
            "source": self.source,
            "sigma0": self.sigma0,
            "scheduler": scheduler,
        }


def bns(
    nfe: int,
    *,
    init: str = "midpoint",
    sigma0: float = 1.0,
    scheduler=None,
    guidance: tuple[float, float] | None = None,
    degree: int | None = None,
) -> BNS:
    """Bespoke non-stationary solvers with ``nfe`` model calls, initialised from a baseline.

    Args:
      nfe: model calls per sample; ``init`` must be able to spend it exactly.
      init: a name of ``bj.solvers.NAMES``; ``init()`` reproduces that solver (on the
        preconditioned field when ``sigma0 != 1``).
      sigma0: preconditioning scale ``sigmabar_t = sigma0 sigma_t`` (BNS eq. 14), positive.
      scheduler: the model's scheduler; required by ddim, dpm_solver_pp, unipc, edm and by
        ``sigma0 != 1``.
      guidance: ``(w_min, w_max)``: one solver for every classifier-free guidance scale in
        that range, read from ``args["guidance"]`` (a scalar or ``(B,)``) when sampling
        (``BNSRange``); ``None``: a solver for the one scale it is trained at.
      degree: with ``guidance``, the degree of the Chebyshev series in ``w`` of each weight
        (default 2).

    Returns:
      The ``BNS`` family (a ``BNSRange`` with ``guidance``).
    """
    nfe = int(nfe) if isinstance(nfe, np.integer) else nfe
    if guidance is None:
        if degree is not None:
            raise ValueError("degree is the degree in the guidance scale: give guidance too.")
        return BNS(nfe, init, float(sigma0), scheduler)
    from bespoke_jax.families.bns_range import DEFAULT_DEGREE, BNSRange

    degree = DEFAULT_DEGREE if degree is None else degree
    return BNSRange(nfe, init, float(sigma0), scheduler, guidance=guidance, degree=degree)
