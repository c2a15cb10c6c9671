"""Training: one-shot steering vectors by gradient descent (Dunefsky & Cohan, 2025).

Datapoints and their exact tokens (`data`), objectives, regularizers, constraints and stop
rules, the steering kinds that say what is trained (`kinds`), the settings and results
(`config`), the flat settings that studies, the benchmark and the CLI build them from
(`settings`), the forward engines (`engines`), the batched Adam loop (`loop.optimize_many`),
`optimize_vector` / `evaluate_objective` (`optimize`) and reentrant steering (`reentrant`).

Example:
    >>> from steerlens.training import AddSteering, OptimizeConfig
    >>> OptimizeConfig(kind=AddSteering()).max_steps
    100
"""

from steerlens.training.config import (
    ObjectiveEvaluation,
    OptimizeConfig,
    OptimizeResult,
    with_overrides,
)
from steerlens.training.constraints import Noise, NormCap, OutputConstraint
from steerlens.training.data import Datapoint, TokenizedDatapoint, tokenize
from steerlens.training.kinds import (
    AddSteering,
    AffineSteering,
    ClampSteering,
    RankOneSteering,
    SteeringSpec,
)
from steerlens.training.loop import Job, optimize_many
from steerlens.training.objectives import KLObjective, Objective
from steerlens.training.optimize import ObjectiveScorer, evaluate_objective, optimize_vector
from steerlens.training.reentrant import RankOneResult, ReentrantResult, reentrant_steering
from steerlens.training.regularizers import SideEffect
from steerlens.training.settings import RECIPE_LAYER, OptimizerSettings
from steerlens.training.stopping import Plateau, TargetLoss

__all__ = [
    "RECIPE_LAYER",
    "AddSteering",
    "AffineSteering",
    "ClampSteering",
    "Datapoint",
    "Job",
    "KLObjective",
    "Noise",
    "NormCap",
    "Objective",
    "ObjectiveEvaluation",
    "ObjectiveScorer",
    "OptimizeConfig",
    "OptimizeResult",
    "OptimizerSettings",
    "OutputConstraint",
    "Plateau",
    "RankOneResult",
    "RankOneSteering",
    "ReentrantResult",
    "SideEffect",
    "SteeringSpec",
    "TargetLoss",
    "TokenizedDatapoint",
    "evaluate_objective",
    "optimize_many",
    "optimize_vector",
    "reentrant_steering",
    "tokenize",
    "with_overrides",
]
