"""The baseline solvers by name, with their declared order and NFE rule."""

from __future__ import annotations

from bespoke_jax.solvers._edm import HEUN_FINAL_EULER, edm
from bespoke_jax.solvers._exponential import ddim, dpm_solver_pp, unipc
from bespoke_jax.solvers._generic import (
    FOUR_PER_STEP,
    ONE_PER_STEP,
    TWO_PER_STEP,
    euler,
    heun,
    ipndm,
    midpoint,
    rk4,
)
from bespoke_jax.solvers._spec import SolverSpec

SPECS: dict[str, SolverSpec] = {
    spec.name: spec
    for spec in (
        SolverSpec("euler", euler, order=1, rule=ONE_PER_STEP),
        SolverSpec("midpoint", midpoint, order=2, rule=TWO_PER_STEP),
        SolverSpec("heun", heun, order=2, rule=TWO_PER_STEP),
        SolverSpec("rk4", rk4, order=4, rule=FOUR_PER_STEP),
        SolverSpec("ipndm", ipndm, order=2, rule=ONE_PER_STEP),
        SolverSpec("ddim", ddim, order=1, rule=ONE_PER_STEP, requires_scheduler=True),
        SolverSpec(
            "dpm_solver_pp", dpm_solver_pp, order=2, rule=ONE_PER_STEP, requires_scheduler=True
        ),
        SolverSpec("unipc", unipc, order=2, rule=ONE_PER_STEP, requires_scheduler=True),
        SolverSpec(
            "edm", edm, order=2, rule=HEUN_FINAL_EULER, requires_scheduler=True, default_grid="edm"
        ),
    )
}
SOLVERS = {name: spec.fn for name, spec in SPECS.items()}
NAMES = tuple(SPECS)


def steps_for(name: str, nfe: int) -> int:
    """The number of steps solver ``name`` takes for ``nfe`` (``ValueError`` if it cannot)."""
    if name not in SPECS:
        raise ValueError(f"Unknown solver {name!r}; valid names: {NAMES}.")
    return SPECS[name].rule.steps(nfe, name)
