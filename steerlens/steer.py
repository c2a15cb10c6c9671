"""Steering as one value (`Steering`) and ``steer()``, the one context manager that
installs it as hooks and always removes them.

Every steerlens function that steers takes ``steering=``: a `Steering` plan, a
``SteeringVector`` (applied at its own layers, strength 1, every token), or a list of these
(applied together, in order).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from steerlens import runtime
from steerlens.errors import SpecError, VectorShapeError
from steerlens.interventions import (
    KINDS,
    Ablate,
    Add,
    Affine,
    Clamp,
    Intervention,
    check_vector,
)
from steerlens.positions import Positions, PositionsLike, as_positions
from steerlens.vector import SteeringVector

Kind = type[Add] | type[Clamp] | type[Ablate]
_KINDS = tuple(KINDS.values())


@dataclass(frozen=True, eq=False)
class Steering:
    """One steering value: what to apply, at which layer(s), on which tokens, how strongly.

    Args:
        what: a ``SteeringVector`` (applied at its own layers unless ``layer`` is given), a
            ``[d_model]`` tensor, or an intervention (``Add``, ``Clamp``, ``Ablate``,
            ``Affine``); the last two need ``layer``.
        layer: layer(s) whose ``blocks.{layer}.hook_resid_pre`` gets the steering.
        strength: the ``a`` in ``x + a v`` (negative subtracts), the clamp value, or the
            fraction of the component an ablation removes. Must be finite.
        positions: ``"all"`` (default), ``"prompt"``, ``"generated"``, ``"last:N"``, a slice or
            list of prompt indices, or a ``Positions``.
        kind: how a vector or tensor is applied: ``Add`` (default), ``Clamp`` or ``Ablate``.
        allow_model_mismatch: apply a vector made on a model with another id.

    Example:
        >>> import torch
        >>> plan = Steering(torch.ones(64), layer=1, strength=2.0, positions="prompt")
        >>> plan
        Steering(Add at layer [1], strength 2, prompt tokens)
        >>> plan.scaled(-1.0).strength
        -2.0
    """

    what: SteeringVector | Tensor | Intervention
    layer: int | Sequence[int] | None = None
    strength: float = 1.0
    positions: PositionsLike = None
    kind: Kind = Add
    allow_model_mismatch: bool = False
    _positions: Positions = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.strength, bool) or not isinstance(self.strength, (int, float)):
            raise SpecError(
                f"strength must be one number, got {self.strength!r}; for several strengths "
                "make one Steering per strength."
            )
        if not math.isfinite(self.strength):
            raise SpecError(f"strength must be finite, got {self.strength}.")
        if self.kind not in _KINDS:
            raise SpecError(
                f"kind must be steerlens.Add, Clamp or Ablate, got {self.kind!r}; for affine "
                "steering pass an Affine intervention as what=."
            )
        if not isinstance(self.what, (SteeringVector, Tensor, Intervention)):
            raise SpecError(
                f"cannot steer with a {type(self.what).__name__}; pass a SteeringVector, a "
                "[d_model] tensor or an intervention (Add/Clamp/Ablate/Affine)."
            )
        if isinstance(self.what, Intervention) and self.kind is not Add:
            raise SpecError(
                "kind= applies to vectors and tensors; an intervention is applied as it is."
            )
        if self.layer is None and not isinstance(self.what, SteeringVector):
            raise SpecError(
                "a bare tensor or intervention needs a layer: Steering(x, layer=<int> or a list)."
            )
        object.__setattr__(self, "_positions", as_positions(self.positions))

    def scaled(self, factor: float) -> Steering:
        """The same plan with ``strength * factor``."""
        return dataclasses.replace(self, strength=self.strength * factor)

    def applied(self, model: Any) -> list[Applied]:
        """The checked per-layer interventions this plan installs on ``model``."""
        d_model = runtime.d_model(model)
        what = self.what
        if isinstance(what, SteeringVector):
            what.check_compatible(model, allow_model_mismatch=self.allow_model_mismatch)
            layers = what.layers if self.layer is None else runtime.check_layers(model, self.layer)
            return [
                Applied(self._vector_intervention(what, la), la, self._positions, self.strength)
                for la in layers
            ]
        layers = runtime.check_layers(model, self.layer)  # type: ignore[arg-type]
        if isinstance(what, Tensor):
            iv: Intervention = self.kind(check_vector(what, d_model=d_model))
        else:
            iv = what
            if iv.d_model != d_model:
                raise VectorShapeError(
                    f"intervention has d_model {iv.d_model} but the model has {d_model}; it was "
                    "made for a different model."
                )
        return [Applied(iv, la, self._positions, self.strength) for la in layers]

    def _vector_intervention(self, vector: SteeringVector, layer: int) -> Intervention:
        # A layer the vector does not have (layer= given) uses its shared direction.
        direction = vector.directions.get(layer)
        if direction is None:
            direction = vector.vector
        if layer in vector.affine:
            if self.kind is not Add:
                raise SpecError("a vector with affine parts can only be applied with kind=Add.")
            left, right = vector.affine[layer]
            return Affine(left, right, direction)
        return self.kind(direction)

    def __repr__(self) -> str:
        if isinstance(self.what, SteeringVector):
            what = f"{self.kind.__name__} of a vector"
        elif isinstance(self.what, Tensor):
            what = self.kind.__name__
        else:
            what = type(self.what).__name__
        layers = "its layers" if self.layer is None else f"layer {_as_list(self.layer)}"
        return (
            f"Steering({what} at {layers}, strength {self.strength:g}, "
            f"{self._positions.describe()})"
        )


def _as_list(layer: int | Sequence[int]) -> list[int]:
    return [layer] if isinstance(layer, int) else list(layer)


@dataclass(frozen=True, eq=False)
class Applied:
    """One intervention at one layer, as a hook applies it (made by `Steering.applied`)."""

    intervention: Intervention
    layer: int
    positions: Positions
    strength: float

    def describe(self) -> str:
        what = f"{type(self.intervention).__name__}(strength={self.strength:g})"
        return f"{what} at layer {self.layer} ({self.positions.describe()})"


SteeringLike = Steering | SteeringVector


def as_plans(steering: SteeringLike | Sequence[SteeringLike] | None) -> list[Steering]:
    """The plans in ``steering`` (``None``: none), or an error naming what to pass instead."""
    if steering is None:
        return []
    items = list(steering) if isinstance(steering, (list, tuple)) else [steering]
    plans = []
    for item in items:
        if isinstance(item, SteeringVector):
            plans.append(Steering(item))
        elif isinstance(item, Steering):
            plans.append(item)
        elif isinstance(item, (Tensor, Intervention)):
            raise SpecError(
                f"a bare {type(item).__name__} does not say where to steer; wrap it in a plan: "
                "steering=steerlens.Steering(x, layer=<int>, strength=..., positions=...)."
            )
        else:
            raise SpecError(
                f"cannot steer with a {type(item).__name__}; pass a steerlens.Steering, a "
                "SteeringVector, or a list of these."
            )
    return plans


def resolve_steering(
    model: Any, steering: SteeringLike | Sequence[SteeringLike] | None
) -> list[Applied]:
    """Every checked per-layer intervention of ``steering`` on ``model``, in order."""
    return [a for plan in as_plans(steering) for a in plan.applied(model)]


def describe_steering(steering: Sequence[Applied]) -> str:
    """A one-line description, e.g. ``"Add(strength=1) at layer 1 (all tokens)"``."""
    return "; ".join(a.describe() for a in steering) if steering else "unsteered"


class SteeringHandle:
    """Yielded by `steer`: the applied interventions (``.steerings``). Position rules
    learn where the prompt is from the runtime (`steerlens.runtime.current_context`),
    which every steerlens forward publishes; in a plain ``model(tokens)`` call every token
    counts as prompt."""

    def __init__(self, steerings: list[Applied]) -> None:
        self.steerings = steerings

    def describe(self) -> str:
        return describe_steering(self.steerings)

    def fwd_hooks(self) -> list[tuple[str, Callable[..., Tensor]]]:
        by_layer: dict[int, list[Applied]] = {}
        for a in self.steerings:
            by_layer.setdefault(a.layer, []).append(a)
        return [(runtime.hook_name(la), _hook(items)) for la, items in sorted(by_layer.items())]


def _hook(items: list[Applied]) -> Callable[..., Tensor]:
    def hook(x: Tensor, *, hook: Any) -> Tensor:
        ctx = runtime.current_context(x.shape[0], x.shape[1], x.device)
        for a in items:
            y = a.intervention.apply(x, a.strength)
            mask = a.positions.mask(ctx, x.shape[1])
            if mask is not None and ctx.offset == 0 and a.positions.kind != "generated":
                _check_selects_a_token(a, mask)
            x = y if mask is None else torch.where(mask[..., None], y, x)
        return x

    return hook


def _check_selects_a_token(a: Applied, mask: Tensor) -> None:
    """Refuse a prompt position rule that selects no token of some row: it would steer
    nothing there, silently."""
    empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise SpecError(
            f"positions {a.positions.describe()!r} select no token of prompt row(s) {empty} "
            f"at layer {a.layer}, so nothing would be steered there; pick positions inside "
            "every prompt (indices count from its first token, negative ones from its end)."
        )


@contextlib.contextmanager
def steer(
    model: Any, steering: SteeringLike | Sequence[SteeringLike] | None
) -> Iterator[SteeringHandle]:
    """Steer ``model`` inside a ``with`` block; the hooks are removed on exit, even on error.

    Args:
        model: a TransformerLens model (``TransformerBridge`` or ``HookedTransformer``).
        steering: a `Steering` plan, a ``SteeringVector`` (its own layers, strength 1,
            every token), or a list of these (applied together, in order); ``None`` steers
            nothing.

    Example:
        >>> import torch
        >>> from steerlens.testing import tiny_model
        >>> model = tiny_model()
        >>> tokens = torch.tensor([[5, 6, 7]])
        >>> with steer(model, Steering(torch.ones(64), layer=1, strength=0.0)):
        ...     same = torch.allclose(model(tokens), model(tokens))
        >>> same
        True
    """
    handle = SteeringHandle(resolve_steering(model, steering))
    if not handle.steerings:
        yield handle
        return
    with model.hooks(fwd_hooks=handle.fwd_hooks()):
        yield handle


__all__ = [
    "Applied",
    "Steering",
    "SteeringHandle",
    "SteeringLike",
    "as_plans",
    "describe_steering",
    "resolve_steering",
    "steer",
]
