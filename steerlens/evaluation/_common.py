"""Helpers shared by the evaluation modules: batching, answer tokens, forward passes that keep
only the logits they need, steering descriptions, and the short text tables results print."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from steerlens import _tl
from steerlens.errors import SpecError
from steerlens.evaluation.errors import AnswerTokenError, ContextWindowError
from steerlens.generate import _supports_hf_cache, left_pad
from steerlens.positions import TokenContext
from steerlens.steer import Steering, SteeringHandle


def check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise SpecError(f"batch_size must be an int >= 1, got {batch_size!r}.")
    return batch_size


def check_coldness(coldness: float) -> float:
    if not coldness > 0:
        raise SpecError(
            f"coldness must be > 0 (1 = the model's own probabilities), got {coldness}."
        )
    return float(coldness)


def chunks(n: int, size: int) -> Iterator[range]:
    """``range(0, size)``, ``range(size, 2 * size)``, ... covering ``n`` items."""
    for start in range(0, n, size):
        yield range(start, min(start + size, n))


def n_ctx(model: Any) -> int | None:
    """The model's context window, or ``None`` when its config does not say."""
    value = getattr(model.cfg, "n_ctx", None)
    return int(value) if value else None


def check_fits(model: Any, n_tokens: int, what: str, fix: str) -> None:
    """Refuse ``n_tokens`` tokens that do not fit the context window (never truncate silently)."""
    window = n_ctx(model)
    if window is not None and n_tokens > window:
        raise ContextWindowError(
            f"{what} is {n_tokens} tokens, more than the model's context window "
            f"(cfg.n_ctx = {window}); {fix}."
        )


def vocab_size(model: Any) -> int | None:
    value = getattr(model.cfg, "d_vocab", None)
    return int(value) if value else None


def answer_token_ids(model: Any, answers: Sequence[str], *, what: str = "answer") -> list[int]:
    """The single token of each answer string, or an error that shows how it tokenises."""
    if isinstance(answers, str) or len(answers) < 2:
        raise SpecError(f"give at least two {what} strings, e.g. ('A', 'B'); got {answers!r}.")
    ids = []
    for answer in answers:
        if not isinstance(answer, str) or answer == "":
            raise AnswerTokenError(f"{what} {answer!r} is not a non-empty string.")
        tokens = _tl.encode(model, answer)
        if len(tokens) != 1:
            pieces = [_tl.decode(model, [t], skip_special_tokens=False) for t in tokens]
            raise AnswerTokenError(
                f"{what} {answer!r} is not a single token: it tokenises to {len(tokens)} tokens "
                f"{pieces} (ids {tokens}); use {what}s that are one token each (check with "
                "model.tokenizer.tokenize(...), e.g. with or without a leading space)."
            )
        ids.append(tokens[0])
    if len(set(ids)) != len(ids):
        raise AnswerTokenError(f"the {what}s {list(answers)!r} share a token; give distinct ones.")
    return ids


def forward_kept(
    model: Any, tokens: Int[Tensor, "batch pos"], mask: Int[Tensor, "batch pos"], lo: int, hi: int
) -> tuple[Float[Tensor, "batch kept vocab"], int]:
    """Logits at positions ``lo..hi-1`` (at least), and the position of their first column.

    A ``TransformerBridge`` over a Hugging Face model unembeds only those positions
    (``logits_to_keep``); other models return every position and the offset is 0.
    """
    width = tokens.shape[1]
    if _supports_hf_cache(model) and (lo > 0 or hi < width):
        keep = torch.arange(lo, hi, device=tokens.device)
        try:
            logits = model(tokens, attention_mask=mask, logits_to_keep=keep)
        except TypeError:  # a model whose forward does not take logits_to_keep
            logits = None
        if logits is not None and logits.shape[1] == hi - lo:
            return logits, lo
        if logits is not None and logits.shape[1] == width:
            return logits, 0
    return model(tokens, attention_mask=mask), 0


def last_logits(
    model: Any,
    token_lists: Sequence[Sequence[int]],
    handle: SteeringHandle | None,
    batch_size: int,
) -> Float[Tensor, "n vocab"]:
    """The next-token logits after each prompt (left-padded batches), in float32.

    ``handle`` (from :func:`steerlens.steer`) learns where each prompt lies, so position rules
    such as ``"last:2"`` see the prompt and not the padding.
    """
    out = []
    for rows in chunks(len(token_lists), batch_size):
        tokens, mask, n_pad = left_pad(model, [token_lists[i] for i in rows])
        width = tokens.shape[1]
        if handle is not None:
            handle.context = TokenContext(n_pad, torch.full_like(n_pad, width), 0)
        try:
            logits, _ = forward_kept(model, tokens, mask, width - 1, width)
        finally:
            if handle is not None:
                handle.context = None
        out.append(logits[:, -1].float())
    return torch.cat(out)


def describe_steering(steerings: Sequence[Steering]) -> str:
    """A one-line description, e.g. ``"Add(strength=1) at layer 1 (all tokens)"``."""
    if not steerings:
        return "unsteered"
    parts = []
    for s in steerings:
        strength = getattr(s.intervention, "strength", None)
        what = type(s.intervention).__name__
        what += f"(strength={strength:g})" if isinstance(strength, (int, float)) else ""
        parts.append(f"{what} at layer {s.layer} ({s.positions.describe()})")
    return "; ".join(parts)


def short(text: str, width: int = 32) -> str:
    """``repr(text)``, cut to about ``width`` characters."""
    r = repr(text)
    return r if len(r) <= width else r[: width - 4] + "..." + r[-1]


def table(header: Sequence[str], rows: Sequence[Sequence[str]], *, max_rows: int = 12) -> str:
    """Left-aligned columns; rows past ``max_rows`` are counted, not shown."""
    shown = [list(r) for r in rows[:max_rows]]
    widths = [max(len(h), *(len(r[i]) for r in shown)) for i, h in enumerate(header)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [list(header), *shown]
    ]
    if len(rows) > max_rows:
        lines.append(f"... ({len(rows) - max_rows} more rows)")
    return "\n".join(lines)


def plain(value: Any) -> Any:
    """Plain Python data (dicts, lists, numbers, strings) for saving as JSON."""
    if isinstance(value, Tensor):
        return value.detach().cpu().tolist()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value
