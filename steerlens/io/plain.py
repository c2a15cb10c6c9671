"""Results as plain data and short text: one encoder for every result's ``to_dict()`` and the
tables results print."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from torch import Tensor


def to_plain(value: Any, *, include: Sequence[str] = ()) -> Any:
    """Plain Python data (dicts, lists, numbers, strings, ``None``) ready for ``json.dumps``.

    Tensors and arrays become nested lists; dataclasses become dicts of their fields (plus the
    attributes named in ``include``, e.g. properties); a steering vector becomes its metadata
    and its norm; mapping keys become strings.

    Example:
        >>> import torch
        >>> from dataclasses import dataclass
        >>> @dataclass
        ... class R:
        ...     x: torch.Tensor
        ...     @property
        ...     def total(self): return float(self.x.sum())
        >>> to_plain(R(torch.tensor([1.0, 2.0])), include=["total"])
        {'x': [1.0, 2.0], 'total': 3.0}
    """
    if isinstance(value, Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    metadata = getattr(value, "metadata", None)
    if callable(metadata) and hasattr(value, "norm"):  # a SteeringVector
        return to_plain(metadata()) | {"norm": float(value.norm())}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return out | {name: to_plain(getattr(value, name)) for name in include}
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value


def short(text: str, width: int = 32) -> str:
    """``repr(text)``, cut to about ``width`` characters.

    Example:
        >>> short("a fairly long piece of text to show", 16)
        "'a fairly l...'"
    """
    r = repr(text)
    return r if len(r) <= width else r[: width - 4] + "..." + r[-1]


def table(header: Sequence[str], rows: Sequence[Sequence[str]], *, max_rows: int = 12) -> str:
    """Left-aligned columns; rows past ``max_rows`` are counted, not shown.

    Example:
        >>> print(table(["a", "bb"], [["1", "2"], ["33", "4"]]))
        a   bb
        1   2
        33  4
    """
    shown = [list(r) for r in rows[:max_rows]]
    widths = [max(len(h), *(len(r[i]) for r in shown)) for i, h in enumerate(header)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [list(header), *shown]
    ]
    if len(rows) > max_rows:
        lines.append(f"... ({len(rows) - max_rows} more rows)")
    return "\n".join(lines)


# The last user turn of the common chat templates: ChatML (SmolLM2, Qwen), Llama 3, Gemma.
_USER_TURN = re.compile(
    r"(?:<\|im_start\|>user\n|<\|start_header_id\|>user<\|end_header_id\|>\n\n"
    r"|<start_of_turn>user\n)(.*?)(?:<\|im_end\|>|<\|eot_id\|>|<end_of_turn>)",
    re.S,
)


def prompt_label(text: str) -> str:
    r"""What to show for a prompt in tables and plots: the last user message of a
    chat-formatted prompt (a prompt shown by its start would be all system message), else the
    text itself.

    Example:
        >>> prompt_label("<|im_start|>system\nBe brief<|im_end|>\n<|im_start|>user\nHi!<|im_end|>")
        'Hi!'
        >>> prompt_label("The cat sat")
        'The cat sat'
    """
    turns = _USER_TURN.findall(text)
    return turns[-1].strip() if turns else text
