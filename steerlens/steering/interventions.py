"""What a steering intervention does to the residual stream ``x`` at one hook point.

Formulas (METHOD.md), with ``v`` the vector and ``a`` the strength (the plan's, see
`steerlens.Steering`):

- `Add`:    ``x + a v``  (negative ``a`` subtracts)
- `Clamp`:  ``x - (v v^T / ||v||^2) x + a v``  (the component along ``v`` becomes ``a v``)
- `Ablate`: ``x - a (v v^T / ||v||^2) x``  (``a = 1`` removes the component along ``v``)
- `Affine`: ``x + a (M x + b)`` with ``M = L^T R`` of rank ``r`` (``L``, ``R``:
  ``[r, d_model]``); rank one without ``b`` is reentrant steering's ``x + (u . x) v``

Each is a small frozen object holding its tensors, with ``apply(x, strength) -> x``; position
masks are handled by the caller. The optimizer trains the same objects
(`steerlens.training.optimize`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from jaxtyping import Float
from torch import Tensor

from steerlens.errors import NonFiniteError, VectorShapeError

Residual = Float[Tensor, "batch pos d_model"]


@runtime_checkable
class Intervention(Protocol):
    """Anything that maps a residual stream to a steered one, keeping its shape.

    ``strength`` is the plan's (`steerlens.Steering`): the intervention holds only the
    tensors. Applying at ``-strength`` is applying the intervention of ``-v`` (``Ablate``
    aside), which is how negated datapoints are steered.
    """

    @property
    def d_model(self) -> int: ...

    def apply(self, x: Residual, strength: float = 1.0) -> Residual: ...


def check_vector(vector: Tensor, *, name: str = "vector", d_model: int | None = None) -> Tensor:
    """Raise a clear error for a vector that is not a finite, real floating-point 1-D tensor of
    size ``d_model``."""
    if not isinstance(vector, Tensor):
        raise VectorShapeError(f"{name} must be a torch.Tensor, got {type(vector).__name__}.")
    if not vector.is_floating_point():
        # Casting would silently drop an imaginary part or round; the caller should decide.
        raise VectorShapeError(
            f"{name} has dtype {vector.dtype}, but steering vectors must be real floating point; "
            "convert it first, e.g. vector.float() (or vector.real.float() for a complex one)."
        )
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
    if vector.device.type == "meta":
        raise VectorShapeError(
            f"{name} is on the 'meta' device, which holds no values; build it on a real device "
            "(e.g. torch.zeros(d_model)) or load its values first."
        )
    if not torch.isfinite(vector).all():
        bad = int((~torch.isfinite(vector)).sum())
        raise NonFiniteError(f"{name} has {bad} NaN/inf entries; steering needs finite values.")
    norm = float(vector.detach().norm())
    if not math.isfinite(norm):
        # Finite entries can still overflow the norm; such a vector turns activations into inf.
        raise NonFiniteError(
            f"{name} has norm {norm} (largest entry {float(vector.detach().abs().max()):.3g}) in "
            f"{vector.dtype}; steering needs a finite norm. Scale it down."
        )
    return vector


def _cast(t: Tensor, like: Tensor) -> Tensor:
    return t if (t.device == like.device and t.dtype == like.dtype) else t.to(like)


@dataclass(frozen=True, eq=False)
class Add:
    """``x + strength * vector``.

    Example:
        >>> Add(torch.ones(2)).apply(torch.zeros(1, 1, 2), 3.0).tolist()
        [[[3.0, 3.0]]]
    """

    vector: Float[Tensor, " d_model"]

    def __post_init__(self) -> None:
        check_vector(self.vector)

    @property
    def d_model(self) -> int:
        return int(self.vector.shape[0])

    def apply(self, x: Residual, strength: float = 1.0) -> Residual:
        return x + strength * _cast(self.vector, x)


def _along(v: Tensor, x: Tensor) -> Tensor:
    """The coefficient of ``x``'s component along ``v``: ``(x . v) / (v . v)``."""
    return (x @ v) / (v @ v)


def _check_direction(vector: Tensor, what: str) -> None:
    check_vector(vector)
    if float(vector.detach().norm()) == 0.0:
        raise NonFiniteError(f"{what} needs a non-zero vector (its direction is used).")


@dataclass(frozen=True, eq=False)
class Clamp:
    """``x - (v v^T/||v||^2) x + strength * v``: fix the component along ``v``.

    With a unit ``v`` the projection ``x . v`` becomes exactly ``strength``.

    Example:
        >>> out = Clamp(torch.tensor([1.0, 0.0])).apply(torch.tensor([[[5.0, 2.0]]]), 3.0)
        >>> out.tolist()
        [[[3.0, 2.0]]]
    """

    vector: Float[Tensor, " d_model"]

    def __post_init__(self) -> None:
        _check_direction(self.vector, "clamp")

    @property
    def d_model(self) -> int:
        return int(self.vector.shape[0])

    def apply(self, x: Residual, strength: float = 1.0) -> Residual:
        v = _cast(self.vector, x)
        return x + (strength - _along(v, x))[..., None] * v


@dataclass(frozen=True, eq=False)
class Ablate:
    """Directional ablation: ``x - strength * (v v^T/||v||^2) x``; strength 1 removes the whole
    component along ``v``, 0.5 half of it.

    Example:
        >>> Ablate(torch.tensor([1.0, 0.0])).apply(torch.tensor([[[5.0, 2.0]]])).tolist()
        [[[0.0, 2.0]]]
    """

    vector: Float[Tensor, " d_model"]

    def __post_init__(self) -> None:
        _check_direction(self.vector, "ablate")

    @property
    def d_model(self) -> int:
        return int(self.vector.shape[0])

    def apply(self, x: Residual, strength: float = 1.0) -> Residual:
        v = _cast(self.vector, x)
        return x - (strength * _along(v, x))[..., None] * v


@dataclass(frozen=True, eq=False)
class Affine:
    """``x + strength * (L^T (R x) + bias)``: a low-rank affine map (rank = rows of ``L``/``R``).

    A rank-one ``Affine`` with ``left = v``, ``right = u`` and no bias is the rank-one
    intervention ``x + (u . x) v`` of reentrant steering.
    """

    left: Float[Tensor, "rank d_model"]
    right: Float[Tensor, "rank d_model"]
    bias: Float[Tensor, " d_model"] | None = field(default=None)

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

    def apply(self, x: Residual, strength: float = 1.0) -> Residual:
        out = x + strength * ((x @ _cast(self.right, x).T) @ _cast(self.left, x))
        if self.bias is not None:
            out = out + strength * _cast(self.bias, x)
        return out


KINDS: dict[str, type[Add] | type[Clamp] | type[Ablate]] = {
    "add": Add,
    "clamp": Clamp,
    "ablate": Ablate,
}
