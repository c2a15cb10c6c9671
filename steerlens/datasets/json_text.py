"""Decoding a dataset file's JSON text, with an error that says what the file must hold."""

from __future__ import annotations

import json
from typing import Any

from steerlens.errors import InputError


def decode_json(text: str, where: str, *, expected: str) -> Any:
    """``text`` decoded as JSON; ``where`` names the file and ``expected`` its format in the
    error.

    Raises:
        InputError: ``text`` is not JSON; the message gives the line and column.

    Example:
        >>> decode_json('[1, 2]', "notes.json", expected="a JSON list")
        [1, 2]
        >>> decode_json('[1,', "notes.json", expected="a JSON list")
        Traceback (most recent call last):
        ...
        steerlens.errors.InputError: notes.json is not valid JSON (Expecting value at line 1, column 4); it must be a JSON list.
    """  # noqa: E501
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(
            f"{where} is not valid JSON ({error.msg} at line {error.lineno}, column "
            f"{error.colno}); it must be {expected}."
        ) from None
