"""Ensembles of one-shot vectors ("Steering Vector Ensembles"): average vectors trained on
different single examples, so that what they share adds up and what each example alone
taught it averages out.

`ensemble` scales each vector to unit norm at every layer, averages the unit directions and
rescales the average to the members' mean norm (or a norm you give). Members must steer the
same model at the same layers, and be trained the same way.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any, Literal

import torch

from steerlens.errors import (
    InputError,
    LayerError,
    ModelMismatchError,
    NonFiniteError,
    SpecError,
)
from steerlens.steering.vector import SteeringVector, non_additive_steering

# Below this norm the average of the unit directions is taken to be zero: members cancel.
_CANCELLED = 1e-6


def ensemble(
    vectors: Sequence[SteeringVector], *, norm: Literal["mean"] | float = "mean"
) -> SteeringVector:
    """The normalised average of ``vectors``: at each layer, the mean of the members' unit
    directions, rescaled to ``norm``.

    Args:
        vectors: steering vectors of one model, at the same layers, trained the same way
            (e.g. one-shot vectors from different examples); no affine parts.
        norm: ``"mean"`` (default): at each layer, the mean of the members' norms there; or
            one positive number for every layer.

    Returns:
        A ``SteeringVector`` whose provenance records the method, the norm rule, every
        member's provenance and norms, and each member's cosine with the ensemble.

    Raises:
        InputError: no vectors, or something other than a ``SteeringVector``.
        ModelMismatchError: members of different models (or widths).
        LayerError: members at different layers.
        SpecError: affine parts, other hook points, different steering kinds, a bad ``norm``.
        NonFiniteError: a member with a zero direction, or members that cancel out.

    Example:
        >>> import torch
        >>> a = SteeringVector.from_tensor(torch.tensor([3.0, 0.0]), layer=1, model_id="m")
        >>> b = SteeringVector.from_tensor(torch.tensor([0.0, 1.0]), layer=1, model_id="m")
        >>> v = ensemble([a, b])
        >>> [round(x, 4) for x in v.vector.tolist()], round(v.norm(), 4)
        ([1.4142, 1.4142], 2.0)
        >>> v.provenance["method"], v.provenance["n_members"]
        ('ensemble', 2)
    """
    members = _check_members(vectors)
    target = _check_norm(norm)
    first = members[0]
    directions: dict[int, torch.Tensor] = {}
    norms: dict[str, list[float]] = {}
    cosines: dict[str, list[float]] = {}
    for layer in first.layers:
        stack = torch.stack(
            [
                v.directions[layer].detach().float().to(first.directions[layer].device)
                for v in members
            ]
        )
        lengths = stack.norm(dim=-1)
        zero = (lengths == 0).nonzero().flatten().tolist()
        if zero:
            raise NonFiniteError(
                f"member(s) {zero} have a zero direction at layer {layer}, which has no unit "
                "direction to average; leave them out."
            )
        units = stack / lengths[:, None]
        mean = units.mean(dim=0)
        if float(mean.norm()) < _CANCELLED:
            raise NonFiniteError(
                f"the members' unit directions at layer {layer} cancel out (their mean is "
                "zero), so the ensemble has no direction; check their signs, or leave out "
                "the opposing ones."
            )
        scale = float(lengths.mean()) if target is None else target
        direction = mean / mean.norm() * scale
        directions[layer] = direction.to(first.directions[layer].dtype)
        norms[str(layer)] = [float(x) for x in lengths]
        cosines[str(layer)] = [float(x) for x in units @ (mean / mean.norm())]
    provenance: dict[str, Any] = {
        "method": "ensemble",
        "norm": "mean" if target is None else target,
        "n_members": len(members),
        "member_norms": norms,
        "member_cosines": cosines,
        "members": [dict(v.provenance) for v in members],
    }
    kinds = non_additive_steering(first.provenance)
    if kinds:  # kept where to_gguf looks for it
        provenance["steering"] = sorted(kinds)[0]
    return SteeringVector(
        directions=directions,
        model_id=first.model_id,
        hook_template=first.hook_template,
        provenance=provenance,
    )


def _check_members(vectors: Any) -> list[SteeringVector]:
    if isinstance(vectors, SteeringVector):
        raise InputError(
            "ensemble needs a list of vectors, got one SteeringVector; pass [v1, v2, ...]."
        )
    try:
        members = list(vectors)
    except TypeError:
        raise InputError(
            f"ensemble needs a list of SteeringVectors, got a {type(vectors).__name__}."
        ) from None
    if not members:
        raise InputError("ensemble got no vectors; pass at least one SteeringVector.")
    for i, v in enumerate(members):
        if not isinstance(v, SteeringVector):
            raise InputError(
                f"member {i} is a {type(v).__name__}, not a SteeringVector; wrap a tensor with "
                "SteeringVector.from_tensor(t, layer=..., model=model)."
            )
    first = members[0]
    for i, v in enumerate(members):
        if v.affine:
            raise SpecError(
                f"member {i} has affine parts at layer(s) {sorted(v.affine)}; an ensemble "
                "averages added directions only. Ensemble vectors trained with add steering."
            )
        if v.model_id != first.model_id or v.d_model != first.d_model:
            raise ModelMismatchError(
                f"member {i} was made on {v.model_id!r} (d_model {v.d_model}) but member 0 on "
                f"{first.model_id!r} (d_model {first.d_model}); ensemble vectors of one model."
            )
        if v.hook_template != first.hook_template:
            raise SpecError(
                f"member {i} steers at {v.hook_template!r} but member 0 at "
                f"{first.hook_template!r}; ensemble vectors of one hook point."
            )
        if v.layers != first.layers:
            raise LayerError(
                f"member {i} has layers {v.layers} but member 0 has {first.layers}; ensemble "
                "vectors trained at the same layers (or keep one layer of each: "
                "SteeringVector.from_tensor(v.directions[layer], layer=layer, model=model))."
            )
        kinds, first_kinds = (
            non_additive_steering(v.provenance),
            non_additive_steering(first.provenance),
        )
        if kinds != first_kinds:
            raise SpecError(
                f"member {i} was trained with {_kinds(kinds)} steering but member 0 with "
                f"{_kinds(first_kinds)}; their directions mean different things. Ensemble "
                "vectors trained the same way."
            )
    return members


def _kinds(kinds: set[str]) -> str:
    return "/".join(sorted(kinds)) if kinds else "add"


def _check_norm(norm: Any) -> float | None:
    if norm == "mean" and isinstance(norm, str):
        return None
    if isinstance(norm, bool) or not isinstance(norm, numbers.Real):
        raise SpecError(f'norm must be "mean" or a positive number, got {norm!r}.')
    value = float(norm)
    if not (math.isfinite(value) and value > 0):
        raise SpecError(f'norm must be "mean" or a positive finite number, got {value}.')
    return value


__all__ = ["ensemble"]
