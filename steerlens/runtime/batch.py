"""Padding and batching of token rows."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from steerlens.errors import SpecError
from steerlens.runtime.model import device, pad_token_id


def _pad(model: Any, token_lists: Sequence[Sequence[int]], *, left: bool) -> tuple[Tensor, Tensor]:
    width = max(len(t) for t in token_lists)
    tokens = torch.full((len(token_lists), width), pad_token_id(model), dtype=torch.long)
    mask = torch.zeros((len(token_lists), width), dtype=torch.long)
    for i, t in enumerate(token_lists):
        if t:
            cols = slice(width - len(t), width) if left else slice(0, len(t))
            tokens[i, cols] = torch.tensor(list(t), dtype=torch.long)
            mask[i, cols] = 1
    dev = device(model)
    return tokens.to(dev), mask.to(dev)


def left_pad(
    model: Any, token_lists: Sequence[Sequence[int]]
) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"], Int[Tensor, " batch"]]:
    """Left-padded tokens ``[batch, pos]``, their attention mask, and each row's pad count.

    Example:
        >>> from steerlens.testing import tiny_model
        >>> tokens, mask, n_pad = left_pad(tiny_model(), [[5, 6], [7]])
        >>> mask.tolist(), n_pad.tolist()
        ([[1, 1], [0, 1]], [0, 1])
    """
    tokens, mask = _pad(model, token_lists, left=True)
    return tokens, mask, tokens.shape[1] - mask.sum(dim=1)


def right_pad(
    model: Any, token_lists: Sequence[Sequence[int]]
) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
    """Right-padded tokens ``[batch, pos]`` and their attention mask: each real token keeps the
    position it has when run alone, so no position ids are needed."""
    return _pad(model, token_lists, left=False)


def check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise SpecError(f"batch_size must be an int >= 1, got {batch_size!r}.")
    return batch_size


def chunks(n: int, size: int) -> Iterator[range]:
    """``range(0, size)``, ``range(size, 2 * size)``, ... covering ``n`` items; ``size`` is a
    batch size (an int >= 1, checked)."""
    check_batch_size(size)
    for start in range(0, n, size):
        yield range(start, min(start + size, n))
