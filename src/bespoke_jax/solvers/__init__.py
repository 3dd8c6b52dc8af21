"""Baseline ODE solvers ``NAME(u, x0, *, nfe, args=None, scheduler=None, grid=None) -> x1``."""

from bespoke_jax.solvers._edm import edm as edm
from bespoke_jax.solvers._exponential import ddim as ddim
from bespoke_jax.solvers._exponential import dpm_solver_pp as dpm_solver_pp
from bespoke_jax.solvers._exponential import unipc as unipc
from bespoke_jax.solvers._generic import euler as euler
from bespoke_jax.solvers._generic import heun as heun
from bespoke_jax.solvers._generic import ipndm as ipndm
from bespoke_jax.solvers._generic import midpoint as midpoint
from bespoke_jax.solvers._generic import rk4 as rk4
from bespoke_jax.solvers._grids import GRIDS as GRIDS
from bespoke_jax.solvers._grids import karras_sigmas as karras_sigmas
from bespoke_jax.solvers._grids import make_grid as make_grid
from bespoke_jax.solvers._registry import NAMES as NAMES
from bespoke_jax.solvers._registry import SOLVERS as SOLVERS
from bespoke_jax.solvers._registry import SPECS as SPECS
from bespoke_jax.solvers._registry import steps_for as steps_for
from bespoke_jax.solvers._spec import NFERule as NFERule
from bespoke_jax.solvers._spec import SolverSpec as SolverSpec
