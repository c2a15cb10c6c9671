"""steerlens: find, study and compare steering vectors, on TransformerLens hook points.

The front door holds what a session needs; everything else is one room deeper:
``steerlens.steering`` (positions, interventions, the vector, plans, generation),
``steerlens.training`` (objectives, constraints, stop rules, steering kinds, results),
``steerlens.baselines``, ``steerlens.evaluation``, ``steerlens.analysis`` (plots),
``steerlens.studies``, ``steerlens.loading``, ``steerlens.io``, ``steerlens.interop``,
``steerlens.runtime``, ``steerlens.errors``.

Example:
    >>> import steerlens
    >>> model = steerlens.load_model()  # doctest: +SKIP
"""

from typing import Any

from steerlens.baselines import diff_of_means
from steerlens.errors import SteerlensError
from steerlens.loading.model import load_model
from steerlens.steering.generate import generate
from steerlens.steering.interventions import Ablate, Add, Affine, Clamp
from steerlens.steering.positions import Positions
from steerlens.steering.steer import Steering, steer
from steerlens.steering.vector import SteeringVector
from steerlens.training.config import OptimizeConfig
from steerlens.training.constraints import NormCap
from steerlens.training.data import Datapoint
from steerlens.training.optimize import evaluate_objective, optimize_vector
from steerlens.training.reentrant import reentrant_steering
from steerlens.version import __version__

__all__ = [
    "Ablate",
    "Add",
    "Affine",
    "Clamp",
    "Datapoint",
    "NormCap",
    "OptimizeConfig",
    "Positions",
    "Steering",
    "SteeringVector",
    "SteerlensError",
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


def __getattr__(name: str) -> Any:
    # The analysis layer imports plotly; load it only when it is used.
    if name == "layer_sweep":
        from steerlens.analysis.layer_sweep import layer_sweep

        return layer_sweep
    raise AttributeError(f"module 'steerlens' has no attribute {name!r}")
