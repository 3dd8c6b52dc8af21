"""Baseline ODE solvers ``NAME(u, x0, *, nfe, args=None, scheduler=None, grid=None) -> x1``."""

from ._edm import edm as edm
from ._exponential import ddim as ddim
from ._exponential import dpm_solver_pp as dpm_solver_pp
from ._exponential import unipc as unipc
from ._generic import euler as euler
from ._generic import heun as heun
from ._generic import ipndm as ipndm
from ._generic import midpoint as midpoint
from ._generic import rk4 as rk4
from ._grids import GRIDS as GRIDS
from ._grids import karras_sigmas as karras_sigmas
from ._grids import make_grid as make_grid
from ._registry import NAMES as NAMES
from ._registry import SOLVERS as SOLVERS
from ._registry import SPECS as SPECS
from ._registry import steps_for as steps_for
from ._spec import NFERule as NFERule
from ._spec import SolverSpec as SolverSpec
