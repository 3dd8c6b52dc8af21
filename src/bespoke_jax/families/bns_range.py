"""One BNS solver for a range of classifier-free guidance scales (docs/guidance.md).

The noise and velocity weights of a BNS solver become smooth functions of the guidance scale
``w in [w_min, w_max]``: with ``z = 2 (w - w_min) / (w_max - w_min) - 1`` each residual of ``a``
and ``b`` is a Chebyshev series

    p(w) = sum_{k<=K} c_k T_k(z),   T_0 = 1, T_1 = z, T_{k+1} = 2 z T_k - T_{k-1},

all ``c_k = 0`` at ``init()``, so the source solver is reproduced at every ``w``. The time grid
(and the preconditioning ``sigma0``, a fixed hyper-parameter) is shared by every ``w``: the model
is called at one scalar time per step for the whole batch, as a fixed solver does, even when
each sample has its own ``w`` (``args["guidance"]`` of shape ``(B,)``); a per-sample ``w`` then
gives per-sample weights, combined by one batched product per step. Outside the range ``z`` is
clamped to ``[-1, 1]``: the solver of the nearest end (with a warning when ``w`` is concrete).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from bespoke_jax.families.bns import BNS

DEFAULT_DEGREE = 2


@dataclasses.dataclass(frozen=True)
class BNSRange(BNS):
    """The BNS family over a guidance range; build it with ``bns(..., guidance=(lo, hi))``.

    Attributes:
      guidance: ``(w_min, w_max)``, the range the solver serves.
      degree: ``K``, the degree of the Chebyshev series of each weight in ``w``.
    """

    guidance: tuple[float, float] = (0.0, 1.0)
    degree: int = DEFAULT_DEGREE

    name: ClassVar[str] = "bns_range"
    label: ClassVar[str] = "BNS over w"

    def __post_init__(self):
        try:
            lo, hi = (float(w) for w in self.guidance)
        except (TypeError, ValueError):
            raise ValueError(
                f"guidance must be a range (w_min, w_max), got {self.guidance!r}."
            ) from None
        if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
            raise ValueError(
                f"guidance must be finite (w_min, w_max) with w_min < w_max, got {self.guidance!r}."
            )
        if not isinstance(self.degree, int | np.integer) or self.degree < 0:
            raise ValueError(f"degree must be a non-negative int, got {self.degree!r}.")
        object.__setattr__(self, "guidance", (lo, hi))
        object.__setattr__(self, "degree", int(self.degree))
        super().__post_init__()

    @property
    def num_params(self) -> int:
        """``n + 1`` grid weights and ``K + 1`` series of the ``a``, ``b`` residuals."""
        n = self.nfe
        return n + 1 + (self.degree + 1) * (n + 1 + n * (n + 1) // 2)

    def init(self) -> dict:
        """Zero residuals: the source solver at every ``w``."""
        n, k = self.nfe, self.degree + 1
        return {"grid": jnp.zeros(n + 1), "a": jnp.zeros((k, n + 1)), "b": jnp.zeros((k, n, n))}

    def basis(self, w) -> jax.Array:
        """``T_k(z(w))`` for ``k = 0..K``: ``(K + 1,)`` for a scalar ``w``, ``(B, K + 1)`` for
        ``(B,)``; ``z`` clamped to ``[-1, 1]``."""
        lo, hi = self.guidance
        w = jnp.asarray(w, jnp.result_type(float))
        z = jnp.clip(2.0 * (w - lo) / (hi - lo) - 1.0, -1.0, 1.0)
        terms = [jnp.ones_like(z), z]
        while len(terms) <= self.degree:
            terms.append(2.0 * z * terms[-1] - terms[-2])
        return jnp.stack(terms[: self.degree + 1], axis=-1)

    def _at(self, params, row) -> dict:
        """``BNS.coefficients`` of the residuals ``row @ c`` (``row``: basis values ``(K + 1,)``,
        or ``(B, K + 1)``: ``a``, ``b`` are affine in their residuals, so they broadcast to
        ``(B, n + 1)``, ``(B, n, n)`` in one pass; the grid is shared)."""
        params = {k: v.astype(row.dtype) for k, v in params.items()}
        residuals = {
            "grid": params["grid"],
            "a": row @ params["a"],
            "b": jnp.tensordot(row, params["b"], axes=1),
        }
        return BNS.coefficients(self, residuals)

    def coefficients(self, params, guidance=None) -> dict:
        """The NS coefficients at ``guidance``: ``{"grid": ts (n,), "a", "b"}`` with ``a (n + 1,)``,
        ``b (n, n)`` for a scalar ``w`` and ``a (B, n + 1)``, ``b (B, n, n)`` for ``(B,)``.

        Without ``guidance``, the series: ``{"grid", "a_series" (K + 1, n + 1), "b_series"
        (K + 1, n, n)}`` with ``a(w) = sum_k a_series[k] T_k(z)`` (``b`` alike).
        """
        if guidance is None:
            rows = jax.vmap(lambda row: self._at(params, row))(jnp.eye(self.degree + 1))
            source = self._at(params, jnp.zeros(self.degree + 1))
            later = jnp.arange(self.degree + 1) > 0  # T_0 carries the source's weights
            return {
                "grid": source["grid"],
                "a_series": rows["a"] - jnp.where(later[:, None], source["a"], 0.0),
                "b_series": rows["b"] - jnp.where(later[:, None, None], source["b"], 0.0),
            }
        return self._at(params, self.basis(guidance))

    def export(self, params, guidance=None) -> dict:
        """``BNS.export``'s record with ``"a"`` and ``"b"`` tabulated at the scales
        ``"guidance"`` (``guidance``, default 9 evenly spaced over the range), plus
        ``"guidance_range"``, ``"degree"``, ``"a_series"`` and ``"b_series"``."""
        lo, hi = self.guidance
        ws = np.linspace(lo, hi, 9) if guidance is None else np.asarray(guidance, np.float64)
        if ws.ndim != 1 or not ws.size:
            raise ValueError(f"guidance must be a 1-D list of scales, got {guidance!r}.")
        self.check_guidance(ws)
        # the shared grid, model times and preconditioning, read off the plain family
        plain = BNS(self.nfe, self.source, self.sigma0, self.scheduler)
        record = plain.export({k: v if k == "grid" else v[0] for k, v in params.items()})
        tables = [self.coefficients(params, w) for w in ws]
        series = self.coefficients(params)
        record.update(
            {key: np.asarray([c[key] for c in tables], np.float64).tolist() for key in ("a", "b")}
        )
        record.update(
            {key: np.asarray(series[key], np.float64).tolist() for key in ("a_series", "b_series")}
        )
        record.update(guidance_range=[lo, hi], guidance=ws.tolist(), degree=self.degree)
        return record

    def guidance_of(self, args, batch_size: int) -> jax.Array:
        """``args["guidance"]``, a scalar or ``(B,)``; warns (when concrete) outside the range."""
        if not isinstance(args, dict) or "guidance" not in args:
            raise ValueError(
                f"This solver serves guidance scales in {list(self.guidance)}: pass args with a "
                f"'guidance' entry (a scalar or one scale per sample), e.g. model.args(labels, w)."
            )
        w = args["guidance"]
        if np.ndim(w) not in (0, 1) or (np.ndim(w) == 1 and np.shape(w)[0] != batch_size):
            raise ValueError(
                f"args['guidance'] must be a scalar or have shape ({batch_size},), got "
                f"{np.shape(w)}."
            )
        self.check_guidance(w)
        return w

    def check_guidance(self, w) -> None:
        """Warn when a concrete ``w`` lies outside the range (the solver then clamps it)."""
        if isinstance(w, jax.core.Tracer):
            return
        lo, hi = self.guidance
        values = np.asarray(w)
        if values.size and (values.min() < lo or values.max() > hi):
            warnings.warn(
                f"guidance {values.min():g}..{values.max():g} lies outside this solver's range "
                f"[{lo:g}, {hi:g}]: it samples with the coefficients of the nearest end of the "
                f"range. Train a solver over a range that holds it.",
                UserWarning,
                stacklevel=3,
            )

    def draw_guidance(self, key, n: int, distribution: str = "chebyshev") -> jax.Array:
        """``n`` i.i.d. scales on ``[w_min, w_max]`` for training and validation (pass them as
        ``args["guidance"]``, one per sample).

        Args:
          key: a PRNG key.
          n: the number of scales.
          distribution: ``"chebyshev"`` (default): ``z = cos(pi U)``, ``U`` uniform (the
            arcsine density ``1 / (pi sqrt(1 - z^2))``, the weight of the Chebyshev series:
            denser at the ends of the range, where a series has the most freedom; measured on
            digits it beats uniform draws at the ends, docs/guidance.md), or ``"uniform"``.
        """
        lo, hi = self.guidance
        u = jax.random.uniform(key, (n,))
        if distribution == "uniform":
            return lo + (hi - lo) * u
        if distribution == "chebyshev":
            return lo + 0.5 * (hi - lo) * (1.0 + jnp.cos(jnp.pi * u))
        raise ValueError(f"distribution must be 'uniform' or 'chebyshev', got {distribution!r}.")

    def sample(self, params, u: Callable, x0: jax.Array, args=None) -> jax.Array:
        """``x1 (B, *shape)`` at ``w = args["guidance"]`` in exactly ``nfe`` calls of ``u``."""
        w = self.guidance_of(args, x0.shape[0])
        return self.integrate(self.coefficients(params, w), u, x0, args)

    def config(self) -> dict:
        """The arguments of ``bns``, with the range and the degree."""
        return {**super().config(), "guidance": list(self.guidance), "degree": self.degree}
