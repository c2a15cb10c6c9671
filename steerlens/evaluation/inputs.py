"""Checked inputs of the evaluations that score prompts: prompts as token rows, and token ids
inside the vocabulary."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from steerlens import runtime
from steerlens.errors import InputError, SpecError

# Texts used as written, or token lists (lists of ids or 1-D tensors) used as given.
Prompts = str | Sequence[str] | Sequence[Sequence[int]] | Sequence[Tensor]


def prompt_rows(model: Any, prompts: Prompts, *, bos: bool = False) -> list[list[int]]:
    """Each prompt's token ids: texts encoded once, token lists checked and kept.

    Example:
        >>> from steerlens.testing import tiny_model
        >>> prompt_rows(tiny_model(), [[5, 6], [7]])
        [[5, 6], [7]]
    """
    if isinstance(prompts, Tensor):
        raise InputError(
            "prompts is a tensor; pass a list of token lists (or of 1-D tensors), one per prompt."
        )
    items: list[Any]
    if isinstance(prompts, (str, bytes, bytearray)) or not prompts:
        # One text; anything else here (None, bytes, an empty list) gets check_prompts's error.
        items = runtime.check_prompts(prompts)  # type: ignore[arg-type]
    else:
        items = list(prompts)
    if isinstance(items[0], str):
        texts = runtime.check_prompts(items)
        rows = [runtime.encode(model, t, bos=bos) for t in texts]
    else:
        if bos:
            raise SpecError(
                "bos=True applies to text prompts; token lists are used as given, so put the "
                "BOS id at their front yourself."
            )
        rows = [token_row(item, i) for i, item in enumerate(items)]
        vocab = runtime.vocab_size(model)
        if vocab is not None:
            for i, row in enumerate(rows):
                check_in_vocab(row, vocab, f"prompt {i}", InputError)
    longest = max(range(len(rows)), key=lambda p: len(rows[p]))
    runtime.check_fits(
        model, len(rows[longest]), f"prompt {longest}", "use a shorter prompt or leave it out"
    )
    return rows


def token_row(item: Any, i: int, what: str = "prompt") -> list[int]:
    """``what`` ``i`` given as tokens, checked: a list of int ids."""
    if isinstance(item, Tensor):
        if item.dim() != 1 or item.is_floating_point() or item.is_complex():
            raise InputError(
                f"{what} {i} is a {item.dim()}-D {item.dtype} tensor; a tokenised {what} is a "
                "1-D integer tensor or a list of ints."
            )
        item = item.tolist()
    if isinstance(item, numbers.Integral):
        raise InputError(
            f"{what}s is a list of ints; pass a list of token lists, e.g. [ids] for one "
            f"tokenised {what}."
        )
    if isinstance(item, (str, bytes)) or not isinstance(item, Sequence):
        raise InputError(
            f"{what} {i} is a {type(item).__name__}; pass all {what}s as text or all as token "
            "lists (lists of ints)."
        )
    row = list(item)
    if not row:
        raise InputError(f"{what} {i} has no tokens; a {what} needs at least one.")
    _check_ints(row, f"{what} {i}", InputError)
    return [int(t) for t in row]


def completion_rows(
    model: Any, prompts: Prompts, rows: Sequence[Sequence[int]], completions: Prompts
) -> list[list[int]]:
    """The tokens of ``completions[i]`` after prompt ``i`` (whose tokens are ``rows[i]``):
    after text prompts, text completions tokenised as they follow the prompt
    (`steerlens.runtime.completion_tokens`); after token-list prompts, token lists used as
    given.

    Example:
        >>> from steerlens.testing import tiny_model
        >>> model = tiny_model()
        >>> completion_rows(model, ["a"], prompt_rows(model, ["a"]), [" cat"]) == [
        ...     runtime.encode(model, " cat")]
        True
    """
    if isinstance(completions, Tensor):
        raise InputError(
            "completions is a tensor; pass a list with one completion (text or token list) per "
            "prompt."
        )
    items = [completions] if isinstance(completions, str) else list(completions)
    if len(items) != len(rows):
        raise InputError(
            f"got {len(rows)} prompts and {len(items)} completions; give one completion per "
            "prompt (repeat a prompt to score several completions after it)."
        )
    given: list[Any] = [prompts] if isinstance(prompts, str) else list(prompts)
    out: list[list[int]] = []
    if isinstance(given[0], str):
        for i, (text, row, item) in enumerate(zip(given, rows, items, strict=True)):
            if not isinstance(item, str) or not item:
                raise InputError(
                    f"completion {i} is {item!r:.60}; after text prompts every completion is a "
                    "non-empty string."
                )
            tokens, _ = runtime.completion_tokens(model, list(row), text, item, where=f"prompt {i}")
            out.append(tokens)
    else:
        first = next((i for i, item in enumerate(items) if isinstance(item, str)), None)
        if first is not None:
            raise InputError(
                f"completion {first} is text but the prompts are token lists; give the "
                "completions as token lists too (or the prompts as text)."
            )
        out = [token_row(item, i, "completion") for i, item in enumerate(items)]
        vocab = runtime.vocab_size(model)
        if vocab is not None:
            for i, tokens in enumerate(out):
                check_in_vocab(tokens, vocab, f"completion {i}", InputError)
    for i, (row, tokens) in enumerate(zip(rows, out, strict=True)):
        runtime.check_fits(
            model,
            len(row) + len(tokens),
            f"prompt {i} followed by its completion",
            "use a shorter prompt or completion",
        )
    return out


def check_token_ids(
    model: Any, ids: Sequence[int], *, what: str, count: int | None = None
) -> list[int]:
    """``ids`` as a list of ints inside the vocabulary (``count`` of them when given)."""
    if isinstance(ids, Tensor):
        ids = ids.tolist()
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
        raise SpecError(
            f"{what} must be a list of token ids, got {type(ids).__name__}; get ids with "
            "steerlens.runtime.answer_token_ids(model, ['A', 'B'])."
        )
    out = list(ids)
    if not out:
        raise SpecError(f"{what} is empty; give at least one token id.")
    if count is not None and len(out) != count:
        raise SpecError(
            f"{what} has {len(out)} token ids for {count} prompts; give one per prompt."
        )
    _check_ints(out, what, SpecError)
    vocab = runtime.vocab_size(model)
    if vocab is not None:
        check_in_vocab(out, vocab, what, SpecError)
    return [int(t) for t in out]


def _check_ints(ids: Sequence[Any], what: str, error: type[Exception]) -> None:
    """Raise ``error`` naming ``what`` at the first item that is not an int (a bool is not;
    nor is ``None``, which is reported like any other value)."""
    for at, t in enumerate(ids):
        if isinstance(t, bool) or not isinstance(t, numbers.Integral):
            raise error(
                f"{what} holds {t!r} at index {at}, not a token id (an int); give every token "
                "as an int id (steerlens.runtime.encode gives them for a text)."
            )


def check_in_vocab(ids: Sequence[int], vocab: int, what: str, error: type[Exception]) -> None:
    """Raise ``error`` naming ``what`` when an id is outside ``0 .. vocab - 1``."""
    bad = [int(t) for t in ids if not 0 <= t < vocab]
    if bad:
        raise error(
            f"{what} has token id(s) {bad[:8]} outside the model's vocabulary (0 to {vocab - 1})."
        )


def answer_pairs(
    model: Any, matching: Sequence[int], other: Sequence[int], count: int
) -> tuple[list[int], list[int], list[int]]:
    """Per prompt, the checked ids of the matching and the other answer (two different
    tokens each), and the sorted ids to read.

    Example:
        >>> from steerlens.testing import tiny_model
        >>> answer_pairs(tiny_model(), [5, 6], [6, 5], 2)
        ([5, 6], [6, 5], [5, 6])
    """
    yes = check_token_ids(model, matching, what="matching", count=count)
    no = check_token_ids(model, other, what="other", count=count)
    same = [p for p, (m, o) in enumerate(zip(yes, no, strict=True)) if m == o]
    if same:
        raise SpecError(
            f"matching and other give the same token for prompt(s) {same[:8]}; give each "
            "prompt two different answer tokens."
        )
    return yes, no, sorted(set(yes) | set(no))


def propensity_of(
    logp: Tensor, ids: Sequence[int], yes: Sequence[int], no: Sequence[int]
) -> Tensor:
    """``logp[..., p, matching] - logp[..., p, other]`` from ``[steerings, prompts, ids]``
    log-probabilities read at ``ids``."""
    column = {t: k for k, t in enumerate(ids)}
    picked = torch.tensor([[column[m], column[o]] for m, o in zip(yes, no, strict=True)])
    both = logp.gather(-1, picked.expand(logp.shape[0], -1, -1))
    return both[..., 0] - both[..., 1]


__all__ = [
    "Prompts",
    "answer_pairs",
    "check_in_vocab",
    "check_token_ids",
    "completion_rows",
    "prompt_rows",
    "propensity_of",
    "token_row",
]
