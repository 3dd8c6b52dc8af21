"""What a baseline solver declares: its order and how it spends NFE on steps."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import numpy as np

from bespoke_jax.core.checks import MAX_NFE, check_field, finite_or_raise
from bespoke_jax.core.outputs import Velocity
from bespoke_jax.solvers._grids import resolve_grid


@dataclasses.dataclass(frozen=True)
class NFERule:
    """``nfe = nfe_per_step * steps - nfe_saved`` for ``steps >= 1``.

    ``nfe_saved`` is what the final step saves (EDM's final Euler step: ``nfe = 2 N - 1``).
    """

    nfe_per_step: int = 1
    nfe_saved: int = 0

    def nfe(self, steps: int) -> int:
        """The NFE of ``steps`` steps."""
        return self.nfe_per_step * steps - self.nfe_saved

    def valid(self) -> str:
        """The valid NFE values, in words."""
        if self.nfe_per_step == 1:
            return "any integer >= 1"
        if self.nfe_saved == 0:
            return f"positive multiples of {self.nfe_per_step}"
        first = ", ".join(str(self.nfe(steps)) for steps in (1, 2, 3))
        return f"{self.nfe_per_step} * steps - {self.nfe_saved} for steps >= 1 ({first}, ...)"

    def steps(self, nfe: int, name: str = "this solver") -> int:
        """The number of steps that spends exactly ``nfe``; ``ValueError`` if there is none."""
        integer = isinstance(nfe, int | np.integer) and not isinstance(nfe, bool)
        steps, rest = divmod(int(nfe) + self.nfe_saved, self.nfe_per_step) if integer else (0, 0)
        if rest or steps < 1:
            raise ValueError(f"{name} cannot spend nfe={nfe!r}; valid NFE: {self.valid()}.")
        if nfe > MAX_NFE:
            raise ValueError(f"{name}: nfe={nfe} is above the bound of {MAX_NFE} model calls.")
        return steps


@dataclasses.dataclass(frozen=True)
class SolverSpec:
    """A baseline solver and what it declares.

    Attributes:
      name: its name in ``bj.solvers``.
      fn: ``fn(u, x0, *, nfe, args=None, scheduler=None, grid=None, ...) -> x1``.
      order: the global order of convergence of the whole solve, boundary steps included.
      rule: how NFE maps to steps.
      requires_scheduler: whether ``scheduler`` must be given.
      default_grid: the named grid of ``grid=None``.
    """

    name: str
    fn: Callable
    order: int
    rule: NFERule
    requires_scheduler: bool = False
    default_grid: str = "uniform"


def reports_nonfinite(rule: NFERule, default_grid: str = "uniform"):
    """Decorate a solver so that a field that is not ``u(t, x, args)`` is named
    (``check_field``), a NaN/inf result raises ``RuntimeError`` naming where the field
    first went non-finite (grid point and time of an Euler walk on the solver's grid), so that
    a ``Velocity`` field supplies its own scheduler (a different one is refused), and so that
    the solver's state keeps ``x0``'s dtype whatever the field returns (a bfloat16 network).

    The result is checked once, outside any loop; the field is walked only when it failed, and
    traced calls (under ``jax.jit``) are left alone.
    """

    def decorate(solver):
        @functools.wraps(solver)
        def checked(u, x0, *, nfe, args=None, scheduler=None, grid=None, **options):
            check_field(u, f"bj.solvers.{solver.__name__}")
            if isinstance(u, Velocity):  # a wrapped model knows the path of its time
                if scheduler is None:
                    scheduler = u.scheduler
                elif scheduler != u.scheduler:
                    raise ValueError(
                        f"{solver.__name__}: this field runs on {u.scheduler} (its model's "
                        f"{u.source} truncated where the conversion is singular); pass "
                        f"scheduler=u.scheduler or none."
                    )
            field = lambda t, x, a: u(t, x, a).astype(x.dtype)  # noqa: E731  (bfloat16 models)
            x1 = solver(field, x0, nfe=nfe, args=args, scheduler=scheduler, grid=grid, **options)
            steps = rule.steps(nfe, solver.__name__)
            ts = lambda: resolve_grid(grid, steps, scheduler, default_grid)  # noqa: E731
            return finite_or_raise(x1, u, x0, args, solver.__name__, ts)

        return checked

    return decorate
