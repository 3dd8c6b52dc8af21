"""Learned time grids for the baseline solvers (LD3 / GITS kind; docs/export.md).

The parameters are the time grid ``0 = t_0 < t_1 < ... < t_N = 1`` of a fixed baseline
``bj.solvers.NAME`` taking ``N`` steps for ``nfe`` model calls, and nothing else: ``N`` logits
``p`` with increments ``t_{i+1} - t_i = softmax(p)_i``, so every parameter value is a valid grid
(positive increments summing to 1, both end points exact). ``init()`` is ``p = log(diff(g))``
for the solver's default grid ``g`` (``"uniform"``; ``"edm"`` for EDM) or another named grid.
Training minimises the BNS loss ``E log ||x_N - x(1)||^2`` on (noise, sample) pairs through the
solver itself: every baseline is differentiable with respect to an explicit grid.

Both end points are fixed for every solver: the exponential integrators pin ``t = 1`` to
``lambda = +inf`` and never evaluate the model there, and EDM starts at ``sigma_max = 80``
whatever ``t_0`` (its interior points must keep ``sigma / alpha < 80``: a runtime error names
it). Interior points stay strictly inside ``(0, 1)``, where the log-SNR is finite.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from bespoke_jax.core.checks import require_scheduler
from bespoke_jax.core.metrics import log_mse
from bespoke_jax.core.schedulers import Scheduler
from bespoke_jax.families.base import AdamDefaults
from bespoke_jax.solvers import GRIDS, NAMES, SPECS, make_grid, steps_for
from bespoke_jax.truth.data import TrainingData


@dataclasses.dataclass(frozen=True)
class LearnedGrid(AdamDefaults):
    """The learned-grid family of one baseline at a fixed NFE; build it with ``learned_grid``.

    Attributes:
      nfe: model calls per sample.
      source: the baseline's name in ``bj.solvers.NAMES`` (``learned_grid``'s ``solver``).
      scheduler: the model's scheduler (the exponential solvers, edm and the logsnr/edm grids).
      init_grid: the named grid of ``init()`` (``None``: the solver's default).
      solver_options: further keyword arguments of the solver, as sorted ``(name, value)`` pairs.
      default_steps, default_batch_size: training defaults for ``bj.train``.
      initial: the ``(N + 1,)`` grid of ``init()`` (float64).
    """

    nfe: int
    source: str = "dpm_solver_pp"
    scheduler: Scheduler | None = None
    init_grid: str | None = None
    solver_options: tuple = ()
    default_steps: int = 600
    default_batch_size: int = 64
    initial: np.ndarray = dataclasses.field(init=False, repr=False, compare=False)

    name: ClassVar[str] = "grid"
    optimizer_name: ClassVar[str] = "Adam"
    peak_learning_rate: ClassVar[float] = 3e-2
    renamed_keys: ClassVar[dict[str, str]] = {"solver": "source"}

    def __post_init__(self):
        if isinstance(self.solver_options, dict):  # as read back from solver.json
            object.__setattr__(self, "solver_options", tuple(sorted(self.solver_options.items())))
        if self.source not in SPECS:
            raise ValueError(f"Unknown solver {self.source!r}; valid names: {NAMES}.")
        if SPECS[self.source].requires_scheduler:
            require_scheduler(self.source, self.scheduler)
        kind = SPECS[self.source].default_grid if self.init_grid is None else self.init_grid
        if kind not in GRIDS:
            raise ValueError(f"Unknown init_grid {kind!r}; valid grids: {GRIDS}.")
        grid = np.asarray(make_grid(kind, steps_for(self.source, self.nfe), self.scheduler))
        object.__setattr__(self, "initial", grid.astype(np.float64))
        try:  # the options are the solver's: check them once, abstractly, not at the first sample
            probe = jax.ShapeDtypeStruct((1, 1), jnp.result_type(float))
            jax.eval_shape(lambda p, x: self.sample(p, lambda t, x, a: x, x), self.init(), probe)
        except TypeError as err:
            options = dict(self.solver_options)
            raise ValueError(f"{self.source} does not take {options}: {err}.") from None

    @property
    def num_steps(self) -> int:
        """``N``, the solver's steps for ``nfe`` (``nfe`` itself for one-call-a-step solvers)."""
        return self.initial.size - 1

    @property
    def num_params(self) -> int:
        """``N <= nfe``: one logit per step."""
        return self.num_steps

    @property
    def save_ts(self) -> None:
        """The loss needs (noise, sample) pairs only."""
        return None

    @property
    def label(self) -> str:
        """``grid-SOLVER-NFE``, e.g. ``grid-dpm_solver_pp-8``."""
        return f"{self.name}-{self.source}-{self.nfe}"

    def init(self) -> dict:
        """``{"grid": log(diff(initial))}``: the solver on its initial grid."""
        return {"grid": jnp.asarray(np.log(np.diff(self.initial)), jnp.result_type(float))}

    def coefficients(self, params) -> dict:
        """``{"grid": (N + 1,)}``: ``t_0 = 0``, ``t_{i+1} = t_i + softmax(p)_i``, ``t_N = 1``."""
        d = jax.nn.softmax(params["grid"])
        edge = jnp.ones((1,), d.dtype)
        return {"grid": jnp.concatenate([0.0 * edge, jnp.cumsum(d)[:-1], edge])}

    def sample(self, params, u: Callable, x0: jax.Array, args=None) -> jax.Array:
        """``bj.solvers.SOLVER(u, x0, nfe=nfe, grid=learned grid)``: exactly ``nfe`` calls."""
        grid = self.coefficients(params)["grid"].astype(jnp.result_type(x0))
        fn = SPECS[self.source].fn
        options = dict(self.solver_options)
        return fn(u, x0, nfe=self.nfe, args=args, scheduler=self.scheduler, grid=grid, **options)

    def loss(self, params, u: Callable, batch: TrainingData, args=None) -> jax.Array:
        """The BNS loss ``E log ||x_N - x(1)||^2`` (``log_mse``)."""
        return log_mse(self.sample(params, u, batch.x0, args), batch.x1)

    def export(self, params) -> dict:
        """The solver, its options and the learned grid, for ``export_solver``.

        ``"schedule"`` (the learned grid) is where the export gives the noise levels of other
        libraries' schedulers.
        """
        grid = np.asarray(self.coefficients(params)["grid"], np.float64).tolist()
        options = dict(self.solver_options)
        return {"solver": self.source, "solver_options": options, "grid": grid, "schedule": grid}

    def config(self) -> dict:
        """The fields of ``LearnedGrid`` (``source`` is ``learned_grid``'s ``solver``; the
        scheduler as its config)."""
        scheduler = None if self.scheduler is None else self.scheduler.to_config()
        return {
            "nfe": int(self.nfe),
            "source": self.source,
            "scheduler": scheduler,
            "init_grid": self.init_grid,
            "solver_options": dict(self.solver_options),
        }


def learned_grid(
    nfe: int,
    *,
    solver: str = "dpm_solver_pp",
    scheduler: Scheduler | None = None,
    init_grid: str | None = None,
    **solver_options,
) -> LearnedGrid:
    """A learned time grid for baseline ``solver`` at ``nfe`` model calls.

    Args:
      nfe: model calls per sample; ``solver`` must be able to spend it exactly.
      solver: a name of ``bj.solvers.NAMES``.
      scheduler: the model's scheduler; required by ddim, dpm_solver_pp, unipc, edm and by the
        ``"logsnr"`` / ``"edm"`` initial grids.
      init_grid: ``"uniform"``, ``"logsnr"`` or ``"edm"``; ``None``: the solver's default grid.
      **solver_options: passed to the solver (e.g. ``order=3`` for DPM-Solver++(3M)).

    Returns:
      The ``LearnedGrid`` family; ``init()`` reproduces the solver on ``init_grid``.
    """
    nfe = int(nfe) if isinstance(nfe, np.integer) else nfe
    options = tuple(sorted(solver_options.items()))
    return LearnedGrid(nfe, solver, scheduler, init_grid, options)
