"""``steer()``: the one context manager that installs steering hooks and always removes them."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from steerlens import runtime
from steerlens.errors import SpecError, SteerlensError
from steerlens.interventions import Intervention, check_vector, make_intervention
from steerlens.positions import Positions, PositionsLike, as_positions
from steerlens.vector import SteeringVector


@dataclass(frozen=True, eq=False)
class Steering:
    """One intervention at one layer, restricted to some positions."""

    intervention: Intervention
    layer: int
    positions: Positions = field(default_factory=Positions.all)


SteeringLike = SteeringVector | Tensor | Intervention | Steering


class SteeringHandle:
    """Yielded by :func:`steer`: the resolved steerings. Position rules learn where the prompt
    is from the runtime (:func:`steerlens.runtime.current_context`), which every steerlens
    forward publishes; in a plain ``model(tokens)`` call every token counts as prompt."""

    def __init__(self, steerings: list[Steering]) -> None:
        self.steerings = steerings

    def _hook_for(self, items: list[Steering]) -> Callable[..., Tensor]:
        def hook(x: Tensor, *, hook: Any) -> Tensor:
            ctx = runtime.current_context(x.shape[0], x.shape[1], x.device)
            for s in items:
                y = s.intervention.apply(x)
                mask = s.positions.mask(ctx, x.shape[1])
                x = y if mask is None else torch.where(mask[..., None], y, x)
            return x

        return hook

    def fwd_hooks(self) -> list[tuple[str, Callable[..., Tensor]]]:
        by_layer: dict[int, list[Steering]] = {}
        for s in self.steerings:
            by_layer.setdefault(s.layer, []).append(s)
        return [
            (runtime.hook_name(la), self._hook_for(items)) for la, items in sorted(by_layer.items())
        ]


def resolve_steerings(
    model: Any,
    steering: SteeringLike | Sequence[SteeringLike] | None,
    *,
    layer: int | Sequence[int] | None = None,
    strength: float = 1.0,
    mode: str = "add",
    positions: PositionsLike = None,
    allow_model_mismatch: bool = False,
) -> list[Steering]:
    """Turn the many accepted forms of ``steering`` into a checked list of :class:`Steering`."""
    if steering is None:
        return []
    items = list(steering) if isinstance(steering, (list, tuple)) else [steering]
    pos = as_positions(positions)
    layers = None if layer is None else ([layer] if isinstance(layer, int) else list(layer))
    d_model = runtime.d_model(model)
    out: list[Steering] = []
    for item in items:
        if isinstance(item, Steering):
            runtime.check_layer(model, item.layer)
            _check_d_model(item.intervention, d_model)
            out.append(item)
        elif isinstance(item, SteeringVector):
            item.check_compatible(model, allow_model_mismatch=allow_model_mismatch)
            if layers is not None:
                for la in layers:
                    runtime.check_layer(model, la)
                iv = make_intervention(item.vector, mode, strength)
                out.extend(Steering(iv, la, pos) for la in layers)
            else:
                by_layer = item.interventions(mode, strength)
                out.extend(Steering(iv, la, pos) for la, iv in sorted(by_layer.items()))
        elif isinstance(item, (Tensor, Intervention)):
            if layers is None:
                raise SteerlensError(
                    "a bare tensor or intervention needs layer=...; pass layer=<int> (or a list)."
                )
            if isinstance(item, Tensor):
                iv = make_intervention(check_vector(item, d_model=d_model), mode, strength)
            else:
                iv = item
                _check_d_model(iv, d_model)
            for la in layers:
                runtime.check_layer(model, la)
                out.append(Steering(iv, la, pos))
        else:
            raise SpecError(
                f"cannot steer with a {type(item).__name__}; pass a SteeringVector, a tensor, "
                "an intervention (Add/Clamp/Ablate/Affine), a Steering, or a list of these."
            )
    return out


def _check_d_model(iv: Intervention, d_model: int) -> None:
    if iv.d_model != d_model:
        raise SteerlensError(
            f"intervention has d_model {iv.d_model} but the model has {d_model}; it was made for "
            "a different model."
        )


@contextlib.contextmanager
def steer(
    model: Any,
    steering: SteeringLike | Sequence[SteeringLike] | None,
    *,
    layer: int | Sequence[int] | None = None,
    strength: float = 1.0,
    mode: str = "add",
    positions: PositionsLike = None,
    allow_model_mismatch: bool = False,
) -> Iterator[SteeringHandle]:
    """Steer ``model`` inside a ``with`` block; the hooks are removed on exit, even on error.

    Args:
        model: a TransformerLens model (``TransformerBridge`` or ``HookedTransformer``).
        steering: a ``SteeringVector`` (its own layers), a ``[d_model]`` tensor or an
            intervention (``Add``, ``Clamp``, ``Ablate``, ``Affine``; these need ``layer``),
            a ``Steering``, or a list of these (applied together, in order).
        layer: layer(s) whose ``blocks.{layer}.hook_resid_pre`` gets the steering.
        strength: the ``a`` in ``x + a v`` (negative subtracts) or the clamp value.
        mode: ``"add"``, ``"clamp"`` or ``"ablate"``.
        positions: ``"all"`` (default), ``"prompt"``, ``"generated"``, ``"last:N"``, a slice
            or list of prompt indices, or a ``Positions``.
        allow_model_mismatch: apply a vector made on a model with another id.

    Example:
        >>> import torch
        >>> from steerlens.testing import tiny_model
        >>> model = tiny_model()
        >>> tokens = torch.tensor([[5, 6, 7]])
        >>> with steer(model, torch.ones(64), layer=1, strength=0.0):
        ...     same = torch.allclose(model(tokens), model(tokens))
        >>> same
        True
    """
    steerings = resolve_steerings(
        model,
        steering,
        layer=layer,
        strength=strength,
        mode=mode,
        positions=positions,
        allow_model_mismatch=allow_model_mismatch,
    )
    handle = SteeringHandle(steerings)
    if not steerings:
        yield handle
        return
    with model.hooks(fwd_hooks=handle.fwd_hooks()):
        yield handle
