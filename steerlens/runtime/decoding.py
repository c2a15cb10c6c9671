"""Greedy and sampled decoding with a KV cache: the one decoder under ``generate`` and
reentrant steering."""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from steerlens.errors import ContextWindowError, ContextWindowWarning, SpecError
from steerlens.runtime.batch import left_pad
from steerlens.runtime.context import TokenContext, token_context
from steerlens.runtime.forward import next_logits
from steerlens.runtime.model import eos_token_ids, n_ctx, pad_token_id
from steerlens.runtime.plain import plain_decoder


def decode_tokens(
    model: Any,
    token_lists: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    generators: Sequence[torch.Generator] | None = None,
) -> list[list[int]]:
    """New token ids after each prompt, decoded together (left-padded, KV-cached).

    A row stops after its first end-of-turn token, which is kept; all rows stop at
    ``max_new_tokens`` or, with a `ContextWindowWarning`, at the model's context window.
    ``temperature`` 0 is greedy; otherwise row ``i``'s tokens are sampled from
    ``softmax(logits / temperature)`` with ``generators[i]`` (one per row, so a row's sample
    does not depend on its batch). Steering hooks installed around the call see the prompt as
    "prompt" and each new token as "generated". When every hook installed is on the residual
    stream between blocks, a Bridge's steps run its Hugging Face model's own modules
    (`steerlens.runtime.plain.PlainDecoder`), calling those hooks where the Bridge does.

    Example:
        >>> from steerlens.testing import tiny_model
        >>> [len(ids) for ids in decode_tokens(tiny_model(), [[5, 6], [7]], max_new_tokens=3)]
        [3, 3]
    """
    if (
        isinstance(max_new_tokens, bool)
        or not isinstance(max_new_tokens, numbers.Integral)
        or max_new_tokens < 1
    ):
        raise SpecError(
            f"max_new_tokens must be an int >= 1, got {max_new_tokens!r} "
            f"({type(max_new_tokens).__name__})."
        )
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, numbers.Real)
        or not 0 <= temperature < float("inf")
    ):
        raise SpecError(
            f"temperature must be >= 0 and finite (0 = greedy), got {temperature!r} "
            f"({type(temperature).__name__})."
        )
    if temperature > 0 and (generators is None or len(generators) != len(token_lists)):
        raise SpecError("sampling (temperature > 0) needs one generator per prompt row.")
    window = n_ctx(model)
    longest = max(len(t) for t in token_lists)
    if window is not None and longest >= window:
        raise ContextWindowError(
            f"a prompt of {longest} tokens leaves no room to generate in the model's context "
            f"window (cfg.n_ctx = {window}); use a shorter prompt."
        )
    tokens, mask, n_pad = left_pad(model, token_lists)
    prompt_end = torch.full_like(n_pad, tokens.shape[1])
    eos = torch.tensor(sorted(eos_token_ids(model)), dtype=torch.long, device=tokens.device)
    pad = pad_token_id(model)
    done = torch.zeros(len(token_lists), dtype=torch.bool, device=tokens.device)
    new_tokens: list[Tensor] = []
    cache, n_cached = None, 0
    plain = plain_decoder(model)
    for step in range(max_new_tokens):
        if window is not None and tokens.shape[1] >= window:
            warnings.warn(
                f"steerlens: generation stopped after {step} of max_new_tokens="
                f"{max_new_tokens} tokens: the context window (cfg.n_ctx = {window}) is full "
                f"(the longest prompt of the batch has {longest} tokens; shorter prompts are "
                "padded to it); use shorter prompts or fewer new tokens.",
                ContextWindowWarning,
                stacklevel=2,
            )
            break
        ctx = TokenContext(n_pad, prompt_end, offset=n_cached)
        if plain is not None:
            with token_context(ctx):
                logits, cache = plain.step(tokens, mask, cache, n_cached)
        else:
            logits, cache = next_logits(model, tokens, mask, cache, n_cached, ctx)
        n_cached = tokens.shape[1] if cache is not None else 0
        if temperature > 0 and generators is not None:
            probs = torch.softmax(logits.float() / temperature, dim=-1)
            nxt = torch.cat(
                [
                    torch.multinomial(p, 1, generator=g)
                    for p, g in zip(probs, generators, strict=True)
                ]
            )
        else:
            nxt = logits.argmax(dim=-1)
        nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
        new_tokens.append(nxt)
        is_eos = torch.isin(nxt, eos)
        # A row's end-of-turn token is attended to; the padding after it is not.
        mask = torch.cat([mask, (~done).long()[:, None]], dim=1)
        done |= is_eos
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        if bool(done.all()):
            break
    if not new_tokens:
        return [[] for _ in token_lists]
    eos_set = set(eos.tolist())
    out = []
    for row in torch.stack(new_tokens, dim=1).tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in eos_set), len(row))
        out.append(row[:cut])
    return out
