"""steerlens: find, study and compare steering vectors, on TransformerLens hook points.

The front door holds what a session needs; everything else is one import deeper:
``steerlens.optimize`` (results, steering kinds, the norm phase), ``steerlens.objectives``,
``steerlens.constraints``, ``steerlens.stopping``, ``steerlens.evaluation``,
``steerlens.analysis`` (plots), ``steerlens.baselines``, ``steerlens.runtime``,
``steerlens.errors``.

Example:
    >>> import steerlens
    >>> model = steerlens.load_model()  # doctest: +SKIP
"""

from typing import Any

from steerlens.baselines import diff_of_means
from steerlens.constraints import NormCap
from steerlens.data import Datapoint
from steerlens.errors import SteerlensError
from steerlens.generate import generate
from steerlens.interventions import Ablate, Add, Affine, Clamp
from steerlens.model import load_model
from steerlens.optimize import OptimizeConfig, evaluate_objective, optimize_vector
from steerlens.positions import Positions
from steerlens.reentrant import reentrant_steering
from steerlens.steer import Steering, steer
from steerlens.vector import SteeringVector
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
