"""steerlens: find, study and compare steering vectors, on TransformerLens hook points.

Example:
    >>> import steerlens
    >>> model = steerlens.load_model()  # doctest: +SKIP
"""

from steerlens._version import __version__
from steerlens.errors import SteerlensError
from steerlens.generate import generate
from steerlens.interventions import Ablate, Add, Affine, Clamp
from steerlens.model import load_model
from steerlens.positions import Positions
from steerlens.steer import Steering, steer
from steerlens.vector import SteeringVector

__all__ = [
    "Ablate",
    "Add",
    "Affine",
    "Clamp",
    "Positions",
    "Steering",
    "SteeringVector",
    "SteerlensError",
    "__version__",
    "generate",
    "load_model",
    "steer",
]
