"""What a steering intervention does to the residual stream ``x`` at one hook point.

Formulas (METHOD.md), with ``v`` the vector and ``a`` the strength:

- :class:`Add`:    ``x + a v``  (negative ``a`` subtracts)
- :class:`Clamp`:  ``x - (v v^T / ||v||^2) x + a v``  (the component along ``v`` becomes ``a v``)
- :class:`Ablate`: clamp with ``a = 0``
- :class:`Affine`: ``x + M x + b`` with ``M = L^T R`` of rank ``r`` (``L``, ``R``: ``[r, d_model]``)

Each is a small frozen object with ``apply(x) -> x``; position masks are handled by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from jaxtyping import Float
from torch import Tensor

from steerlens.errors import NonFiniteError, SpecError, VectorShapeError

Residual = Float[Tensor, "batch pos d_model"]


@runtime_checkable
class Intervention(Protocol):
    """Anything that maps a residual stream to a steered one, keeping its shape."""

    @property
    def d_model(self) -> int: ...

    def apply(self, x: Residual) -> Residual: ...


def check_vector(vector: Tensor, *, name: str = "vector", d_model: int | None = None) -> Tensor:
    """Raise a clear error for a vector that is not a finite 1-D tensor of size ``d_model``."""
    if not isinstance(vector, Tensor):
        raise VectorShapeError(f"{name} must be a torch.Tensor, got {type(vector).__name__}.")
    if vector.ndim != 1:
        raise VectorShapeError(
            f"{name} must be 1-D [d_model], got shape {tuple(vector.shape)}; "
            "pass a single direction (index or squeeze the batch dimension)."
        )
    if d_model is not None and vector.shape[0] != d_model:
        raise VectorShapeError(
            f"{name} has size {vector.shape[0]} but the model's d_model is {d_model}; "
            "the vector was made for a different model."
        )
    if not torch.isfinite(vector).all():
        bad = int((~torch.isfinite(vector)).sum())
        raise NonFiniteError(f"{name} has {bad} NaN/inf entries; steering needs finite values.")
    return vector


def _cast(t: Tensor, like: Tensor) -> Tensor:
    return t if (t.device == like.device and t.dtype == like.dtype) else t.to(like)


@dataclass(frozen=True, eq=False)
class Add:
    """``x + strength * vector``."""

    vector: Float[Tensor, " d_model"]
    strength: float = 1.0

    def __post_init__(self) -> None:
        check_vector(self.vector)

    @property
    def d_model(self) -> int:
        return int(self.vector.shape[0])

    def apply(self, x: Residual) -> Residual:
        return x + self.strength * _cast(self.vector, x)


@dataclass(frozen=True, eq=False)
class Clamp:
    """``x - (v v^T/||v||^2) x + strength * v``: fix the component along ``v``.

    With a unit ``v`` the projection ``x . v`` becomes exactly ``strength``.
    """

    vector: Float[Tensor, " d_model"]
    strength: float = 1.0

    def __post_init__(self) -> None:
        check_vector(self.vector)
        if float(self.vector.detach().norm()) == 0.0:
            raise NonFiniteError("clamp/ablate needs a non-zero vector (its direction is used).")

    @property
    def d_model(self) -> int:
        return int(self.vector.shape[0])

    def apply(self, x: Residual) -> Residual:
        v = _cast(self.vector, x)
        coef = (x @ v) / (v @ v)
        return x + (self.strength - coef)[..., None] * v


def Ablate(vector: Float[Tensor, " d_model"]) -> Clamp:
    """Directional ablation: remove the component along ``vector`` (clamp at 0)."""
    return Clamp(vector, 0.0)


@dataclass(frozen=True, eq=False)
class Affine:
    """``x + L^T (R x) + bias``: a low-rank affine map (rank = rows of ``left``/``right``)."""

    left: Float[Tensor, "rank d_model"]
    right: Float[Tensor, "rank d_model"]
    bias: Float[Tensor, " d_model"] | None = field(default=None)
    strength: float = 1.0

    def __post_init__(self) -> None:
        if self.left.ndim != 2 or self.left.shape != self.right.shape:
            raise VectorShapeError(
                "affine steering needs left and right of equal shape [rank, d_model], got "
                f"{tuple(self.left.shape)} and {tuple(self.right.shape)}."
            )
        for name, t in (("left", self.left), ("right", self.right)):
            if not torch.isfinite(t).all():
                raise NonFiniteError(f"affine {name} has NaN/inf entries.")
        if self.bias is not None:
            check_vector(self.bias, name="affine bias", d_model=self.d_model)

    @property
    def d_model(self) -> int:
        return int(self.left.shape[1])

    @property
    def rank(self) -> int:
        return int(self.left.shape[0])

    def apply(self, x: Residual) -> Residual:
        out = x + self.strength * ((x @ _cast(self.right, x).T) @ _cast(self.left, x))
        if self.bias is not None:
            out = out + self.strength * _cast(self.bias, x)
        return out


MODES = ("add", "clamp", "ablate")


def make_intervention(vector: Tensor, mode: str, strength: float) -> Intervention:
    """Build the intervention for a mode name: ``"add"``, ``"clamp"`` or ``"ablate"``."""
    if mode == "add":
        return Add(vector, strength)
    if mode == "clamp":
        return Clamp(vector, strength)
    if mode == "ablate":
        return Ablate(vector)
    raise SpecError(f"unknown steering mode {mode!r}; use one of {', '.join(MODES)}.")
