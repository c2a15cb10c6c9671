"""Fixtures for the evaluation tests: the tiny model seen without its Bridge (no KV cache)."""

from __future__ import annotations

import pytest
import torch


class PlainModel(torch.nn.Module):
    """The tiny Bridge behind a TL-3-style interface (``cfg``, ``tokenizer``, ``hooks()``,
    ``forward(tokens, attention_mask=)``) and nothing else, so evaluation code takes its
    generic, cache-free path while the numbers stay comparable with the Bridge's."""

    def __init__(self, bridge) -> None:
        super().__init__()
        self.inner = bridge
        self.cfg = bridge.cfg
        self.tokenizer = bridge.tokenizer

    def hooks(self, *args, **kwargs):
        return self.inner.hooks(*args, **kwargs)

    def forward(self, tokens, attention_mask=None):
        return self.inner(tokens, attention_mask=attention_mask)


@pytest.fixture(scope="session")
def plain(tiny):
    return PlainModel(tiny)
