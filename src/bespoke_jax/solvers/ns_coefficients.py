"""Reading the non-stationary (NS) coefficients off any baseline solver (BNS Theorem 3.2).

An n-NFE NS solver evaluates the field at ``x_i = a_i x_0 + sum_{j<i} b_{i-1,j} u_j`` with
``u_j = u(t_j, x_j)`` (``i = 0..n-1``) and returns ``x_n = a_n x_0 + sum_{j<n} b_{n-1,j} u_j``.
Every baseline is linear in its noise and in the model outputs it receives, so running it once,
eagerly (``jax.disable_jit``: ``lax.scan`` becomes a Python loop), on the basis of the
``(n + 1)``-dimensional coefficient space ``x_0 = e_0``, with a field whose ``j``-th call records
``(t, x)`` and returns ``e_{j+1}``, gives the grid (the recorded times), ``a`` and ``b`` (the
recorded points and the output).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bespoke_jax.core.checks import require_scheduler
from bespoke_jax.core.schedulers import Scaled, Scheduler
from bespoke_jax.solvers import NAMES, SOLVERS, SPECS, steps_for


class NSCoefficients(NamedTuple):
    """An n-NFE NS solver.

    Attributes:
      ts: ``(n,)`` non-decreasing times of the field evaluations, in ``[0, 1]``.
      a: ``(n + 1,)`` weights of ``x_0``: ``a_0`` scales the first evaluation point (1 for every
        baseline but EDM, which starts from ``sigma_{t_0} x_0``), ``a_{i+1}`` enters ``x_{i+1}``.
      b: ``(n, n)`` lower triangular: row ``i`` weighs ``u_0..u_i`` in ``x_{i+1}``.
    """

    ts: np.ndarray
    a: np.ndarray
    b: np.ndarray


def solver_scheduler(name: str, scheduler: Scheduler | None, sigma0: float) -> Scheduler | None:
    """The scheduler that solver ``name`` must see on the field preconditioned by ``sigma0``.

    ``ValueError`` when the name is unknown or a needed scheduler is missing.
    """
    if name not in SPECS:
        raise ValueError(f"Unknown solver {name!r}; valid names: {NAMES}.")
    if not 0 < sigma0 < np.inf:
        raise ValueError(f"sigma0 must be positive and finite, got {sigma0}.")
    if SPECS[name].requires_scheduler or sigma0 != 1.0:
        need = f"init={name!r}" if SPECS[name].requires_scheduler else f"sigma0={sigma0}"
        require_scheduler(need, scheduler)
    if sigma0 == 1.0:
        return scheduler
    return Scaled(scheduler, float(sigma0))


def ns_coefficients(
    name: str, nfe: int, *, scheduler: Scheduler | None = None, sigma0: float = 1.0
) -> NSCoefficients:
    """The NS coefficients of baseline ``name`` at ``nfe`` (on the field preconditioned by sigma0).

    With ``sigma0 != 1`` the solver is the one applied to the preconditioned field ``ubar`` with
    the scheduler ``Scaled(scheduler, sigma0)`` (its times are then in ``r``).

    Args:
      name: a name of ``bj.solvers.NAMES``.
      nfe: an NFE the solver can spend exactly.
      scheduler: the model's scheduler (needed by ddim, dpm_solver_pp, unipc, edm and sigma0 != 1).
      sigma0: the preconditioning scale.

    Returns:
      The solver's ``NSCoefficients`` as float64 arrays (computed in the default float precision).
    """
    target = solver_scheduler(name, scheduler, sigma0)
    steps_for(name, nfe)
    return linear_coefficients(
        lambda u, x0: SOLVERS[name](u, x0, nfe=nfe, scheduler=target), nfe, name
    )


def linear_coefficients(sampler: Callable, nfe: int, name: str = "the sampler") -> NSCoefficients:
    """The NS coefficients of any sampler ``sampler(u, x0) -> x1`` linear in ``x0`` and in the
    ``nfe`` field values it receives (every baseline and learned solver of this package).

    Runs it once, eagerly, on the basis of the coefficient space (see the module docstring).

    Raises:
      ValueError: a sampler that calls the field another number of times than ``nfe``, at
        decreasing times or implicitly.
    """
    calls = []

    def record(t, x, args=None):
        calls.append((float(t), np.asarray(x[0], dtype=np.float64)))
        if len(calls) > nfe:
            raise ValueError(f"{name} called the field more than nfe={nfe} times.")
        return jnp.zeros_like(jnp.asarray(x)).at[0, len(calls)].set(1.0)

    with jax.disable_jit():
        basis = jnp.zeros((1, nfe + 1)).at[0, 0].set(1.0)
        out = np.asarray(sampler(record, basis)[0], np.float64)
    if len(calls) != nfe:
        raise ValueError(f"{name} called the field {len(calls)} times, not nfe={nfe}.")
    ts = np.array([t for t, _ in calls])
    rows = np.stack([x for _, x in calls] + [out])
    if np.any(np.diff(ts) < 0) or ts[0] < 0 or ts[-1] > 1:
        raise ValueError(f"{name} evaluated the field at times {ts}, not non-decreasing in [0, 1].")
    if np.any(np.triu(rows[:, 1:], k=0)[:nfe] != 0):
        raise ValueError(f"{name} is not explicit: a field input depends on a later output.")
    return NSCoefficients(ts, rows[:, 0], np.tril(rows[1:, 1:]))
