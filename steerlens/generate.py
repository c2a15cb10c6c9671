"""Steered, batched generation with a KV cache: ``steerlens.generate``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from steerlens import _tl
from steerlens.errors import SteerlensError
from steerlens.positions import PositionsLike, TokenContext
from steerlens.steer import SteeringHandle, SteeringLike, steer


def check_prompts(prompts: str | Sequence[str]) -> list[str]:
    """A list of non-empty prompts, or a clear error."""
    items = [prompts] if isinstance(prompts, str) else list(prompts)
    if not items:
        raise SteerlensError("the prompt list is empty; pass at least one prompt.")
    for i, p in enumerate(items):
        if not isinstance(p, str):
            raise SteerlensError(f"prompt {i} is a {type(p).__name__}, not a str.")
        if not p.strip():
            raise SteerlensError(f"prompt {i} is empty; pass some text to generate from.")
    return items


def format_prompts(
    model: Any, prompts: Sequence[str], *, chat: bool, system: str | None = None
) -> list[str]:
    if not chat:
        return list(prompts)
    return [_tl.chat_prompt(model, p, system=system) for p in prompts]


def _pad(model: Any, token_lists: Sequence[Sequence[int]], *, left: bool) -> tuple[Tensor, Tensor]:
    width = max(len(t) for t in token_lists)
    dev = _tl.device(model)
    tokens = torch.full((len(token_lists), width), _tl.pad_token_id(model), dtype=torch.long)
    mask = torch.zeros((len(token_lists), width), dtype=torch.long)
    for i, t in enumerate(token_lists):
        if t:
            cols = slice(width - len(t), width) if left else slice(0, len(t))
            tokens[i, cols] = torch.tensor(list(t), dtype=torch.long)
            mask[i, cols] = 1
    return tokens.to(dev), mask.to(dev)


def left_pad(model: Any, token_lists: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor, Tensor]:
    """Left-padded tokens ``[batch, pos]``, their attention mask, and each row's pad count."""
    tokens, mask = _pad(model, token_lists, left=True)
    return tokens, mask, tokens.shape[1] - mask.sum(dim=1)


def right_pad(model: Any, token_lists: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
    """Right-padded tokens ``[batch, pos]`` and their attention mask: each real token keeps the
    position it has when run alone, so no position ids are needed."""
    return _pad(model, token_lists, left=False)


def _supports_hf_cache(model: Any) -> bool:
    # TransformerBridge takes HF's own cache object; a TL 3 HookedTransformer does not.
    return hasattr(model, "_driver")


def _next_logits(
    model: Any, tokens: Tensor, mask: Tensor, cache: Any, n_cached: int
) -> tuple[Tensor, Any]:
    if _supports_hf_cache(model):
        new = tokens[:, n_cached:]
        logits, cache = model(
            new,
            attention_mask=mask,
            past_key_values=cache,
            return_type="logits_and_cache",
        )
        return logits[:, -1, :], cache
    # Without a usable cache, recompute the whole (left-padded) sequence each step.
    logits = model(tokens, attention_mask=mask)
    return logits[:, -1, :], None


@torch.no_grad()
def generate(
    model: Any,
    prompts: str | Sequence[str],
    steering: SteeringLike | Sequence[SteeringLike] | None = None,
    *,
    layer: int | Sequence[int] | None = None,
    strength: float = 1.0,
    mode: str = "add",
    positions: PositionsLike = None,
    max_new_tokens: int = 64,
    chat: bool = True,
    system: str | None = None,
    temperature: float = 0.0,
    seed: int | None = None,
    batch_size: int = 16,
    allow_model_mismatch: bool = False,
) -> str | list[str]:
    """Generate from one or many prompts, optionally steered; returns only the new text.

    Args:
        model: a TransformerLens model.
        prompts: a prompt or a list; with ``chat=True`` each is a user message formatted with
            the model's chat template.
        steering: what to steer with, as in :func:`steerlens.steer` (``None``: unsteered).
        layer: layer(s) for a bare tensor or intervention.
        strength: the ``a`` in ``x + a v`` (negative subtracts) or the clamp value.
        mode: ``"add"``, ``"clamp"`` or ``"ablate"``.
        positions: as in :func:`steerlens.steer`; ``"prompt"`` covers the prompt only, and
            generated tokens are never "prompt".
        allow_model_mismatch: apply a vector made on a model with another id.
        max_new_tokens: the most tokens to add (stops early at the end-of-turn token).
        temperature: 0 for greedy decoding; otherwise sampling from ``softmax(logits / T)``.
        seed: seed for sampling; the same seed gives the same text.
        batch_size: prompts per forward pass.

    Example:
        >>> from steerlens.testing import tiny_model
        >>> out = generate(tiny_model(), ["Hi", "Hello"], max_new_tokens=3)
        >>> len(out)
        2
    """
    items = check_prompts(prompts)
    if max_new_tokens < 1:
        raise SteerlensError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
    if temperature < 0:
        raise SteerlensError(f"temperature must be >= 0 (0 = greedy), got {temperature}.")
    texts = format_prompts(model, items, chat=chat, system=system)
    generator = None
    if temperature > 0:
        generator = torch.Generator(device=_tl.device(model))
        generator.manual_seed(seed if seed is not None else torch.seed())
    outputs: list[str] = []
    with steer(
        model,
        steering,
        layer=layer,
        strength=strength,
        mode=mode,
        positions=positions,
        allow_model_mismatch=allow_model_mismatch,
    ) as handle:
        for start in range(0, len(texts), batch_size):
            batch = [_tl.encode(model, t) for t in texts[start : start + batch_size]]
            outputs.extend(
                _generate_batch(model, batch, handle, max_new_tokens, temperature, generator)
            )
    return outputs[0] if isinstance(prompts, str) else outputs


def _generate_batch(
    model: Any,
    token_lists: list[list[int]],
    handle: SteeringHandle,
    max_new_tokens: int,
    temperature: float,
    generator: torch.Generator | None,
) -> list[str]:
    tokens, mask, n_pad = left_pad(model, token_lists)
    prompt_end = torch.full_like(n_pad, tokens.shape[1])
    eos = torch.tensor(sorted(_tl.eos_token_ids(model)), device=tokens.device)
    pad = _tl.pad_token_id(model)
    done = torch.zeros(len(token_lists), dtype=torch.bool, device=tokens.device)
    new_tokens: list[Tensor] = []
    cache, n_cached = None, 0
    n_ctx = getattr(model.cfg, "n_ctx", None)
    for _ in range(max_new_tokens):
        if n_ctx is not None and tokens.shape[1] >= n_ctx:
            break
        handle.context = TokenContext(n_pad, prompt_end, offset=n_cached)
        logits, cache = _next_logits(model, tokens, mask, cache, n_cached)
        n_cached = tokens.shape[1] if cache is not None else 0
        if temperature > 0:
            probs = torch.softmax(logits.float() / temperature, dim=-1)
            nxt = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        else:
            nxt = logits.argmax(dim=-1)
        nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
        new_tokens.append(nxt)
        done |= torch.isin(nxt, eos)
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        mask = torch.cat([mask, (~done | torch.isin(nxt, eos)).long()[:, None]], dim=1)
        if bool(done.all()):
            break
    handle.context = None
    if not new_tokens:
        return [""] * len(token_lists)
    generated = torch.stack(new_tokens, dim=1).tolist()
    eos_set = set(eos.tolist())
    texts = []
    for row in generated:
        cut = next((i for i, t in enumerate(row) if t in eos_set), len(row))
        texts.append(_tl.decode(model, row[:cut]))
    return texts
