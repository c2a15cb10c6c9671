"""Where the prompt lies in the forward call that is running now.

Position rules (``"prompt"``, ``"generated"``, ``"last:N"``...) need to know, for each row of a
forward call, where its prompt starts and ends and how many tokens a KV cache already holds.
The runtime's forward and decoding functions publish that as the *current* `TokenContext`
for the duration of each model call; every steering hook (an outer ``steer()`` block's as well
as a function's own) reads it from here. Nothing else assigns it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor

from steerlens.errors import SteerlensError


@dataclass(frozen=True)
class TokenContext:
    """Where the prompt lies in a forward call.

    ``prompt_start``/``prompt_end`` are absolute indices (into the padded sequence including
    cached tokens) per row; ``offset`` is the number of tokens already in the KV cache.
    Tokens at or past ``prompt_end`` are "generated".
    """

    prompt_start: Int[Tensor, " batch"]
    prompt_end: Int[Tensor, " batch"]
    offset: int = 0

    @staticmethod
    def whole_input(batch: int, seq_len: int, device: torch.device) -> TokenContext:
        """The default: every token of a plain (uncached) forward belongs to the prompt."""
        zeros = torch.zeros(batch, dtype=torch.long, device=device)
        return TokenContext(zeros, zeros + seq_len, 0)

    @staticmethod
    def prompts(
        prompt_end: Int[Tensor, " batch"], prompt_start: Int[Tensor, " batch"] | None = None
    ) -> TokenContext:
        """Right-padded rows whose prompts end at ``prompt_end`` (and start at 0 unless given)."""
        start = torch.zeros_like(prompt_end) if prompt_start is None else prompt_start
        return TokenContext(start, prompt_end, 0)


_CURRENT: ContextVar[TokenContext | None] = ContextVar("steerlens_token_context", default=None)


@contextlib.contextmanager
def token_context(ctx: TokenContext) -> Iterator[TokenContext]:
    """Publish ``ctx`` as the current context while the block runs (always restored)."""
    token = _CURRENT.set(ctx)
    try:
        yield ctx
    finally:
        _CURRENT.reset(token)


def current_context(batch: int, seq_len: int, device: torch.device) -> TokenContext:
    """The context of the forward call now running; with none published, the whole input is
    prompt (a user's own ``model(tokens)`` inside ``steer()``)."""
    ctx = _CURRENT.get()
    if ctx is None:
        return TokenContext.whole_input(batch, seq_len, device)
    if ctx.prompt_end.shape[0] != batch:
        raise SteerlensError(
            f"a steering hook saw a batch of {batch} rows but the published token context has "
            f"{ctx.prompt_end.shape[0]}; a forward call of another shape ran inside a steerlens "
            "forward (e.g. a model called from a hook). Run it outside that call."
        )
    return ctx
