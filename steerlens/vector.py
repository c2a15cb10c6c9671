"""``SteeringVector``: the tensors of a steering intervention plus where and how they were made."""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from steerlens import runtime
from steerlens.errors import (
    ModelMismatchError,
    SteerlensError,
    VectorShapeError,
)
from steerlens.interventions import Affine, check_vector
from steerlens.version import __version__


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True, eq=False)
class SteeringVector:
    """A steering vector: one direction per layer (often one layer), optional low-rank affine
    parts, and its provenance.

    Attributes:
        directions: layer -> ``[d_model]`` vector, added at ``blocks.{layer}.hook_resid_pre``.
        model_id: the model it was made on (applying it elsewhere is refused).
        affine: layer -> ``(left, right)``, each ``[rank, d_model]``: the ``M = L^T R`` of
            affine steering ``x + M x + v``.
        provenance: how it was made: method, hyperparameters, prompts, completions, final
            losses and their unit. Plain JSON data.

    Example:
        >>> import torch
        >>> v = SteeringVector.from_tensor(torch.ones(64), layer=1, model_id="steerlens/tiny-llama")
        >>> (2 * v - v).vector.tolist() == v.vector.tolist()
        True
    """

    directions: Mapping[int, Float[Tensor, " d_model"]]
    model_id: str
    affine: Mapping[int, tuple[Tensor, Tensor]] = field(default_factory=dict)
    hook_template: str = runtime.HOOK_TEMPLATE
    provenance: Mapping[str, Any] = field(default_factory=dict)
    steerlens_version: str = __version__
    created_at: str = field(default_factory=_now)

    def __post_init__(self) -> None:
        if not self.directions:
            raise SteerlensError("a SteeringVector needs at least one layer's direction.")
        sizes = {int(v.shape[-1]) for v in self.directions.values()}
        if len(sizes) != 1:
            raise VectorShapeError(f"all directions must have one size, got sizes {sorted(sizes)}.")
        for layer, v in self.directions.items():
            check_vector(v, name=f"direction for layer {layer}")
        for layer, (left, right) in self.affine.items():
            if layer not in self.directions:
                raise SteerlensError(f"affine part at layer {layer} has no direction (bias).")
            Affine(left, right, self.directions[layer])  # validates shapes and values

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_tensor(
        cls,
        vector: Float[Tensor, " d_model"],
        layer: int | Iterable[int],
        *,
        model: Any = None,
        model_id: str | None = None,
        provenance: Mapping[str, Any] | None = None,
    ) -> SteeringVector:
        """One vector at one layer (or the same vector at several layers)."""
        if model_id is None:
            if model is None:
                raise SteerlensError("pass model= or model_id= so the vector knows its model.")
            model_id = runtime.model_id(model)
        layers = [layer] if isinstance(layer, int) else list(layer)
        if model is not None:
            for la in layers:
                runtime.check_layer(model, la)
            check_vector(vector, d_model=runtime.d_model(model))
        v = vector.detach().clone()
        return cls({la: v for la in layers}, model_id=model_id, provenance=dict(provenance or {}))

    # -- views -----------------------------------------------------------------------------
    @property
    def layers(self) -> list[int]:
        return sorted(self.directions)

    @property
    def d_model(self) -> int:
        return int(next(iter(self.directions.values())).shape[-1])

    @property
    def vector(self) -> Float[Tensor, " d_model"]:
        """The direction, for a vector that has the same direction at every layer."""
        first = self.directions[self.layers[0]]
        if any(not torch.equal(first, self.directions[la]) for la in self.layers[1:]):
            raise SteerlensError(
                f"this vector has different directions at layers {self.layers}; "
                "use .directions[layer]."
            )
        return first

    def norm(self) -> float:
        """The largest per-layer L2 norm."""
        return max(float(v.norm()) for v in self.directions.values())

    def hook_names(self) -> list[str]:
        return [self.hook_template.format(layer=la) for la in self.layers]

    def check_compatible(self, model: Any, *, allow_model_mismatch: bool = False) -> None:
        """Refuse a model whose ``d_model`` or id differs from the one this vector was made on."""
        d = runtime.d_model(model)
        if d != self.d_model:
            raise VectorShapeError(
                f"this vector has d_model {self.d_model} (made on {self.model_id!r}) but the model "
                f"has d_model {d}; it cannot be applied to this model."
            )
        mid = runtime.model_id(model)
        if mid != self.model_id and not allow_model_mismatch:
            raise ModelMismatchError(
                f"this vector was made on {self.model_id!r} but the model is {mid!r}; pass "
                "allow_model_mismatch=True if you mean to apply it across models."
            )
        for la in self.layers:
            runtime.check_layer(model, la)

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None):
        """A copy with every tensor moved/cast."""
        return replace(
            self,
            directions={la: v.to(device=device, dtype=dtype) for la, v in self.directions.items()},
            affine={
                la: (a.to(device=device, dtype=dtype), b.to(device=device, dtype=dtype))
                for la, (a, b) in self.affine.items()
            },
        )

    # -- arithmetic (like repeng's ControlVector: 2 * happy - sad) -------------------------
    def _combine(self, other: SteeringVector, sign: float, op: str) -> SteeringVector:
        if not isinstance(other, SteeringVector):
            return NotImplemented
        if self.affine or other.affine:
            raise SteerlensError("vectors with affine parts cannot be added or subtracted.")
        if other.model_id != self.model_id or other.d_model != self.d_model:
            raise ModelMismatchError(
                f"cannot combine a vector of {self.model_id!r} (d_model {self.d_model}) with one "
                f"of {other.model_id!r} (d_model {other.d_model})."
            )
        layers = sorted(set(self.directions) | set(other.directions))
        zero = torch.zeros_like(next(iter(self.directions.values())))
        directions = {
            la: self.directions.get(la, zero) + sign * other.directions.get(la, zero).to(zero)
            for la in layers
        }
        return self._derived(directions, op)

    def _derived(self, directions: Mapping[int, Tensor], op: str) -> SteeringVector:
        provenance = {"method": "arithmetic", "operation": op, "operand": dict(self.provenance)}
        return SteeringVector(
            directions=dict(directions),
            model_id=self.model_id,
            affine={},
            hook_template=self.hook_template,
            provenance=provenance,
        )

    def __add__(self, other: SteeringVector) -> SteeringVector:
        return self._combine(other, 1.0, "add")

    def __sub__(self, other: SteeringVector) -> SteeringVector:
        return self._combine(other, -1.0, "sub")

    def __mul__(self, scalar: float) -> SteeringVector:
        if not isinstance(scalar, (int, float)) or not math.isfinite(scalar):
            return NotImplemented
        if self.affine:
            raise SteerlensError("scale an affine vector with the strength= argument instead.")
        return self._derived({la: v * scalar for la, v in self.directions.items()}, f"mul {scalar}")

    __rmul__ = __mul__

    def __truediv__(self, scalar: float) -> SteeringVector:
        return self * (1.0 / scalar)

    def __neg__(self) -> SteeringVector:
        return self * -1.0

    def __repr__(self) -> str:
        method = self.provenance.get("method", "?")
        rank = (
            f", affine rank {next(iter(self.affine.values()))[0].shape[0]}" if self.affine else ""
        )
        return (
            f"SteeringVector(model={self.model_id!r}, layers={self.layers}, d_model={self.d_model},"
            f" norm={self.norm():.4g}, method={method!r}{rank})"
        )

    # -- files -----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write a safetensors file (metadata in its header); atomic, never pickle."""
        from steerlens.io.vector_file import save_vector

        return save_vector(self, path)

    @classmethod
    def load(cls, path: str | Path, *, device: str | torch.device | None = None) -> SteeringVector:
        """Read a file written by :meth:`save`."""
        from steerlens.io.vector_file import load_vector

        return load_vector(path, device=device)

    def to_gguf(self, path: str | Path, *, model_hint: str | None = None) -> Path:
        """Write a llama.cpp control-vector file (``--control-vector``); see docs/llama_cpp.md."""
        from steerlens.io.gguf_format import write_control_vector

        if self.affine:
            raise SteerlensError(
                "llama.cpp control vectors hold only additive directions; this vector has "
                "affine parts. Save it with .save() instead."
            )
        hint = model_hint or self.model_id.rsplit("/", 1)[-1].lower()
        write_control_vector(path, dict(self.directions), model_hint=hint)
        return Path(path)

    def metadata(self) -> dict[str, Any]:
        """Everything but the tensors, as JSON-ready data."""
        return {
            "model_id": self.model_id,
            "d_model": self.d_model,
            "layers": self.layers,
            "hook_template": self.hook_template,
            "affine_rank": (
                int(next(iter(self.affine.values()))[0].shape[0]) if self.affine else None
            ),
            "provenance": json.loads(json.dumps(self.provenance)),
            "steerlens_version": self.steerlens_version,
            "created_at": self.created_at,
        }
