"""Read and write the steering file of lm-evaluation-harness's ``steered`` model.

lm-eval (0.4.13, ``lm_eval/models/hf_steered.py``) loads a ``.pt``/``.pth`` file holding a dict
keyed by *hook point*, a module name under the Hugging Face model's ``base_model``
(``layers.5`` for Llama-style models). Each value is a dict with

* ``steering_vector``: a ``[d_model]`` tensor,
* ``steering_coefficient``: a float (default 1),
* ``action``: ``"add"`` (the output becomes ``output + coefficient * vector``) or ``"clamp"``
  (the output's component along the unit vector ``vector / |vector|`` becomes
  ``coefficient``),
* ``bias`` and ``head_index``: ``None`` here (lm-eval refuses a bias with ``add``).

Its forward hooks edit a module's OUTPUT, at every token. This module only handles the file as
plain data; which hook point and coefficient a steerlens vector becomes is
`steerlens.SteeringVector.to_lm_eval`'s business.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from steerlens.errors import NonFiniteError, OutputPathError, SpecError, VectorFileError
from steerlens.io.atomic import atomic_path, output_path, path_text

Action = Literal["add", "clamp"]
ACTIONS: tuple[Action, ...] = ("add", "clamp")
SUFFIXES = (".pt", ".pth")


@dataclass(frozen=True, eq=False)
class SteerEntry:
    """One hook point's steering in lm-eval's file.

    Attributes:
        action: ``"add"`` or ``"clamp"``.
        vector: the ``[d_model]`` steering vector (float32 on the CPU once written).
        coefficient: the multiple added (``add``) or the value the unit-direction component is
            set to (``clamp``).

    Example:
        >>> SteerEntry("add", torch.ones(4), 2.0).coefficient
        2.0
    """

    action: Action
    vector: Tensor
    coefficient: float

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise SpecError(
                f"lm-eval's steered model knows the actions {ACTIONS}, got {self.action!r}."
            )
        if not isinstance(self.vector, Tensor) or self.vector.ndim != 1 or not len(self.vector):
            raise SpecError("a steering entry needs a non-empty 1-D tensor as its vector.")
        if not bool(torch.isfinite(self.vector).all()) or not math.isfinite(self.coefficient):
            raise NonFiniteError(
                "a steering entry holds NaN or inf; lm-eval would spread it through every token."
            )
        if self.action == "clamp" and float(self.vector.norm()) == 0.0:
            raise NonFiniteError(
                "a clamp entry needs a non-zero vector: lm-eval divides it by its norm."
            )


def _checked_path(path: str | Path, *, write: bool) -> Path:
    raw = path_text(path, what="the lm-eval steering file path")
    target = output_path(raw, example_name="steer.pt") if write else Path(raw).expanduser()
    if target.suffix not in SUFFIXES:
        error = OutputPathError if write else VectorFileError
        raise error(
            f"{raw!r}: lm-eval's steered model reads only steering files named *.pt or *.pth "
            f"(it refuses other names); use e.g. {str(target.with_suffix('.pt'))!r}."
        )
    return target


def write_steer_file(path: str | Path, entries: Mapping[str, SteerEntry]) -> Path:
    """Write ``entries`` (hook point -> entry) as lm-eval's steering file; atomic.

    The file holds only tensors, strings, floats and ``None``, so it also loads with
    ``torch.load(..., weights_only=True)``. ``~`` is expanded, missing folders are created.

    Raises:
        SpecError: no entries.
        OutputPathError: ``path`` does not end in ``.pt``/``.pth``, or cannot be written.

    Example:
        >>> import tempfile
        >>> entry = SteerEntry("add", torch.ones(4), 2.0)
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = write_steer_file(f"{tmp}/s.pt", {"layers.0": entry})
        ...     read_steer_file(path)["layers.0"].coefficient
        2.0
    """
    target = _checked_path(path, write=True)
    if not entries:
        raise SpecError("nothing to write: an lm-eval steering file needs at least one entry.")
    data = {
        hookpoint: {
            "steering_vector": e.vector.detach().to("cpu", torch.float32).clone(),
            "steering_coefficient": float(e.coefficient),
            "action": e.action,
            "bias": None,
            "head_index": None,
        }
        for hookpoint, e in entries.items()
    }
    with atomic_path(target, example_name="steer.pt") as tmp:
        torch.save(data, tmp)
    return target


def read_steer_file(path: str | Path) -> dict[str, SteerEntry]:
    """Read an lm-eval steering file (``.pt``) as plain data, without unpickling code.

    Raises:
        VectorFileError: no such file, not a tensor dict as lm-eval reads it, or an entry with
            a bias or head index (which steerlens cannot express).
    """
    target = _checked_path(path, write=False)
    if not target.is_file():
        raise VectorFileError(f"no lm-eval steering file at {str(target)!r}; check the path.")
    try:
        data = torch.load(target, weights_only=True, map_location="cpu")
    except Exception as exc:  # torch raises many types for a damaged or foreign pickle
        raise VectorFileError(
            f"{str(target)!r} is not an lm-eval steering file steerlens can read ({exc})."
        ) from exc
    if not isinstance(data, dict) or not data:
        raise VectorFileError(
            f"{str(target)!r} does not hold a dict of hook point -> steering entry."
        )
    entries = {}
    for hookpoint, info in data.items():
        if not isinstance(info, dict) or "steering_vector" not in info:
            raise VectorFileError(f"{str(target)!r}: entry {hookpoint!r} has no steering_vector.")
        if info.get("bias") is not None or info.get("head_index") is not None:
            raise VectorFileError(
                f"{str(target)!r}: entry {hookpoint!r} has a bias or head index, which steers "
                "something other than the residual stream; steerlens reads neither."
            )
        try:
            entries[str(hookpoint)] = SteerEntry(
                info.get("action", "add"),
                info["steering_vector"],
                float(info.get("steering_coefficient", 1.0)),
            )
        except (SpecError, NonFiniteError, TypeError) as exc:
            raise VectorFileError(f"{str(target)!r}: entry {hookpoint!r}: {exc}") from exc
    return entries
