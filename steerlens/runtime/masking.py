"""Attention scores that stay finite when a float64 model's softmax runs in float32."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from steerlens.runtime.model import dtype, n_layers

_FLOAT32_MIN = torch.finfo(torch.float32).min


def _clamp_to_float32(scores: Tensor, hook: Any) -> Tensor:
    return scores.clamp(min=_FLOAT32_MIN)


@contextlib.contextmanager
def finite_scores(model: Any) -> Iterator[None]:
    """Inside the block, a float64 model's attention scores are clamped to float32's range.

    TransformerLens 4.3's bridge attention takes its softmax in float32 whatever the model's
    dtype. A float64 model masks with float64's most negative number, which is ``-inf`` in
    float32, so a query that sees no key (a pad of a left-padded row, or under a sliding window
    a pad more than a window past a right-padded row's end) softmaxes to NaN, and the next layer
    carries that NaN into the row's real tokens (a zero weight times a NaN value is NaN).
    Clamped, that query's pattern is uniform and finite, and a masked key still gets a weight of
    exactly 0 (the float32 exponential underflows), so nothing else changes. Other dtypes need
    nothing and get no hooks.

    Example:
        >>> import torch
        >>> from steerlens.testing import tiny_model
        >>> model = tiny_model(dtype=torch.float64)
        >>> tokens, mask = torch.tensor([[0, 0, 5, 6]]), torch.tensor([[0, 0, 1, 1]])
        >>> with finite_scores(model):
        ...     bool(model(tokens, attention_mask=mask).isfinite().all())
        True
    """
    if dtype(model) != torch.float64:
        yield
        return
    hooks = [
        (f"blocks.{i}.attn.hook_attn_scores", _clamp_to_float32) for i in range(n_layers(model))
    ]
    with model.hooks(fwd_hooks=hooks):
        yield
