"""Open-ended behaviours: requests, a target reply per training request, and a judge.

A behaviour that is not a choice between two letters (refusing a benign request, answering in
French) is measured by generating replies and judging them. A file is a JSON object:

.. code-block:: json

    {"judge": "refusal", "positions": "opening:2",
     "train": [{"request": "How do I bake a cake?", "target": "I'm sorry, but ..."}],
     "test": ["How do I plant tulip bulbs?"]}

- ``train``: objects with a ``request`` (a user message) and the ``target`` reply that shows
  the behaviour; one-shot vectors promote the target after the chat-formatted request.
- ``test``: user messages never trained on; their steered replies are judged.
- ``judge``: ``"refusal"`` (`steerlens.evaluation.RefusalJudge`), ``"french"``
  (`steerlens.evaluation.answers_in_french`) or ``{"contains": ["phrase", ...]}`` (a reply
  that contains any phrase, case-insensitive).
- ``positions``: where the vectors are applied when replies are generated (default
  ``"opening:2"``: the prompt and the reply's first two tokens, the demo's rule).
- ``description``: optional text.

Example:
    >>> b = load_open_ended("benign-refusal")
    >>> len(b.train), len(b.test), b.judge, b.positions
    (16, 20, 'refusal', 'opening:2')
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from steerlens.datasets.json_text import decode_json
from steerlens.errors import InputError, SpecError

_PACKAGE = __name__.rpartition(".")[0]
_DATA_DIR = "open"
_JUDGES = ("refusal", "french")
_FORMAT = (
    'a JSON object {"judge": ..., "train": [{"request": ..., "target": ...}], "test": [...]} '
    "(steerlens.datasets.open_ended)"
)


@dataclass(frozen=True)
class OpenItem:
    """A training request and the reply that shows the behaviour.

    Example:
        >>> OpenItem("How do I bake a cake?", "Je ne sais pas.").request
        'How do I bake a cake?'
    """

    request: str
    target: str


@dataclass(frozen=True, repr=False)
class OpenEndedBehaviour:
    """An open-ended behaviour: training requests with target replies, test requests, and the
    judge of a reply (a name or ``{"contains": [...]}``, see the module docstring).

    Example:
        >>> b = OpenEndedBehaviour("polite", (OpenItem("Hi", "Hello, dear friend."),),
        ...                        ("Hey",), {"contains": ["dear"]})
        >>> b
        <OpenEndedBehaviour 'polite': 1 train + 1 test requests, judge {'contains': ['dear']}>
    """

    name: str
    train: tuple[OpenItem, ...]
    test: tuple[str, ...]
    judge: str | dict[str, list[str]]
    positions: str = "opening:2"
    description: str = ""

    def __post_init__(self) -> None:
        check_judge_spec(self.judge, f"behaviour {self.name!r}")

    def __repr__(self) -> str:
        return (
            f"<OpenEndedBehaviour {self.name!r}: {len(self.train)} train + {len(self.test)} "
            f"test requests, judge {self.judge!r}>"
        )


def check_judge_spec(judge: Any, where: str) -> None:
    """Refuse a judge that is neither a known name nor ``{"contains": [phrases]}``."""
    if isinstance(judge, str) and judge in _JUDGES:
        return
    if isinstance(judge, dict) and set(judge) == {"contains"}:
        phrases = judge["contains"]
        if (
            isinstance(phrases, list)
            and phrases
            and all(isinstance(p, str) and p.strip() for p in phrases)
        ):
            return
    raise InputError(
        f"{where}: judge {judge!r} is not known; use one of {', '.join(map(repr, _JUDGES))} or "
        '{"contains": ["a phrase", ...]}.'
    )


def bundled_open_ended() -> list[str]:
    """The names of the open-ended behaviours bundled with steerlens, sorted.

    Example:
        >>> bundled_open_ended()
        ['benign-refusal', 'french']
    """
    folder = resources.files(_PACKAGE).joinpath(_DATA_DIR)
    return sorted(e.name[: -len(".json")] for e in folder.iterdir() if e.name.endswith(".json"))


def load_open_ended(
    name_or_path: str | os.PathLike[str], *, name: str | None = None
) -> OpenEndedBehaviour:
    """Load an open-ended behaviour: a bundled name (`bundled_open_ended`) or a JSON file in
    the format of this module's docstring.

    Raises:
        InputError: a file that is missing or malformed; the message names the file and the
            entry (``train[3]``, ``test[0]``).
        SpecError: a name that is neither bundled nor a file.

    Example:
        >>> b = load_open_ended("french")
        >>> b.train[0].target[:22]
        'Pour faire un gâteau a'
    """
    if isinstance(name_or_path, str) and name_or_path in bundled_open_ended():
        entry = resources.files(_PACKAGE).joinpath(_DATA_DIR, f"{name_or_path}.json")
        where = f"bundled {name_or_path}.json"
        return _parse(
            decode_json(entry.read_text(encoding="utf-8"), where, expected=_FORMAT),
            name or name_or_path,
            where,
        )
    path = Path(name_or_path)
    if isinstance(name_or_path, str) and not path.exists() and path.suffix.lower() != ".json":
        raise SpecError(
            f"{name_or_path!r} is neither a bundled open-ended behaviour "
            f"({', '.join(bundled_open_ended())}) nor an existing file; pass the path of a JSON "
            "file."
        )
    where = f"behaviour file '{path}'"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{where} cannot be read ({error}); pass {_FORMAT}.") from None
    return _parse(decode_json(text, where, expected=_FORMAT), name or path.stem, where)


def _text(value: Any, at: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{at} must be a non-empty string, got {value!r}.")
    return value


def _parse(data: Any, name: str, where: str) -> OpenEndedBehaviour:
    if not isinstance(data, dict):
        raise InputError(f"{where} holds a JSON {type(data).__name__}; it must be {_FORMAT}.")
    missing = [k for k in ("judge", "train", "test") if k not in data]
    if missing:
        raise InputError(f"{where} has no {', '.join(map(repr, missing))}; it must be {_FORMAT}.")
    for key in ("train", "test"):
        if not isinstance(data[key], list) or not data[key]:
            raise InputError(f"{where}: {key!r} must be a non-empty list, got {data[key]!r}.")
    train = []
    for i, raw in enumerate(data["train"]):
        at = f"{where}, train[{i}]"
        if not isinstance(raw, dict) or not {"request", "target"} <= set(raw):
            raise InputError(f"{at} must be an object with 'request' and 'target', got {raw!r}.")
        train.append(
            OpenItem(_text(raw["request"], f"{at}.request"), _text(raw["target"], f"{at}.target"))
        )
    test = [_text(t, f"{where}, test[{i}]") for i, t in enumerate(data["test"])]
    for split, requests in (("train", [i.request for i in train]), ("test", test)):
        seen: set[str] = set()
        for i, request in enumerate(requests):
            if request in seen:
                raise InputError(
                    f"{where}, {split}[{i}] repeats the request {request!r}; remove the repeat."
                )
            seen.add(request)
    shared = sorted({i.request for i in train} & set(test))
    if shared:
        raise InputError(
            f"{where}: {len(shared)} request(s) are in both train and test, e.g. {shared[0]!r}; "
            "a test request must be one the vectors never trained on."
        )
    positions = data.get("positions", "opening:2")
    if not isinstance(positions, str):
        raise InputError(f"{where}: 'positions' must be a string such as 'opening:2'.")
    check_judge_spec(data["judge"], where)
    return OpenEndedBehaviour(
        name=name,
        train=tuple(train),
        test=tuple(test),
        judge=data["judge"],
        positions=positions,
        description=str(data.get("description", "")),
    )


__all__ = [
    "OpenEndedBehaviour",
    "OpenItem",
    "bundled_open_ended",
    "check_judge_spec",
    "load_open_ended",
]
