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


class RowSteeringHandle:
    """Yielded by `steer_rows`: ``.rows[i]`` holds the applied interventions of batch row
    ``i`` (an empty list for an unsteered row)."""

    def __init__(self, rows: list[list[Applied]]) -> None:
        self.rows = rows

    def describe(self) -> str:
        return " | ".join(f"row {i}: {describe_steering(r)}" for i, r in enumerate(self.rows))

    def fwd_hooks(self) -> list[tuple[str, Callable[..., Tensor]]]:
        layers = sorted({a.layer for row in self.rows for a in row})
        hooks = []
        for la in layers:
            # Slot k holds each row's k-th intervention at this layer: applying the slots in
            # order applies every row's interventions in the order steer() would.
            per_row = [[a for a in row if a.layer == la] for row in self.rows]
            depth = max(len(items) for items in per_row)
            slots = [
                _Slot([(r, items[k]) for r, items in enumerate(per_row) if len(items) > k])
                for k in range(depth)
            ]
            hooks.append((runtime.hook_name(la), _row_hook(slots, len(self.rows))))
        return hooks


class _Slot:
    """The interventions of some rows at one hook, applied in one pass: every ``Add`` as one
    ``[batch, d_model]`` offset, other interventions once per group of rows that share them."""

    def __init__(self, members: list[tuple[int, Applied]]) -> None:
        self.members = members
        self.adds = [(r, a) for r, a in members if type(a.intervention) is Add]
        groups: dict[tuple[int, float], tuple[Applied, list[int]]] = {}
        for r, a in members:
            if type(a.intervention) is not Add:
                groups.setdefault((id(a.intervention), a.strength), (a, []))[1].append(r)
        self.groups = list(groups.values())
        by_positions: dict[Positions, tuple[Applied, list[int]]] = {}
        for r, a in members:
            by_positions.setdefault(a.positions, (a, []))[1].append(r)
        self.by_positions = list(by_positions.values())
        self._offsets: dict[tuple[torch.device, torch.dtype, int], Tensor] = {}

    def offsets(self, x: Tensor) -> Tensor:
        """``[batch, d_model]``: ``strength * vector`` for the rows that add, 0 elsewhere, made
        as ``Add.apply`` makes it (the vector in ``x``'s dtype times the strength)."""
        key = (x.device, x.dtype, x.shape[0])
        if key not in self._offsets:
            out = torch.zeros(x.shape[0], x.shape[-1], device=x.device, dtype=x.dtype)
            for r, a in self.adds:
                vector = a.intervention.vector  # type: ignore[attr-defined]
                out[r] = a.strength * vector.to(device=x.device, dtype=x.dtype)
            self._offsets[key] = out
        return self._offsets[key]

    def steered(self, x: Tensor) -> Tensor:
        y = x + self.offsets(x)[:, None, :] if self.adds else x.clone()
        for a, rows in self.groups:
            index = torch.tensor(rows, device=x.device)
            y[index] = a.intervention.apply(x[index], a.strength)
        return y

    def mask(self, ctx: runtime.TokenContext, x: Tensor) -> Tensor:
        """Which tokens of which rows this slot steers (rows outside it: none)."""
        out = torch.zeros(x.shape[0], x.shape[1], dtype=torch.bool, device=x.device)
        for a, rows in self.by_positions:
            index = torch.tensor(rows, device=x.device)
            chosen = a.positions.mask(ctx, x.shape[1])
            if chosen is None:
                out[index] = True
                continue
            if ctx.offset == 0 and a.positions.kind != "generated":
                hits = chosen[index].any(dim=1).tolist()
                empty = [r for r, hit in zip(rows, hits, strict=True) if not hit]
                if empty:
                    raise SpecError(
                        f"positions {a.positions.describe()!r} select no token of prompt "
                        f"row(s) {empty} at layer {a.layer}, so nothing would be steered "
                        "there; pick positions inside every prompt (indices count from its "
                        "first token, negative ones from its end)."
                    )
            out[index] = chosen[index]
        return out


def _row_hook(slots: list[_Slot], n_rows: int) -> Callable[..., Tensor]:
    def hook(x: Tensor, *, hook: Any) -> Tensor:
        if x.shape[0] != n_rows:
            raise SpecError(
                f"steer_rows was given {n_rows} steerings but the forward call has "
                f"{x.shape[0]} rows; pass one steering (or None) per row of each batch."
            )
        ctx = runtime.current_context(x.shape[0], x.shape[1], x.device)
        for slot in slots:
            x = torch.where(slot.mask(ctx, x)[..., None], slot.steered(x), x)
        return x

    return hook


RowSteering = SteeringLike | Sequence[SteeringLike] | None


def check_row_steerings(steerings: Sequence[RowSteering]) -> list[RowSteering]:
    """``steerings`` as a list (one entry per row), or an error saying what to pass."""
    if isinstance(steerings, (Steering, SteeringVector, Tensor, str)) or not isinstance(
        steerings, Sequence
    ):
        raise SpecError(
            f"steerings must be a list with one steering (or None) per row, got "
            f"{type(steerings).__name__}; for one steering of every row use steer() instead, "
            "or pass [plan] * n_rows."
        )
    if not steerings:
        raise SpecError("steerings is empty; pass one steering (or None) per row.")
    return list(steerings)


@contextlib.contextmanager
def steer_rows(model: Any, steerings: Sequence[RowSteering]) -> Iterator[RowSteeringHandle]:
    """Steer each row of a batch with its own steering inside a ``with`` block: row ``i`` of
    every forward call gets ``steerings[i]``; the hooks are removed on exit, even on error.

    Rows may differ in vector, strength, layer, kind and positions. At each hook all the
    rows' ``Add`` steerings are applied as one ``[batch, d_model]`` offset; other
    interventions once per group of rows sharing them. Each row gets exactly what
    `steer` would give it alone. Every forward call inside the block must have
    ``len(steerings)`` rows.

    Args:
        model: a TransformerLens model.
        steerings: one entry per batch row: a `Steering` plan, a ``SteeringVector``, a list
            of these (applied together, in order), or ``None`` (unsteered).

    Example:
        >>> import torch
        >>> from steerlens.testing import tiny_model
        >>> model = tiny_model()
        >>> tokens = torch.tensor([[5, 6, 7], [5, 6, 7]])
        >>> plan = Steering(torch.ones(64), layer=1, strength=3.0)
        >>> with steer_rows(model, [plan, None]):
        ...     both = model(tokens)
        >>> with steer(model, plan):
        ...     steered = model(tokens)
        >>> torch.equal(both[0], steered[0]), torch.equal(both[1], model(tokens)[1])
        (True, True)
    """
    rows = [resolve_steering(model, s) for s in check_row_steerings(steerings)]
    handle = RowSteeringHandle(rows)
    if not any(rows):
        yield handle
        return
    with model.hooks(fwd_hooks=handle.fwd_hooks()):
        yield handle


__all__ = [
    "Applied",
    "RowSteering",
    "RowSteeringHandle",
    "Steering",
    "SteeringHandle",
    "SteeringLike",
    "as_plans",
    "check_row_steerings",
    "describe_steering",
    "resolve_steering",
    "steer",
    "steer_rows",
]
