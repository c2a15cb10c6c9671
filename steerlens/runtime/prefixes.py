"""KV caches of prompt prefixes: run a prompt's unsteered first tokens once and let every
steered row of that prompt continue from them."""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch

from steerlens.runtime.context import TokenContext, token_context
from steerlens.runtime.model import device


def prefix_cache(model: Any, tokens: Sequence[int], n_rows: int, *, prompt_end: int) -> Any:
    """The KV cache of ``tokens`` (the first tokens of a prompt ``prompt_end`` tokens long),
    computed once and repeated for ``n_rows`` rows: pass it to `next_logits` with
    ``n_cached=len(tokens)`` to run the rest of the prompt in each row (each row may be steered
    differently there). Needs a model that takes Hugging Face caches (`supports_kv_cache`).

    Example:
        >>> import torch
        >>> from steerlens.runtime.context import TokenContext
        >>> from steerlens.runtime.forward import next_logits
        >>> from steerlens.testing import tiny_model
        >>> model = tiny_model()
        >>> ids = [5, 6, 7, 8]
        >>> cache = prefix_cache(model, ids[:3], 2, prompt_end=4)
        >>> ctx = TokenContext(torch.zeros(2, dtype=torch.long), torch.full((2,), 4), 3)
        >>> tokens = torch.tensor([ids, ids])
        >>> logits, _ = next_logits(model, tokens, torch.ones_like(tokens), cache, 3, ctx)
        >>> torch.allclose(logits[1], model(torch.tensor([ids]))[0, -1], atol=1e-5)
        True
    """
    ids = torch.tensor([list(tokens)], device=device(model))
    ctx = TokenContext.prompts(torch.tensor([prompt_end], device=ids.device))
    with torch.no_grad(), token_context(ctx):
        _, cache = model(
            ids,
            attention_mask=torch.ones_like(ids),
            past_key_values=None,
            return_type="logits_and_cache",
        )
    cache.batch_repeat_interleave(n_rows)
    return cache


def _nbytes(cache: Any) -> int:
    layers = getattr(cache, "layers", [])
    return sum(
        t.numel() * t.element_size()
        for layer in layers
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None))
        if isinstance(t, torch.Tensor)
    )


class PrefixStore:
    """Prefix KV caches kept for reuse across calls, least recently used dropped first once
    they hold more than ``max_bytes`` (the newest is always kept).

    A benchmark that scores the same prompts for many vectors, layers and multipliers passes
    one store to every call (e.g. `steerlens.evaluation.propensities`'s ``prefixes=``), so
    each prompt's unsteered prefix runs once. A store belongs to one model; entries are
    keyed by the prefix's tokens and the prompt's length.

    Example:
        >>> from steerlens.testing import tiny_model
        >>> model = tiny_model()
        >>> store = PrefixStore(model)
        >>> a = store.cache([5, 6, 7], 2, prompt_end=4)
        >>> b = store.cache([5, 6, 7], 3, prompt_end=4)
        >>> len(store), store.hits
        (1, 1)
    """

    def __init__(self, model: Any, max_bytes: int = 2**31) -> None:
        self.model = model
        self.max_bytes = max_bytes
        self.hits = 0
        self._entries: OrderedDict[tuple[tuple[int, ...], int], Any] = OrderedDict()
        self._bytes: dict[tuple[tuple[int, ...], int], int] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def cache(self, tokens: Sequence[int], n_rows: int, *, prompt_end: int) -> Any:
        """A fresh cache of ``tokens`` for ``n_rows`` rows (as `prefix_cache`), computed
        the first time and copied after."""
        key = (tuple(int(t) for t in tokens), int(prompt_end))
        if key in self._entries:
            self.hits += 1
            self._entries.move_to_end(key)
        else:
            one = prefix_cache(self.model, key[0], 1, prompt_end=prompt_end)
            self._entries[key], self._bytes[key] = one, _nbytes(one)
            while len(self._entries) > 1 and sum(self._bytes.values()) > self.max_bytes:
                old, _ = self._entries.popitem(last=False)
                del self._bytes[old]
        fresh = copy.deepcopy(self._entries[key])  # a forward extends the cache it is given
        fresh.batch_repeat_interleave(n_rows)
        return fresh


__all__ = ["PrefixStore", "prefix_cache"]
