"""`make_engine`: the packed engine where it reproduces the hooked one, else the hooked one."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch

from steerlens import runtime
from steerlens.errors import user_stacklevel
from steerlens.training.data import TokenizedDatapoint
from steerlens.training.engines.checks import checked
from steerlens.training.engines.families import adapter_for, architecture
from steerlens.training.engines.families.base import hf_model
from steerlens.training.engines.hooked import HookedEngine
from steerlens.training.engines.packed import PackedEngine
from steerlens.training.engines.steering import unsteered

# Architectures already named in a "no adapter" notice in this process.
_NOTICED: set[str] = set()


class NoAdapterNotice(UserWarning):
    """A bridged Hugging Face family has no packed-engine adapter; the hooked path is used."""


def _notice_no_adapter(model: Any) -> None:
    name = architecture(model)
    if name in _NOTICED:
        return
    _NOTICED.add(name)
    warnings.warn(
        f"steerlens: no fast-path adapter for the model family {name} (or for this "
        "configuration of it); optimizing with the slower hooked engine (same results). "
        "Families with an adapter: steerlens.training.engines.families.registered().",
        NoAdapterNotice,
        stacklevel=user_stacklevel(),
    )


def make_engine(
    model: Any,
    data: Sequence[TokenizedDatapoint],
    layers: Sequence[int],
    *,
    fast: bool = True,
    groups: Sequence[int] | None = None,
) -> PackedEngine | HookedEngine:
    """The packed engine when this model's family has an adapter and the packed forward
    reproduces the hooked one, else the hooked engine.

    The check runs unsteered, on the group with the longest datapoint, once per model, layer
    set and kind of layout (`PackedEngine.layout_kind`); its verdict is kept on the model until
    the model changes (`steerlens.training.engines.checks`), so later engines for the same
    model and layers skip it. A bridged Hugging Face model whose family has no adapter takes
    the hooked path with a `NoAdapterNotice`, once per family per process; other models
    (``HookedTransformer``, your own ``HookedRootModule``) take it silently.
    """
    if not fast:
        return HookedEngine(model, data, layers, groups)
    adapter = adapter_for(model)
    if adapter is None:
        if hf_model(model) is not None:
            _notice_no_adapter(model)
        return HookedEngine(model, data, layers, groups)
    try:
        packed = PackedEngine(model, data, layers, groups, adapter=adapter)
    except NotImplementedError:
        return HookedEngine(model, data, layers, groups)
    # One group is enough to catch an adapter that does not reproduce the model; the one with
    # the longest sequence also meets every sliding window the data reaches.
    lengths = [len(d.prompt_tokens) + max(len(c.tokens) for c in d.completions) for d in data]
    longest = max(range(len(data)), key=lengths.__getitem__)
    group = (list(groups) if groups is not None else [0] * len(data))[longest]
    built: list[HookedEngine] = []

    def check() -> bool:
        built.append(HookedEngine(model, data, layers, groups))
        return fast_path_agrees(model, packed, built[0], group)

    if checked(model, (tuple(packed.layers), packed.layout_kind(group)), check):
        return packed
    warnings.warn(
        "steerlens: the packed fast path does not reproduce this model's forward pass; "
        "using the slower hooked path.",
        stacklevel=3,
    )
    return built[0] if built else HookedEngine(model, data, layers, groups)


def fast_path_agrees(model: Any, packed: PackedEngine, hooked: HookedEngine, group: int) -> bool:
    """Whether the two engines give the same unsteered logits for ``group`` (to 1e-4 of the
    largest logit in float32, 5e-2 in lower precision)."""
    check = {group: unsteered}
    with torch.no_grad():
        a, b = packed.logits(check).float(), hooked.logits(check).float()
    tol = 1e-4 if runtime.dtype(model) == torch.float32 else 5e-2
    return a.shape == b.shape and torch.allclose(a, b, atol=tol * max(1.0, float(b.abs().max())))
