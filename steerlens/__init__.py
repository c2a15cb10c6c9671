"""steerlens: find, study and compare steering vectors, on TransformerLens hook points.

Example:
    >>> import steerlens
    >>> model = steerlens.load_model()  # doctest: +SKIP
"""

from steerlens._version import __version__
from steerlens.analysis.layer_sweep import layer_sweep
from steerlens.baselines import diff_of_means
from steerlens.constraints import Noise, NormCap
from steerlens.data import Datapoint
from steerlens.errors import SteerlensError
from steerlens.generate import generate
from steerlens.interventions import Ablate, Add, Affine, Clamp
from steerlens.model import load_model
from steerlens.objectives import Objective
from steerlens.optimize import (
    AddSteering,
    AffineSteering,
    ClampSteering,
    OptimizeConfig,
    OptimizeResult,
    OutputConstraint,
    evaluate_objective,
    optimize_vector,
)
from steerlens.positions import Positions
from steerlens.reentrant import ReentrantResult, reentrant_steering
from steerlens.steer import Steering, steer
from steerlens.stopping import Plateau, TargetLoss
from steerlens.vector import SteeringVector

__all__ = [
    "Ablate",
    "Add",
    "AddSteering",
    "Affine",
    "AffineSteering",
    "Clamp",
    "ClampSteering",
    "Datapoint",
    "Noise",
    "NormCap",
    "Objective",
    "OptimizeConfig",
    "OptimizeResult",
    "OutputConstraint",
    "Plateau",
    "Positions",
    "ReentrantResult",
    "Steering",
    "SteeringVector",
    "SteerlensError",
    "TargetLoss",
    "__version__",
    "diff_of_means",
    "evaluate_objective",
    "generate",
    "layer_sweep",
    "load_model",
    "optimize_vector",
    "reentrant_steering",
    "steer",
]
