"""Studies: the paper's question at scale. Does a vector trained on one example generalize,
where, how strongly, and at what cost to coherence?

- `generalization_matrix`: every vector applied to every example (and held-out prompts):
  target log-prob change, judged behavior, side-effect KL, and which example transfers best.
- `steerability`: per prompt, the effect as a function of strength; the anti-steerable
  fraction (Tan et al., 2024).
- `layer_strength_grid`: behavior and coherence on one layer x strength grid, and the best
  behavior within a coherence budget (`GridResult.frontier`).
- `calibrate`: the strength (and layer) with the best behavior within a coherence budget,
  with the curve that justifies it and the vector's size next to the residual stream.
- `StudySpec` / `run_study` / `StudyFolder`: a declarative study (Python or TOML) trained with
  `steerlens.training.loop.optimize_many`, written unit by unit to a folder that resumes and
  loses nothing; serial by default, Ray with ``backend="ray"``; `write_study_report` makes one
  self-contained HTML page of a study folder.

Example:
    >>> from steerlens.studies import Example, StudySpec
    >>> spec = StudySpec(examples=[Example(prompt="Hi", promote=[" there"])], layers=[0, 1],
    ...                  model="tiny")
    >>> [u.name for u in spec.units()]
    ['ex0-L0-s0-promotion', 'ex0-L1-s0-promotion']
"""

from steerlens.studies.bench import BenchResult, BenchSettings, benchmark
from steerlens.studies.calibrate import Calibration, calibrate
from steerlens.studies.folder import StudyFolder
from steerlens.studies.grid import FrontierPoint, GridResult, layer_strength_grid
from steerlens.studies.matrix import GeneralizationMatrix, generalization_matrix
from steerlens.studies.report import write_study_report
from steerlens.studies.run import run_study
from steerlens.studies.spec import (
    EvaluationSettings,
    Example,
    GridSettings,
    OptimizerSettings,
    StudySpec,
)
from steerlens.studies.steerability import SteerabilityResult, steerability

__all__ = [
    "BenchResult",
    "BenchSettings",
    "Calibration",
    "EvaluationSettings",
    "Example",
    "FrontierPoint",
    "GeneralizationMatrix",
    "GridResult",
    "GridSettings",
    "OptimizerSettings",
    "SteerabilityResult",
    "StudyFolder",
    "StudySpec",
    "benchmark",
    "calibrate",
    "generalization_matrix",
    "layer_strength_grid",
    "run_study",
    "steerability",
    "write_study_report",
]
