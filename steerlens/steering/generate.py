"""Steered, batched generation with a KV cache: ``steerlens.generate``."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

import torch

from steerlens import runtime
from steerlens.errors import SpecError
from steerlens.steering.steer import (
    RowSteering,
    SteeringLike,
    check_row_steerings,
    resolve_steering,
    steer,
    steer_rows,
    warn_unusual_use,
)

# The keywords that shape a generation, for functions that generate on a caller's behalf.
GENERATE_OPTIONS = (
    "max_new_tokens",
    "chat",
    "system",
    "temperature",
    "seed",
    "batch_size",
    "bos",
    "progress",
)


@torch.no_grad()
def generate(
    model: Any,
    prompts: str | Sequence[str],
    steering: SteeringLike | Sequence[SteeringLike] | None = None,
    *,
    max_new_tokens: int = 64,
    chat: bool | None = None,
    system: str | None = None,
    temperature: float = 0.0,
    seed: int | None = None,
    batch_size: int = 16,
    bos: bool = False,
    progress: bool | None = None,
) -> str | list[str]:
    """Generate from one or many prompts, optionally steered; returns only the new text.

    Args:
        model: a TransformerLens model.
        prompts: a prompt or a list; with ``chat=True`` each is a user message formatted with
            the model's chat template.
        steering: a `steerlens.Steering` plan, a ``SteeringVector`` or a list of these
            (``None``: unsteered). A plan's ``"prompt"`` positions cover the prompt only;
            generated tokens are ``"generated"``.
        max_new_tokens: the most tokens to add (stops early at the end-of-turn token).
        temperature: 0 for greedy decoding; otherwise sampling from ``softmax(logits / T)``.
        seed: seed for sampling: prompt ``i`` of the list with the same seed gives the same
            text, whatever the batch size and the other prompts.
        batch_size: prompts per forward pass.
        progress: a progress bar over the prompts when there is more than one batch (default:
            in a terminal or a notebook).
        bos: put the model's BOS token in front of each prompt (see
            `steerlens.runtime.encode`; chat-formatted prompts never get a second one).

    Warns:
        SteeringWarning: a vector applied at a layer it was not made at, or at a strength
            far beyond the one it was made for (`steerlens.steering.steer.unusual_use`).

    Example:
        >>> from steerlens.testing import tiny_model
        >>> out = generate(tiny_model(), ["Hi", "Hello"], max_new_tokens=3)
        >>> len(out)
        2
    """
    items = runtime.check_prompts(prompts)  # max_new_tokens and temperature: decode_tokens
    texts = runtime.format_prompts(model, items, chat=chat, system=system)
    warn_unusual_use(steering)
    eos = runtime.eos_token_ids(model)
    base = _base_seed(seed)
    dev = runtime.device(model)
    outputs: list[str] = []
    several = len(texts) > runtime.check_batch_size(batch_size)
    bar = runtime.progress(len(texts), "generate", progress if several else False)
    with steer(model, steering):
        for rows in runtime.chunks(len(texts), batch_size):
            new = runtime.decode_tokens(
                model,
                [runtime.encode(model, texts[i], bos=bos) for i in rows],
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                generators=[_prompt_generator(base, i, dev) for i in rows],
            )
            outputs.extend(_reply(model, ids, eos) for ids in new)
            bar.update(len(rows))
        bar.close()
    return outputs[0] if isinstance(prompts, str) else outputs


@torch.no_grad()
def generate_each(
    model: Any,
    prompts: str | Sequence[str],
    steerings: Sequence[RowSteering],
    *,
    max_new_tokens: int = 64,
    chat: bool | None = None,
    system: str | None = None,
    temperature: float = 0.0,
    seed: int | None = None,
    batch_size: int = 16,
    bos: bool = False,
    progress: bool | None = None,
) -> list[list[str]]:
    """Generate from every prompt under every steering, many steerings per batch.

    ``replies[s][p]`` is what ``generate(model, prompts, steerings[s], ...)[p]`` returns (the
    same text for greedy decoding, and for sampling with the same ``seed``), but the
    ``steerings x prompts`` rows are decoded together, each row under its own steering
    (`steerlens.steering.steer.steer_rows`), ``batch_size`` rows per forward pass.

    Args:
        model: a TransformerLens model.
        prompts: a prompt or a list (user messages with ``chat=True``).
        steerings: a list; each entry is a `steerlens.Steering` plan, a ``SteeringVector``,
            a list of these (applied together), or ``None`` (unsteered).
        max_new_tokens: the most tokens to add (stops early at the end-of-turn token).
        chat: format each prompt as a user message with the model's chat template (default:
            when the model has one; ``False``: as written).
        system: a system message for ``chat=True``.
        temperature: 0 for greedy decoding; otherwise sampling from ``softmax(logits / T)``.
        seed: seed for sampling; row ``(s, p)`` samples as prompt ``p`` does in `generate`.
        batch_size: ``(steering, prompt)`` rows per forward pass.
        bos: put the model's BOS token in front of each prompt.
        progress: a progress bar over the rows when there is more than one batch.

    Returns:
        ``replies[s][p]``: the new text of prompt ``p`` under ``steerings[s]``.

    Example:
        >>> import torch
        >>> from steerlens import Steering
        >>> from steerlens.testing import tiny_model
        >>> model = tiny_model()
        >>> plan = Steering(torch.ones(64), layer=1, strength=4.0)
        >>> replies = generate_each(model, ["Hi", "Hello"], [None, plan], max_new_tokens=3)
        >>> replies[1] == generate(model, ["Hi", "Hello"], plan, max_new_tokens=3)
        True
    """
    items = runtime.check_prompts(prompts)
    plans = check_row_steerings(steerings)
    for plan in plans:  # refuse a bad steering before any decoding
        resolve_steering(model, plan)
    texts = runtime.format_prompts(model, items, chat=chat, system=system)
    base = _base_seed(seed)
    eos = runtime.eos_token_ids(model)
    dev = runtime.device(model)
    encoded = [runtime.encode(model, t, bos=bos) for t in texts]
    # Rows of similar length share a batch (less padding); row r is (steering, prompt).
    cells = [(s, p) for s in range(len(plans)) for p in range(len(items))]
    cells.sort(key=lambda sp: len(encoded[sp[1]]))
    replies = [[""] * len(items) for _ in plans]
    several = len(cells) > runtime.check_batch_size(batch_size)
    bar = runtime.progress(len(cells), "generate", progress if several else False)
    for rows in runtime.chunks(len(cells), batch_size):
        batch = [cells[r] for r in rows]
        with steer_rows(model, [plans[s] for s, _ in batch]):
            new = runtime.decode_tokens(
                model,
                [encoded[p] for _, p in batch],
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                generators=[_prompt_generator(base, p, dev) for _, p in batch],
            )
        for (s, p), ids in zip(batch, new, strict=True):
            replies[s][p] = _reply(model, ids, eos)
        bar.update(len(rows))
    bar.close()
    return replies


def _reply(model: Any, ids: Sequence[int], eos: set[int]) -> str:
    """A row's new tokens as text: the reply ends before its end-of-turn token (decoding stops
    at one and keeps it)."""
    return runtime.decode(model, [t for t in ids if t not in eos])


def _base_seed(seed: Any) -> int:
    """The seed every prompt's generator mixes from (`_prompt_generator`): ``seed`` checked,
    or, without one, drawn from the OS (torch.seed() would re-seed the user's global RNG)."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise SpecError(f"seed must be an int or None, got {seed!r}.")
    return seed if seed is not None else secrets.randbits(63)


def _prompt_generator(seed: int, index: int, device: torch.device) -> torch.Generator:
    """Prompt ``index``'s own generator: its sample depends on the seed and its place in the
    list, not on the batch size or the other prompts."""
    # A multiplicative mix keeps neighbouring prompts' streams unrelated.
    mixed = (seed * 0x9E3779B97F4A7C15 + index * 0xBF58476D1CE4E5B9) % (2**63)
    return torch.Generator(device=device).manual_seed(mixed)
