"""The fast-path check's verdicts, kept per model, so that `make_engine` checks the packed
engine against the hooked one once per (model, layer set, kind of layout) rather than at every
engine it builds.

What the check guards is structure: the packed engine runs the model's own modules on the
model's own weights, and can disagree with the hooked forward only through how it puts them
together (masks, sliding windows, frozen prefixes, position ids) or through what the hooked
forward has and it has not (hooks attached to the model). So a verdict holds while the model
has the same modules with the same hooks attached, the same parameter and buffer tensors,
unmodified (their in-place version counters), in the same dtype and on the same device, and the
same Hugging Face config; any change to these forgets every verdict kept for the model. An edit
through ``tensor.data`` bypasses the version counters: call `forget_checks` after one.

Example:
    >>> from steerlens.testing import tiny_model
    >>> model, runs = tiny_model(), []
    >>> def check():
    ...     runs.append(1)
    ...     return True
    >>> checked(model, "key", check), checked(model, "key", check), len(runs)
    (True, True, 1)
    >>> with model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", lambda x, hook: x)]):
    ...     checked(model, "key", check), len(runs)
    (True, 2)
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Hashable
from typing import Any

import torch

from steerlens.training.engines.families.base import hf_model

# model -> (its fingerprint when the verdicts were reached, {key: verdict}).
_VERDICTS: weakref.WeakKeyDictionary[Any, tuple[tuple[Any, ...], dict[Hashable, bool]]] = (
    weakref.WeakKeyDictionary()
)


def _modules(model: Any) -> list[torch.nn.Module]:
    """The model's modules and, under a bridge, the Hugging Face model's, each once."""
    # A plain walk: `Module.modules()` builds every module's dotted name on the way.
    stack = [m for m in (model, hf_model(model)) if isinstance(m, torch.nn.Module)]
    seen: dict[int, torch.nn.Module] = {}
    while stack:
        m = stack.pop()
        if id(m) not in seen:
            seen[id(m)] = m
            stack.extend(c for c in m._modules.values() if c is not None)
    return list(seen.values())


def fingerprint(model: Any) -> tuple[Any, ...]:
    """What a verdict depends on: every module, the ids of the hooks attached to it, and each
    of its parameters and buffers (storage, version counter, dtype, device, shape); under a
    bridge, also the Hugging Face model's config.

    Example:
        >>> from steerlens.testing import tiny_model
        >>> model = tiny_model()
        >>> before = fingerprint(model)
        >>> with torch.no_grad():
        ...     _ = model.original_model.lm_head.weight.mul_(1.0)
        >>> fingerprint(model) == before
        False
    """
    parts: list[Any] = []
    for m in _modules(model):
        tensors = [*m._parameters.values(), *m._buffers.values()]
        parts.append(
            (
                id(m),
                tuple(m._forward_hooks),
                tuple(m._forward_pre_hooks),
                tuple(m._backward_hooks),
                tuple(m._backward_pre_hooks),
                tuple(
                    None
                    if t is None
                    else (t.data_ptr(), t._version, t.dtype, t.device, tuple(t.shape))
                    for t in tensors
                ),
            )
        )
    hf = hf_model(model)
    if hf is not None:
        parts.append(hf.config.to_json_string(use_diff=False))
    return tuple(parts)


def checked(model: Any, key: Hashable, check: Callable[[], bool]) -> bool:
    """The verdict of ``check`` for ``key`` on ``model``: run the first time, then remembered on
    the model until its fingerprint changes. A model that cannot be weakly referenced is
    checked every time."""
    try:
        kept = _VERDICTS.get(model)
    except TypeError:  # not weakly referenceable: keep nothing
        return check()
    if kept is not None and kept[0] == fingerprint(model) and key in kept[1]:
        return kept[1][key]
    verdict = bool(check())
    # Taken after the check: a bridge attaches some hooks of its own at its first forward.
    now = fingerprint(model)
    if kept is None or kept[0] != now:
        kept = (now, {})
        _VERDICTS[model] = kept
    kept[1][key] = verdict
    return verdict


def forget_checks(model: Any) -> None:
    """Forget every fast-path verdict kept for ``model`` (needed only after editing its weights
    through ``tensor.data``, which no version counter sees).

    Example:
        >>> from steerlens.testing import tiny_model
        >>> forget_checks(tiny_model())
    """
    with contextlib.suppress(TypeError):  # not weakly referenceable: nothing was kept
        _VERDICTS.pop(model, None)
