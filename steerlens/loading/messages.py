"""Library error text made fit for steerlens's own error messages: on one line, and cut to
its first sentence. Used by every loading module that quotes an error from transformers, the
hub client or torch."""

from __future__ import annotations


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines included) as one space."""
    return " ".join(text.split())


def brief(text: str, limit: int = 200) -> str:
    """The first sentence of a library's error message, at most ``limit`` characters."""
    text = one_line(text)
    end = text.find(". ")
    first = text if end < 0 else text[: end + 1]
    return first if len(first) <= limit else first[: limit - 3].rstrip() + "..."
