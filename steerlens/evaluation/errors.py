"""Errors raised by :mod:`steerlens.evaluation`; each is a :class:`steerlens.SteerlensError`."""

from __future__ import annotations

from steerlens.errors import SteerlensError


class AnswerTokenError(SteerlensError):
    """An answer string (``"A"``, ``" Yes"``) that is not exactly one token."""


class ContextWindowError(SteerlensError):
    """Tokens that do not fit in the model's context window (``cfg.n_ctx``)."""


class TemplateError(SteerlensError):
    """A judge prompt template without its ``{text}`` placeholder."""
