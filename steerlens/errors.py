"""Errors raised by steerlens.

Every error subclasses `SteerlensError` (itself a ``ValueError``) and its message says
what failed, shows the value seen, and gives the fix.
"""

from __future__ import annotations

import operator
import sys
from collections.abc import Iterable, Mapping
from typing import Any


class SteerlensError(ValueError):
    """Base class of all steerlens errors."""


class LayerError(SteerlensError):
    """A layer index outside the model's range."""


class VectorShapeError(SteerlensError):
    """A vector whose size does not match the model's ``d_model``."""


class NonFiniteError(SteerlensError):
    """NaN or inf where a finite number is required (a vector, a loss)."""


class ModelMismatchError(SteerlensError):
    """A vector made on one model applied to another."""


class VectorFileError(SteerlensError):
    """A file that is not a (complete) steerlens vector file."""


class SpecError(SteerlensError):
    """An unknown mode, position specification, keyword or option, or a setting out of range."""


class InputError(SteerlensError):
    """Data that cannot be used: an empty prompt list, a prompt or completion with no tokens,
    a datapoint without completions."""


class ModelError(SteerlensError):
    """A model that lacks what steerlens needs (a tokenizer, a chat template)."""


class MissingModelError(SteerlensError):
    """The embedded model's package is not installed."""


class ContextWindowError(SteerlensError):
    """Tokens that do not fit in the model's context window (``cfg.n_ctx``)."""


class ContextWindowWarning(UserWarning):
    """Generation stopped early because the model's context window is full."""


class SteeringWarning(UserWarning):
    """A steering that runs but is unlikely to do what was meant: a vector applied at a layer
    it was not made at, or at a strength far beyond the one it was made for."""


class AnswerTokenError(SteerlensError):
    """An answer string (``"A"``, ``" Yes"``) that is not exactly one token."""


class TemplateError(SteerlensError):
    """A judge prompt template without its ``{text}`` placeholder."""


class CacheError(SteerlensError):
    """The model cache cannot be read, written or shared (permissions, a full disk)."""


class OutputPathError(SteerlensError):
    """An output path that cannot be written (a folder where a file is expected, no access)."""


class MissingPackageError(SteerlensError):
    """An optional package that a feature needs is not installed (e.g. ``ray``)."""


class StudyError(SteerlensError):
    """A study run that could not finish every unit (a unit failed, a judge raised); the
    finished units are kept in the study folder."""


class ClusterError(SteerlensError):
    """A Ray cluster that cannot be reached (nothing listening at the address, refused
    authentication, a blocked port)."""


class StudyFolderError(SteerlensError):
    """A study folder that cannot be used: written by another tool or a newer steerlens, or
    made for a different spec."""


def check_keywords(given: Mapping[str, Any], valid: Iterable[str], *, where: str) -> None:
    """Raise a `SpecError` naming the valid keywords when ``given`` has others."""
    names = list(valid)
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise SpecError(
            f"{where} got unknown keyword(s) {', '.join(map(repr, unknown))}; the valid ones "
            f"are: {', '.join(names)}."
        )


def check_int(value: object, what: str) -> int:
    """``value`` as an ``int``; a `SpecError` naming ``what`` for a bool or a non-integer.

    Example:
        >>> check_int(3, "layers")
        3
    """
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise SpecError(f"{what} must be integers, got {value!r} ({type(value).__name__}).")
    return operator.index(value)


def describe_error(exc: BaseException) -> str:
    """One line naming an exception's type and message.

    Example:
        >>> describe_error(ValueError("bad\\nvalue"))
        'ValueError: bad value'
    """
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def user_stacklevel() -> int:
    """The ``stacklevel`` for ``warnings.warn`` that points at the first caller outside
    steerlens, so a warning names the user's line, however deep in steerlens it is raised.

    Example:
        >>> user_stacklevel() >= 1
        True
    """
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").startswith("steerlens"):
        frame, level = frame.f_back, level + 1  # type: ignore[assignment]
    return level
