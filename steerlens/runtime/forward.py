"""Forward passes: run the model on token rows and keep the logits that are asked for.

Every forward here publishes where each row's prompt lies (`steerlens.runtime.context`), so
steering hooks installed by any ``steer()`` block apply their position rules correctly. Steering
itself is installed by the caller (``with steer(model, plan): ...``); this layer does not know
about interventions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from steerlens.errors import ContextWindowError, InputError
from steerlens.runtime.batch import chunks, right_pad
from steerlens.runtime.context import TokenContext, token_context
from steerlens.runtime.logprobs import token_logprobs
from steerlens.runtime.masking import finite_scores
from steerlens.runtime.model import device, n_ctx, supports_kv_cache
from steerlens.runtime.progress import progress as progress_bar


def check_fits(model: Any, n_tokens: int, what: str, fix: str) -> None:
    """Refuse ``n_tokens`` tokens that do not fit the context window (never truncate silently)."""
    window = n_ctx(model)
    if window is not None and n_tokens > window:
        raise ContextWindowError(
            f"{what} is {n_tokens} tokens, more than the model's context window "
            f"(cfg.n_ctx = {window}); {fix}."
        )


def logits_at(
    model: Any,
    tokens: Int[Tensor, "batch pos"],
    attention_mask: Int[Tensor, "batch pos"],
    rows: Int[Tensor, " n"],
    cols: Int[Tensor, " n"],
    context: TokenContext,
) -> Float[Tensor, "n vocab"]:
    """The logits at positions ``(rows[i], cols[i])`` of one forward call.

    A ``TransformerBridge`` over a Hugging Face model unembeds only the columns between the
    first and last asked for (``logits_to_keep``); other models unembed every position.
    Gradients flow when grad mode is on. A pad of a right-padded row can see no key under a
    sliding window, so a float64 model runs under `finite_scores`.

    Example:
        >>> from steerlens.testing import tiny_model
        >>> model = tiny_model()
        >>> tokens = torch.tensor([[5, 6, 7]])
        >>> out = logits_at(model, tokens, torch.ones_like(tokens), torch.tensor([0]),
        ...                 torch.tensor([2]), TokenContext.whole_input(1, 3, tokens.device))
        >>> torch.allclose(out, model(tokens)[0, 2:3], atol=1e-5)
        True
    """
    lo, hi, width = int(cols.min()), int(cols.max()) + 1, tokens.shape[1]
    with token_context(context), finite_scores(model):
        logits, offset = None, 0
        if supports_kv_cache(model) and (lo > 0 or hi < width):
            try:
                kept = model(
                    tokens,
                    attention_mask=attention_mask,
                    logits_to_keep=torch.arange(lo, hi, device=tokens.device),
                )
            except TypeError:  # a model whose forward does not take logits_to_keep
                kept = None
            if kept is not None and kept.shape[1] in (hi - lo, width):
                logits, offset = kept, (lo if kept.shape[1] == hi - lo else 0)
        if logits is None:
            logits = model(tokens, attention_mask=attention_mask)
    return logits[rows, cols - offset]


def score_rows(
    model: Any,
    rows: Sequence[tuple[Sequence[int], int]],
    *,
    coldness: float = 1.0,
    batch_size: int = 32,
    progress: bool | None = False,
) -> list[Float[Tensor, " scored"]]:
    """Per-token log-probabilities (nats, float32, CPU) of each row's tokens after its prompt.

    Each row is ``(tokens, n_prompt)``: ``tokens[n_prompt:]`` are scored, token ``k`` at the
    position before it. The first ``n_prompt`` tokens of each row are its "prompt" for position
    rules, the rest are "generated". Rows are right-padded in batches of similar length;
    ``progress`` shows a bar over the rows when there is more than one batch.

    Example:
        >>> from steerlens.testing import tiny_model
        >>> lps = score_rows(tiny_model(), [([5, 6, 7], 1), ([5, 9], 1)])
        >>> [tuple(lp.shape) for lp in lps]
        [(2,), (1,)]
    """
    for i, (ids, n_prompt) in enumerate(rows):
        if not 1 <= n_prompt < len(ids):
            raise InputError(
                f"row {i} has {len(ids)} tokens and n_prompt={n_prompt}: a row needs at "
                "least one prompt token and one token to score."
            )
    dev = device(model)
    order = sorted(range(len(rows)), key=lambda r: len(rows[r][0]))  # less padding per batch
    out: list[Tensor] = [torch.zeros(0)] * len(rows)
    bar = progress_bar(len(rows), "score", progress if len(rows) > batch_size else False)
    for batch in chunks(len(order), batch_size):
        members = [rows[order[b]] for b in batch]
        padded, mask = right_pad(model, [list(t) for t, _ in members])
        row_idx, col_idx, targets = [], [], []
        for b, (seq, p) in enumerate(members):
            row_idx += [b] * (len(seq) - p)
            col_idx += list(range(p - 1, len(seq) - 1))
            targets += list(seq[p:])
        ends = torch.tensor([p for _, p in members], device=dev)
        picked = logits_at(
            model,
            padded,
            mask,
            torch.tensor(row_idx, device=dev),
            torch.tensor(col_idx, device=dev),
            TokenContext.prompts(ends),
        )
        lp = token_logprobs(picked, torch.tensor(targets, device=dev), coldness)
        sizes = [len(seq) - p for seq, p in members]
        for b, piece in zip(batch, lp.split(sizes), strict=True):
            out[order[b]] = piece.detach().float().cpu()
        bar.update(len(batch))
    bar.close()
    return out


def last_logits(
    model: Any,
    token_lists: Sequence[Sequence[int]],
    *,
    batch_size: int = 16,
    progress: bool | None = False,
) -> Float[Tensor, "n vocab"]:
    """The next-token logits after each prompt, in float32 (``progress``: a bar over the
    prompts when there is more than one batch).

    Rows are right-padded, so every token keeps the position it has when run alone (exact for
    learned position embeddings too); each row's tokens are its prompt for position rules.

    Example:
        >>> from steerlens.testing import tiny_model
        >>> last_logits(tiny_model(), [[5, 6], [7]]).shape[0]
        2
    """
    out = []
    several = len(token_lists) > batch_size
    bar = progress_bar(len(token_lists), "forward", progress if several else False)
    for rows in chunks(len(token_lists), batch_size):
        tokens, mask = right_pad(model, [token_lists[i] for i in rows])
        lengths = mask.sum(dim=1)
        logits = logits_at(
            model,
            tokens,
            mask,
            torch.arange(tokens.shape[0], device=tokens.device),
            lengths - 1,
            TokenContext.prompts(lengths),
        )
        out.append(logits.float())
        bar.update(len(rows))
    bar.close()
    return torch.cat(out)


def next_logits(
    model: Any,
    tokens: Int[Tensor, "batch pos"],
    attention_mask: Int[Tensor, "batch pos"],
    cache: Any,
    n_cached: int,
    context: TokenContext,
) -> tuple[Float[Tensor, "batch vocab"], Any]:
    """One decoding step: the logits after the last column, and the (extended) KV cache.

    Models that take Hugging Face cache objects (``TransformerBridge``) run only the tokens
    past ``n_cached``; others recompute the whole left-padded sequence (``cache`` stays None).
    A left pad sees no key, so a float64 model runs under `finite_scores`.
    """
    if supports_kv_cache(model):
        logits, cache = continue_from(model, tokens, attention_mask, cache, n_cached, context)
        return logits[:, -1, :], cache
    with token_context(context), finite_scores(model):
        logits = model(tokens, attention_mask=attention_mask)
    return logits[:, -1, :], None


def continue_from(
    model: Any,
    tokens: Int[Tensor, "batch pos"],
    attention_mask: Int[Tensor, "batch pos"],
    cache: Any,
    n_cached: int,
    context: TokenContext,
) -> tuple[Float[Tensor, "batch new vocab"], Any]:
    """The logits at every position of ``tokens`` past the first ``n_cached``, whose keys and
    values ``cache`` holds (e.g. from `prefix_cache`), and the extended cache. Needs a model
    that takes Hugging Face caches (`supports_kv_cache`). Rows may be left-padded (a float64
    model runs under `finite_scores`).

    Example:
        >>> import torch
        >>> from steerlens.runtime.prefixes import prefix_cache
        >>> from steerlens.testing import tiny_model
        >>> model = tiny_model()
        >>> ids = torch.tensor([[5, 6, 7, 8]])
        >>> cache = prefix_cache(model, [5, 6], 1, prompt_end=4)
        >>> ctx = TokenContext(torch.zeros(1, dtype=torch.long), torch.full((1,), 4), 2)
        >>> logits, _ = continue_from(model, ids, torch.ones_like(ids), cache, 2, ctx)
        >>> torch.allclose(logits[0], model(ids)[0, 2:], atol=1e-5)
        True
    """
    with token_context(context), finite_scores(model):
        return model(
            tokens[:, n_cached:],
            attention_mask=attention_mask,
            past_key_values=cache,
            return_type="logits_and_cache",
        )
