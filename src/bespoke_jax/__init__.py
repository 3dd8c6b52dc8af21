"""bespoke_jax: learned few-step ODE solvers for pre-trained diffusion and flow-matching models.

The public names below are imported on first use (PEP 562), so that ``import bespoke_jax`` and the
command line's ``--help`` do not pay for importing JAX. ``ARCHITECTURE.md`` shows where each lives.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_PUBLIC = {
    "solvers": "bespoke_jax.solvers",
    "export": "bespoke_jax.export",
    "BNS": "bespoke_jax.families.bns",
    "bns": "bespoke_jax.families.bns",
    "BST": "bespoke_jax.families.bst",
    "bst": "bespoke_jax.families.bst",
    "LearnedGrid": "bespoke_jax.families.grid",
    "learned_grid": "bespoke_jax.families.grid",
    "FAMILIES": "bespoke_jax.families.registry",
    "family_from_config": "bespoke_jax.families.registry",
    "cached_training_data": "bespoke_jax.io.cache",
    "export_solver": "bespoke_jax.io.storage",
    "load_solver": "bespoke_jax.io.storage",
    "save_solver": "bespoke_jax.io.storage",
    "TrainingData": "bespoke_jax.truth.data",
    "make_training_data": "bespoke_jax.truth.data",
    "GroundTruth": "bespoke_jax.truth.adaptive",
    "ground_truth": "bespoke_jax.truth.adaptive",
    "data_mesh": "bespoke_jax.truth.sharded",
    "sharded_training_data": "bespoke_jax.truth.sharded",
    "psnr": "bespoke_jax.core.metrics",
    "rmse": "bespoke_jax.core.metrics",
    "guided": "bespoke_jax.core.outputs",
    "to_velocity": "bespoke_jax.core.outputs",
    "Scheduler": "bespoke_jax.core.schedulers",
    "cond_ot": "bespoke_jax.core.schedulers",
    "cosine": "bespoke_jax.core.schedulers",
    "vp": "bespoke_jax.core.schedulers",
    "ddpm": "bespoke_jax.core.ddpm",
    "Velocity": "bespoke_jax.core.outputs",
    "wrap_diffusion": "bespoke_jax.core.wrappers",
    "wrap_edm": "bespoke_jax.core.wrappers",
    "ScaleTime": "bespoke_jax.core.transforms",
    "precondition": "bespoke_jax.core.transforms",
    "scale_time": "bespoke_jax.core.transforms",
    "scheduler_change": "bespoke_jax.core.transforms",
    "GaussianMixture": "bespoke_jax.models.mixture",
    "Pretrained": "bespoke_jax.models.pretrained",
    "pretrained": "bespoke_jax.models.pretrained",
    "Sigma0Choice": "bespoke_jax.training.sigma0",
    "choose_sigma0": "bespoke_jax.training.sigma0",
    "TrainResult": "bespoke_jax.training.loop",
    "train": "bespoke_jax.training.loop",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'bespoke_jax' has no attribute {name!r}")
    module = importlib.import_module(_PUBLIC[name])
    value = module if name in ("solvers", "export") else getattr(module, name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))


if TYPE_CHECKING:  # the same names, eagerly, for type checkers and IDEs
    from bespoke_jax import export as export
    from bespoke_jax import solvers as solvers
    from bespoke_jax.core.ddpm import ddpm as ddpm
    from bespoke_jax.core.metrics import psnr as psnr
    from bespoke_jax.core.metrics import rmse as rmse
    from bespoke_jax.core.outputs import Velocity as Velocity
    from bespoke_jax.core.outputs import guided as guided
    from bespoke_jax.core.outputs import to_velocity as to_velocity
    from bespoke_jax.core.schedulers import Scheduler as Scheduler
    from bespoke_jax.core.schedulers import cond_ot as cond_ot
    from bespoke_jax.core.schedulers import cosine as cosine
    from bespoke_jax.core.schedulers import vp as vp
    from bespoke_jax.core.transforms import ScaleTime as ScaleTime
    from bespoke_jax.core.transforms import precondition as precondition
    from bespoke_jax.core.transforms import scale_time as scale_time
    from bespoke_jax.core.transforms import scheduler_change as scheduler_change
    from bespoke_jax.core.wrappers import wrap_diffusion as wrap_diffusion
    from bespoke_jax.core.wrappers import wrap_edm as wrap_edm
    from bespoke_jax.families.bns import BNS as BNS
    from bespoke_jax.families.bns import bns as bns
    from bespoke_jax.families.bst import BST as BST
    from bespoke_jax.families.bst import bst as bst
    from bespoke_jax.families.grid import LearnedGrid as LearnedGrid
    from bespoke_jax.families.grid import learned_grid as learned_grid
    from bespoke_jax.families.registry import FAMILIES as FAMILIES
    from bespoke_jax.families.registry import family_from_config as family_from_config
    from bespoke_jax.io.cache import cached_training_data as cached_training_data
    from bespoke_jax.io.storage import export_solver as export_solver
    from bespoke_jax.io.storage import load_solver as load_solver
    from bespoke_jax.io.storage import save_solver as save_solver
    from bespoke_jax.models.mixture import GaussianMixture as GaussianMixture
    from bespoke_jax.models.pretrained import Pretrained as Pretrained
    from bespoke_jax.models.pretrained import pretrained as pretrained
    from bespoke_jax.training.loop import TrainResult as TrainResult
    from bespoke_jax.training.loop import train as train
    from bespoke_jax.training.sigma0 import Sigma0Choice as Sigma0Choice
    from bespoke_jax.training.sigma0 import choose_sigma0 as choose_sigma0
    from bespoke_jax.truth.adaptive import GroundTruth as GroundTruth
    from bespoke_jax.truth.adaptive import ground_truth as ground_truth
    from bespoke_jax.truth.data import TrainingData as TrainingData
    from bespoke_jax.truth.data import make_training_data as make_training_data
    from bespoke_jax.truth.sharded import data_mesh as data_mesh
    from bespoke_jax.truth.sharded import sharded_training_data as sharded_training_data
