"""Helpers shared by the evaluation modules: checks, answer tokens, steering descriptions, and
the short text tables results print."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from steerlens import runtime
from steerlens.errors import AnswerTokenError, SpecError


def check_coldness(coldness: float) -> float:
    if not coldness > 0:
        raise SpecError(
            f"coldness must be > 0 (1 = the model's own probabilities), got {coldness}."
        )
    return float(coldness)


def answer_token_ids(model: Any, answers: Sequence[str], *, what: str = "answer") -> list[int]:
    """The single token of each answer string, or an error that shows how it tokenises."""
    if isinstance(answers, str) or len(answers) < 2:
        raise SpecError(f"give at least two {what} strings, e.g. ('A', 'B'); got {answers!r}.")
    ids = []
    for answer in answers:
        if not isinstance(answer, str) or answer == "":
            raise AnswerTokenError(f"{what} {answer!r} is not a non-empty string.")
        tokens = runtime.encode(model, answer)
        if len(tokens) != 1:
            pieces = [runtime.decode(model, [t], skip_special_tokens=False) for t in tokens]
            raise AnswerTokenError(
                f"{what} {answer!r} is not a single token: it tokenises to {len(tokens)} tokens "
                f"{pieces} (ids {tokens}); use {what}s that are one token each (check with "
                "model.tokenizer.tokenize(...), e.g. with or without a leading space)."
            )
        ids.append(tokens[0])
    if len(set(ids)) != len(ids):
        raise AnswerTokenError(f"the {what}s {list(answers)!r} share a token; give distinct ones.")
    return ids


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
