"""bespoke_jax: learned few-step ODE solvers for pre-trained diffusion and flow-matching models."""

from . import solvers as solvers
from ._bns import BNS as BNS
from ._bns import bns as bns
from ._bst import BST as BST
from ._bst import bst as bst
from ._cache import cached_training_data as cached_training_data
from ._data import TrainingData as TrainingData
from ._data import make_training_data as make_training_data
from ._family import FAMILIES as FAMILIES
from ._family import family_from_config as family_from_config
from ._ground_truth import GroundTruth as GroundTruth
from ._ground_truth import ground_truth as ground_truth
from ._metrics import psnr as psnr
from ._metrics import rmse as rmse
from ._mixture import GaussianMixture as GaussianMixture
from ._outputs import guided as guided
from ._outputs import to_velocity as to_velocity
from ._pretrained import Pretrained as Pretrained
from ._pretrained import pretrained as pretrained
from ._schedulers import Scheduler as Scheduler
from ._schedulers import cond_ot as cond_ot
from ._schedulers import cosine as cosine
from ._schedulers import vp as vp
from ._sharding import data_mesh as data_mesh
from ._sharding import sharded_training_data as sharded_training_data
from ._storage import export_solver as export_solver
from ._storage import load_solver as load_solver
from ._storage import save_solver as save_solver
from ._train import TrainResult as TrainResult
from ._train import train as train
from ._transforms import ScaleTime as ScaleTime
from ._transforms import precondition as precondition
from ._transforms import scale_time as scale_time
from ._transforms import scheduler_change as scheduler_change

__version__ = "0.1.0"
