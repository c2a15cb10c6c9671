"""`make_engine`: the packed engine where it reproduces the hooked one, else the hooked one."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from steerlens import runtime
from steerlens.training.data import TokenizedDatapoint
from steerlens.training.engines.families import adapter_for, architecture
from steerlens.training.engines.families.base import hf_model
from steerlens.training.engines.hooked import HookedEngine
from steerlens.training.engines.packed import PackedEngine
from steerlens.training.engines.steering import unsteered

# Architectures already named in a "no adapter" notice in this process.
_NOTICED: set[str] = set()


class NoAdapterNotice(UserWarning):
    """A bridged Hugging Face family has no packed-engine adapter; the hooked path is used."""


def _user_stacklevel() -> int:
    """The stack level of the first caller outside steerlens (for warnings.warn)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").startswith("steerlens"):
        frame, level = frame.f_back, level + 1  # type: ignore[assignment]
    return level


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
        stacklevel=_user_stacklevel(),
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
    reproduces the hooked one here (checked once, unsteered, on the group with the longest
    datapoint), else the hooked engine.

    A bridged Hugging Face model whose family has no adapter takes the hooked path with a
    `NoAdapterNotice`, once per family per process; other models (``HookedTransformer``, your
    own ``HookedRootModule``) take it silently.
    """
    hooked = HookedEngine(model, data, layers, groups)
    if not fast:
        return hooked
    adapter = adapter_for(model)
    if adapter is None:
        if hf_model(model) is not None:
            _notice_no_adapter(model)
        return hooked
    try:
        packed = PackedEngine(model, data, layers, groups, adapter=adapter)
    except NotImplementedError:
        return hooked
    # One group is enough to catch an adapter that does not reproduce the model; the one with
    # the longest sequence also meets every sliding window the data reaches.
    lengths = [len(d.prompt_tokens) + max(len(c.tokens) for c in d.completions) for d in data]
    longest = max(range(len(data)), key=lengths.__getitem__)
    check = {(list(groups) if groups is not None else [0] * len(data))[longest]: unsteered}
    with torch.no_grad():
        a, b = packed.logits(check).float(), hooked.logits(check).float()
    tol = 1e-4 if runtime.dtype(model) == torch.float32 else 5e-2
    if a.shape != b.shape or not torch.allclose(a, b, atol=tol * max(1.0, float(b.abs().max()))):
        warnings.warn(
            "steerlens: the packed fast path does not reproduce this model's forward pass; "
            "using the slower hooked path.",
            stacklevel=3,
        )
        return hooked
    return packed
