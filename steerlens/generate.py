"""Steered, batched generation with a KV cache: ``steerlens.generate``."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

import torch

from steerlens import runtime
from steerlens.errors import SpecError
from steerlens.steer import SteeringLike, steer

# The keywords that shape a generation, for functions that generate on a caller's behalf.
GENERATE_OPTIONS = ("max_new_tokens", "chat", "system", "temperature", "seed", "batch_size")


@torch.no_grad()
def generate(
    model: Any,
    prompts: str | Sequence[str],
    steering: SteeringLike | Sequence[SteeringLike] | None = None,
    *,
    max_new_tokens: int = 64,
    chat: bool = False,
    system: str | None = None,
    temperature: float = 0.0,
    seed: int | None = None,
    batch_size: int = 16,
) -> str | list[str]:
    """Generate from one or many prompts, optionally steered; returns only the new text.

    Args:
        model: a TransformerLens model.
        prompts: a prompt or a list; with ``chat=True`` each is a user message formatted with
            the model's chat template.
        steering: a :class:`steerlens.Steering` plan, a ``SteeringVector`` or a list of these
            (``None``: unsteered). A plan's ``"prompt"`` positions cover the prompt only;
            generated tokens are ``"generated"``.
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
    items = runtime.check_prompts(prompts)
    if max_new_tokens < 1:
        raise SpecError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
    if not temperature >= 0:
        raise SpecError(f"temperature must be >= 0 (0 = greedy), got {temperature}.")
    texts = runtime.format_prompts(model, items, chat=chat, system=system)
    eos = runtime.eos_token_ids(model)
    generator = None
    if temperature > 0:
        generator = torch.Generator(device=runtime.device(model))
        # Without a seed, draw one from the OS: torch.seed() would re-seed the user's global RNG.
        generator.manual_seed(seed if seed is not None else secrets.randbits(63))
    outputs: list[str] = []
    with steer(model, steering):
        for rows in runtime.chunks(len(texts), runtime.check_batch_size(batch_size)):
            new = runtime.decode_tokens(
                model,
                [runtime.encode(model, texts[i]) for i in rows],
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                generator=generator,
            )
            # The reply ends before its end-of-turn token.
            outputs.extend(runtime.decode(model, [t for t in ids if t not in eos]) for ids in new)
    return outputs[0] if isinstance(prompts, str) else outputs
