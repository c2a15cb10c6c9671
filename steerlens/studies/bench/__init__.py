"""The benchmark: one-shot vs contrastive steering vectors, at equal cost, on A/B behaviour
data (`benchmark`), with its methods (`methods`), metrics (`metrics`) and figures.

Example:
    >>> from steerlens.studies.bench import default_methods
    >>> [m.name for m in default_methods()][:2]
    ['one-shot', 'one-shot k=4']
"""

from steerlens.studies.bench.folder import BenchFolder
from steerlens.studies.bench.methods import (
    CAA,
    PCA,
    EnsembleOfOneShot,
    Method,
    OneShotEach,
    OneShotK,
    RandomDirection,
    Setup,
    default_methods,
)
from steerlens.studies.bench.ray_cells import RayCells
from steerlens.studies.bench.results import BenchResult, CellResult
from steerlens.studies.bench.run import benchmark, default_layers
from steerlens.studies.bench.settings import BenchSettings

__all__ = [
    "CAA",
    "PCA",
    "BenchFolder",
    "BenchResult",
    "BenchSettings",
    "CellResult",
    "EnsembleOfOneShot",
    "Method",
    "OneShotEach",
    "OneShotK",
    "RandomDirection",
    "RayCells",
    "Setup",
    "benchmark",
    "default_layers",
    "default_methods",
]
