"""Steering: which tokens (`positions`), what map (`interventions`: `Add`, `Clamp`, `Ablate`,
`Affine`), the plain-data `SteeringVector` (`vector`), the `Steering` plan and `steer()`
(`steer`), conditional steering (`conditional`), ensembles (`ensemble`) and steered text
(`generate`).

Example:
    >>> import torch
    >>> from steerlens.steering import Steering
    >>> Steering(torch.ones(4), layer=1, strength=2.0).strength
    2.0
"""

from steerlens.steering.conditional import Condition, Conditional, fit_condition
from steerlens.steering.ensemble import ensemble
from steerlens.steering.generate import generate, generate_each
from steerlens.steering.interventions import Ablate, Add, Affine, Clamp, Intervention
from steerlens.steering.positions import Positions
from steerlens.steering.steer import Steering, steer, steer_rows
from steerlens.steering.vector import SteeringVector

__all__ = [
    "Ablate",
    "Add",
    "Affine",
    "Clamp",
    "Condition",
    "Conditional",
    "Intervention",
    "Positions",
    "Steering",
    "SteeringVector",
    "ensemble",
    "fit_condition",
    "generate",
    "generate_each",
    "steer",
    "steer_rows",
]
