"""Steering as one value (`Steering`) and ``steer()``, the one context manager that
installs it as hooks and always removes them.

Every steerlens function that steers takes ``steering=``: a `Steering` plan, a
``SteeringVector`` (applied at its own layers, strength 1, every token), a `Conditional` plan
(a plan applied only to the rows whose prompt fires a condition), or a list of these (applied
together, in order).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from steerlens import runtime
from steerlens.errors import LayerError, SpecError, SteeringWarning, VectorShapeError
from steerlens.steering.interventions import (
    KINDS,
    Ablate,
    Add,
    Affine,
    Clamp,
    Intervention,
    check_vector,
)
from steerlens.steering.positions import Positions, PositionsLike, as_positions
from steerlens.steering.vector import SteeringVector

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
        positions: ``"all"`` (default), ``"prompt"``, ``"generated"``, ``"opening:N"`` (the
            prompt and the reply's first N tokens), ``"last:N"``, a slice or list of prompt
            indices, or a ``Positions``.
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

    def to_lm_eval(
        self,
        path: str | Path,
        *,
        model: Any = None,
        decoder_layers: str | None = None,
        additive_ok: bool = False,
    ) -> Path:
        """Write this plan as lm-eval's ``steered``-model file (`SteeringVector.to_lm_eval`).

        lm-eval steers every token of every request, so only ``positions="all"`` can be
        written; ``what`` must be a ``SteeringVector`` (wrap a tensor with
        ``SteeringVector.from_tensor``), restricted to ``layer`` when that is given.

        Raises:
            SpecError: other positions, or a tensor or intervention as ``what``; and what
                `SteeringVector.to_lm_eval` refuses.

        Example:
            >>> import tempfile
            >>> v = SteeringVector.from_tensor(torch.ones(64), layer=1, model_id="tiny")
            >>> with tempfile.TemporaryDirectory() as tmp:
            ...     Steering(v, positions="prompt").to_lm_eval(f"{tmp}/s.pt")
            Traceback (most recent call last):
            ...
            steerlens.errors.SpecError: lm-eval's steered model steers every token ...
        """
        if self._positions.kind != "all":
            raise SpecError(
                f"lm-eval's steered model steers every token of every request, but this plan "
                f"steers {self._positions.describe()}; export it with positions='all' (the "
                "default), or evaluate it with steerlens, which applies position rules."
            )
        vector = self.what
        if not isinstance(vector, SteeringVector):
            raise SpecError(
                f"only a plan over a SteeringVector can be exported to lm-eval, not a "
                f"{type(vector).__name__}; wrap a tensor with SteeringVector.from_tensor(t, "
                "layer=..., model=model)."
            )
        if self.layer is not None:
            picked = {la: vector.directions.get(la) for la in _as_list(self.layer)}
            vector = dataclasses.replace(
                vector,
                directions={la: vector.vector if v is None else v for la, v in picked.items()},
                affine={la: lr for la, lr in vector.affine.items() if la in picked},
            )
        return vector.to_lm_eval(
            path,
            strength=self.strength,
            kind=self.kind,
            model=model,
            decoder_layers=decoder_layers,
            additive_ok=additive_ok,
        )

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


@runtime_checkable
class PromptCondition(Protocol):
    """What a `Conditional` plan asks of its condition (a fitted
    `steerlens.steering.conditional.Condition` is one): the layer it reads and, for the rows of a
    forward call, whether each row's prompt fires it.

    ``fires`` is called at ``blocks.{layer}.hook_resid_pre`` of a forward call with nothing
    cached (the one that holds the prompt), before any steering at that hook; ``ctx`` says
    where each row's prompt lies.
    """

    @property
    def layer(self) -> int: ...

    def check_compatible(self, model: Any) -> None: ...

    def fires(
        self, x: Float[Tensor, "batch pos d_model"], ctx: runtime.TokenContext
    ) -> Bool[Tensor, " batch"]: ...

    def describe(self) -> str: ...


@dataclass(frozen=True, eq=False)
class Applied:
    """One intervention at one layer, as a hook applies it (made by `Steering.applied`);
    with a ``condition``, only on the rows whose prompt fires it (`Conditional`)."""

    intervention: Intervention
    layer: int
    positions: Positions
    strength: float
    condition: PromptCondition | None = None

    def describe(self) -> str:
        what = f"{type(self.intervention).__name__}(strength={self.strength:g})"
        where = "" if self.condition is None else f", where {self.condition.describe()} fires"
        return f"{what} at layer {self.layer} ({self.positions.describe()}{where})"


@dataclass(frozen=True, eq=False)
class Conditional:
    """A plan applied only to the rows whose prompt fires a condition (conditional activation
    steering, CAST; Lee et al. 2024); the other rows are left exactly as unsteered.

    The condition reads each row's prompt at ``blocks.{condition.layer}.hook_resid_pre`` in
    the forward call that holds the prompt (nothing cached yet); the KV-cached decoding steps
    after it keep that row's decision. It must read at or below every layer the plan steers,
    so that the decision is made before the steering applies.

    Args:
        steering: the plan to apply: a `Steering` or a ``SteeringVector``.
        condition: a `PromptCondition`, e.g. the ``Condition`` that
            `steerlens.steering.conditional.fit_condition` fits from two prompt sets.

    Raises:
        LayerError: the condition reads a layer above one the plan steers.

    Example:
        >>> import torch
        >>> from steerlens.steering.conditional import Condition
        >>> from steerlens.testing import tiny_model
        >>> model = tiny_model()
        >>> never = Condition(layer=0, direction=torch.ones(64), threshold=1.0,
        ...                   model_id="steerlens/tiny-llama")  # a cosine is never above 1
        >>> plan = Conditional(Steering(torch.ones(64), layer=1, strength=8.0), never)
        >>> tokens = torch.tensor([[5, 6, 7]])
        >>> with steer(model, plan):
        ...     steered = model(tokens)
        >>> torch.equal(steered, model(tokens))
        True
    """

    steering: Steering | SteeringVector
    condition: PromptCondition
    _plan: Steering = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.steering, SteeringVector):
            object.__setattr__(self, "steering", Steering(self.steering))
        if not isinstance(self.steering, Steering):
            fix = (
                "a Conditional inside a Conditional is not supported; fit one condition on "
                "the prompts that should fire"
                if isinstance(self.steering, Conditional)
                else "wrap it: Conditional(Steering(x, layer=...), condition)"
            )
            raise SpecError(
                "Conditional applies a steerlens.Steering plan or a SteeringVector, got a "
                f"{type(self.steering).__name__}; {fix}."
            )
        if not isinstance(self.condition, PromptCondition):
            raise SpecError(
                f"condition must say where it reads and which prompts fire it (layer, "
                f"fires, check_compatible, describe), got a {type(self.condition).__name__}; "
                "fit one with steerlens.steering.fit_condition(model, positive, negative, "
                "layer=...)."
            )
        object.__setattr__(self, "_plan", self.steering)
        self._check_order(self._steered_layers())

    def _steered_layers(self) -> list[int]:
        if self._plan.layer is not None:
            return _as_list(self._plan.layer)
        # Steering refuses a bare tensor or intervention without a layer.
        return self._plan.what.layers  # type: ignore[union-attr]

    def _check_order(self, layers: Sequence[int]) -> None:
        read = self.condition.layer
        below = sorted({la for la in layers if la < read})
        if below:
            raise LayerError(
                f"the condition reads layer {read} but the plan steers layer(s) {below} below "
                "it, where the decision is not known yet (the prompt reaches layer "
                f"{min(below)} first). Fit the condition at a layer <= {min(layers)} "
                f"(fit_condition(..., layer={min(layers)})), or steer at layers >= {read}."
            )

    @property
    def what(self) -> SteeringVector | Tensor | Intervention:
        """What the inner plan applies."""
        return self._plan.what

    @property
    def strength(self) -> float:
        """The inner plan's strength."""
        return self._plan.strength

    def scaled(self, factor: float) -> Conditional:
        """The same condition, with the plan's strength times ``factor``."""
        return dataclasses.replace(self, steering=self._plan.scaled(factor))

    def applied(self, model: Any) -> list[Applied]:
        """The checked per-layer interventions, each gated by the condition."""
        self.condition.check_compatible(model)
        applied = self._plan.applied(model)
        self._check_order([a.layer for a in applied])
        return [dataclasses.replace(a, condition=self.condition) for a in applied]

    def __repr__(self) -> str:
        return f"Conditional({self.steering!r}, where {self.condition.describe()} fires)"


Plan = Steering | Conditional
SteeringLike = Steering | Conditional | SteeringVector


def as_plans(steering: SteeringLike | Sequence[SteeringLike] | None) -> list[Plan]:
    """The plans in ``steering`` (``None``: none), or an error naming what to pass instead."""
    if steering is None:
        return []
    items = list(steering) if isinstance(steering, (list, tuple)) else [steering]
    plans: list[Plan] = []
    for item in items:
        if isinstance(item, SteeringVector):
            plans.append(Steering(item))
        elif isinstance(item, (Steering, Conditional)):
            plans.append(item)
        elif isinstance(item, (Tensor, Intervention)):
            raise SpecError(
                f"a bare {type(item).__name__} does not say where to steer; wrap it in a plan: "
                "steering=steerlens.Steering(x, layer=<int>, strength=..., positions=...)."
            )
        else:
            raise SpecError(
                f"cannot steer with a {type(item).__name__}; pass a steerlens.Steering, a "
                "SteeringVector, a steerlens.steering.steer.Conditional, or a list of these."
            )
    return plans


def resolve_steering(
    model: Any, steering: SteeringLike | Sequence[SteeringLike] | None
) -> list[Applied]:
    """Every checked per-layer intervention of ``steering`` on ``model``, in order."""
    return [a for plan in as_plans(steering) for a in plan.applied(model)]


# A vector is made for strength 1 (an optimized vector as trained, a difference of means as
# measured); this many times that is well past where models stay coherent (SmolLM2 replies
# loop or break down from about 4x a trained refusal vector).
FAR_STRENGTH = 10.0


def unusual_use(steering: SteeringLike | Sequence[SteeringLike] | None) -> list[str]:
    """Notes on plans that apply a ``SteeringVector`` at a layer it was not made at, or with
    ``Add`` or ``Clamp`` at a strength beyond `FAR_STRENGTH` times the one it was made for.

    Example:
        >>> from steerlens import SteeringVector
        >>> v = SteeringVector.from_tensor(torch.ones(64), layer=1, model_id="m")
        >>> unusual_use(Steering(v, layer=0, strength=40))  # doctest: +NORMALIZE_WHITESPACE
        ['the vector was made at layer 1 and is applied at layer 0, where the residual
        stream means something else; pass layer=1 (or leave layer= out).', 'strength 40
        applies the vector at 40x the size it was made for (1 = as made); steered models
        usually break down well before 10x: try strengths between 0.5 and 4.']
    """
    notes = []
    for plan in as_plans(steering):
        if not isinstance(plan, Steering) or not isinstance(plan.what, SteeringVector):
            continue
        made = plan.what.layers
        if plan.layer is not None:
            other = [la for la in _as_list(plan.layer) if la not in made]
            if other:
                notes.append(
                    f"the vector was made at layer {_listed(made)} and is applied at layer "
                    f"{_listed(other)}, where the residual stream means something else; pass "
                    f"layer={_listed(made)} (or leave layer= out)."
                )
        if plan.kind in (Add, Clamp) and abs(plan.strength) > FAR_STRENGTH:
            notes.append(
                f"strength {plan.strength:g} applies the vector at {abs(plan.strength):g}x the "
                "size it was made for (1 = as made); steered models usually break down well "
                f"before {FAR_STRENGTH:g}x: try strengths between 0.5 and 4."
            )
    return notes


def warn_unusual_use(steering: SteeringLike | Sequence[SteeringLike] | None) -> None:
    """A `SteeringWarning` for each of `unusual_use`'s notes."""
    for note in unusual_use(steering):
        warnings.warn(note, SteeringWarning, stacklevel=3)


def _listed(layers: Sequence[int]) -> str:
    return str(layers[0]) if len(layers) == 1 else str(list(layers))


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
        self.decisions = _Decisions()

    def describe(self) -> str:
        return describe_steering(self.steerings)

    def fwd_hooks(self) -> list[tuple[str, Callable[..., Tensor]]]:
        by_layer: dict[int, list[Applied]] = {}
        for a in self.steerings:
            by_layer.setdefault(a.layer, []).append(a)
        conditions = _conditions_by_layer(self.steerings)
        layers = sorted(set(by_layer) | set(conditions))
        return [
            (
                runtime.hook_name(la),
                _hook(by_layer.get(la, []), conditions.get(la, []), self.decisions),
            )
            for la in layers
        ]


def _conditions_by_layer(steerings: Sequence[Applied]) -> dict[int, list[PromptCondition]]:
    """Each condition (once, however many interventions it gates) at the layer it reads."""
    found: dict[int, PromptCondition] = {}
    for a in steerings:
        if a.condition is not None:
            found.setdefault(id(a.condition), a.condition)
    out: dict[int, list[PromptCondition]] = {}
    for c in found.values():
        out.setdefault(c.layer, []).append(c)
    return out


class _Decisions:
    """Each condition's per-row decision in one steering block: made on the prompt in a
    forward call with nothing cached, kept for the KV-cached decoding steps after it."""

    def __init__(self) -> None:
        # id(condition) -> (fires, the context it was read in)
        self._made: dict[int, tuple[Tensor, runtime.TokenContext]] = {}

    def observe(
        self,
        conditions: Sequence[PromptCondition],
        x: Float[Tensor, "batch pos d_model"],
        ctx: runtime.TokenContext,
    ) -> None:
        if ctx.offset != 0:
            return
        for c in conditions:
            with torch.no_grad():
                fires = c.fires(x, ctx)
            if tuple(fires.shape) != (x.shape[0],):
                raise SpecError(
                    f"condition {c.describe()} returned a decision of shape "
                    f"{tuple(fires.shape)} for a batch of {x.shape[0]} rows; fires() must "
                    "return one bool per row."
                )
            self._made[id(c)] = (fires.to(device=x.device, dtype=torch.bool), ctx)

    def rows(
        self, condition: PromptCondition, ctx: runtime.TokenContext, batch: int
    ) -> Bool[Tensor, " batch"]:
        """Which rows of this forward call ``condition`` lets through."""
        made = self._made.get(id(condition))
        if made is None:
            raise SpecError(
                f"conditional steering: a KV-cached forward call ran inside this steering "
                f"block without the call that holds its prompt, so {condition.describe()} "
                "never read the prompt; run the prompt (nothing cached) inside the block first."
            )
        fires, read = made
        if ctx.offset == 0:
            # Read in this very call (an unpublished context is rebuilt at every hook).
            if read is ctx or (
                torch.equal(read.prompt_start, ctx.prompt_start)
                and torch.equal(read.prompt_end, ctx.prompt_end)
            ):
                return fires
            raise SpecError(
                f"conditional steering: a forward call reached the steered layer without "
                f"passing layer {condition.layer}, where {condition.describe()} reads its "
                "prompt; run the model from its first layer inside the steering block."
            )
        if fires.shape[0] == batch:
            return fires
        # Beam search's layout: each prompt's continuations in consecutive rows.
        if batch % fires.shape[0] == 0:
            k = batch // fires.shape[0]
            if torch.equal(read.prompt_start.repeat_interleave(k), ctx.prompt_start):
                return fires.repeat_interleave(k)
        raise SpecError(
            f"conditional steering: the prompt call had {fires.shape[0]} rows but this "
            f"KV-cached call has {batch}, not laid out as consecutive continuations of each "
            "prompt, so the rows' decisions cannot be matched to their prompts; keep the rows "
            "of a decoding loop in their prompts' order."
        )


def _hook(
    items: list[Applied], conditions: list[PromptCondition], decisions: _Decisions
) -> Callable[..., Tensor]:
    def hook(x: Tensor, *, hook: Any) -> Tensor:
        ctx = runtime.current_context(x.shape[0], x.shape[1], x.device)
        decisions.observe(conditions, x, ctx)  # before any steering at this hook
        for a in items:
            y = a.intervention.apply(x, a.strength)
            mask = a.positions.mask(ctx, x.shape[1])
            if mask is not None and ctx.offset == 0 and a.positions.kind != "generated":
                _check_selects_a_token(a, mask)
            if a.condition is not None:
                fires = decisions.rows(a.condition, ctx, x.shape[0])[:, None]
                mask = fires.expand(-1, x.shape[1]) if mask is None else mask & fires
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
        self.decisions = _Decisions()

    def describe(self) -> str:
        return " | ".join(f"row {i}: {describe_steering(r)}" for i, r in enumerate(self.rows))

    def fwd_hooks(self) -> list[tuple[str, Callable[..., Tensor]]]:
        conditions = _conditions_by_layer([a for row in self.rows for a in row])
        layers = sorted({a.layer for row in self.rows for a in row} | set(conditions))
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
            hook = _row_hook(slots, len(self.rows), conditions.get(la, []), self.decisions)
            hooks.append((runtime.hook_name(la), hook))
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
        self.gated = [(r, a.condition) for r, a in members if a.condition is not None]
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

    def mask(self, ctx: runtime.TokenContext, x: Tensor, decisions: _Decisions) -> Tensor:
        """Which tokens of which rows this slot steers (rows outside it, and rows whose
        condition does not fire: none)."""
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
        for r, condition in self.gated:
            out[r] &= decisions.rows(condition, ctx, x.shape[0])[r]
        return out


def _row_hook(
    slots: list[_Slot], n_rows: int, conditions: list[PromptCondition], decisions: _Decisions
) -> Callable[..., Tensor]:
    def hook(x: Tensor, *, hook: Any) -> Tensor:
        if x.shape[0] != n_rows:
            raise SpecError(
                f"steer_rows was given {n_rows} steerings but the forward call has "
                f"{x.shape[0]} rows; pass one steering (or None) per row of each batch."
            )
        ctx = runtime.current_context(x.shape[0], x.shape[1], x.device)
        decisions.observe(conditions, x, ctx)  # before any steering at this hook
        for slot in slots:
            x = torch.where(slot.mask(ctx, x, decisions)[..., None], slot.steered(x), x)
        return x

    return hook


RowSteering = SteeringLike | Sequence[SteeringLike] | None


def check_row_steerings(steerings: Sequence[RowSteering]) -> list[RowSteering]:
    """``steerings`` as a list (one entry per row), or an error saying what to pass."""
    if isinstance(
        steerings, (Steering, Conditional, SteeringVector, Tensor, str)
    ) or not isinstance(steerings, Sequence):
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
    "Conditional",
    "Plan",
    "PromptCondition",
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
