"""CAA-style behaviour data: two-way A/B items and a loader for bundled and user files.

A behaviour file is a JSON list of objects with the keys ``question``,
``answer_matching_behavior`` and ``answer_not_matching_behavior`` (the format of the
nrimsky/CAA repository). Other keys are ignored.

Parsing rules (one rule for bundled and user files):

- Choices are labels ``(A)``, ``(B)``, ``(C)`` ... that start a line of the question (after
  optional spaces or tabs). A label inside a sentence, such as ``poly(A)`` or "attributed to
  (A) ...", is text, not a choice.
- An item is *two-way* when its choice labels are exactly ``(A)`` then ``(B)``. Other items
  (no labelled choices, three or more, a repeated label) are skipped; their sources are listed
  on `Behaviour.skipped`, never dropped unseen.
- Choice (A)'s text runs from its label to the ``(B)`` label, choice (B)'s to the end of the
  question; both are stripped of surrounding whitespace and must not be empty.
- An answer is ``"(A)"`` or ``"(B)"``, with optional surrounding whitespace and optional text
  after the label (``"(A) Yes"``): the label decides, the text after it is not checked. The
  two answers of an item must differ.
- An exact repeat within a split (the same question, whitespace-normalised, with the same
  answers) is dropped and listed on `Behaviour.duplicates`. The same question with different
  answers raises `InputError`, and so does a question in both splits.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from steerlens.datasets.json_text import decode_json
from steerlens.errors import InputError, SpecError

_PACKAGE = __name__.rpartition(".")[0]
_KEYS = ("question", "answer_matching_behavior", "answer_not_matching_behavior")
_DATA_DIR = "caa"
_FORMAT = f"a JSON list of objects with keys {', '.join(_KEYS)}"
_CAA_ATTRIBUTION = (
    "nrimsky/CAA (MIT); items from Anthropic's model-written evals (CC-BY-4.0) and GPT-4; "
    "see steerlens/datasets/caa/ATTRIBUTION.md"
)
_ATTRIBUTION = {
    "mmlu": (
        "MMLU (Hendrycks et al., MIT) as two-way items from nrimsky/CAA (MIT); "
        "see steerlens/datasets/caa/ATTRIBUTION.md"
    ),
}

# A choice label at the start of a line: "(A) ...", " (B) ...".
_LABEL = re.compile(r"^[ \t]*\(([A-Z])\)", re.MULTILINE)
# The tail of the text before "(A)": whitespace and an optional header line ("Choices:").
_HEAD = re.compile(
    r"(?:\s*\n[ \t]*(?:possible[ \t]+|answer[ \t]+)?(?:choices|answers?|options)[ \t]*:)?\s*$",
    re.IGNORECASE,
)
_ANSWER = re.compile(r"\s*\(([AB])\)")

# (text between stem and "(A)", before choice A's text, after it, before B's text, after it)
_DEFAULT_LAYOUT = ("\n\nChoices:\n", " ", "\n", " ", "")


@dataclass(frozen=True)
class ABItem:
    """One two-way A/B item: a question stem and its matching / not-matching choices.

    Args:
        question: the question stem, the text before the choices (and before a header such
            as ``"Choices:"``).
        matching: the text of the choice that shows the behaviour.
        not_matching: the text of the other choice.
        file_letter: the letter (``"A"`` or ``"B"``) the matching choice had in the file.
        source: where the item came from, ``"<file name>#<index>"`` (index from 0).
        layout: the text around the choices as the file had it (the header, the indentation
            and line breaks): ``(before "(A)", before A's text, after it, before B's text,
            after it)``. The default renders ``"<question>\\n\\nChoices:\\n(A) ...\\n(B) ..."``.

    Example:
        >>> item = ABItem("Pick one.", matching="yes", not_matching="no", file_letter="B")
        >>> print(item.prompt())
        Pick one.
        <BLANKLINE>
        Choices:
        (A) no
        (B) yes
        >>> item.matching_letter(), item.matching_letter(swapped=True)
        ('B', 'A')
    """

    question: str
    matching: str
    not_matching: str
    file_letter: str
    source: str = ""
    layout: tuple[str, str, str, str, str] = field(default=_DEFAULT_LAYOUT, repr=False)

    def __post_init__(self) -> None:
        if self.file_letter not in ("A", "B"):
            raise SpecError(
                f"ABItem file_letter must be 'A' or 'B', got {self.file_letter!r}; pass the letter "
                "of the matching choice."
            )
        if len(self.layout) != 5 or not all(isinstance(part, str) for part in self.layout):
            raise SpecError(
                f"ABItem layout must be 5 strings, got {self.layout!r}; leave it out for the "
                "default layout."
            )

    def prompt(self, swapped: bool = False) -> str:
        """The question with its two choices as ``(A) ...`` / ``(B) ...``, in the file's layout.

        With ``swapped=False`` the choices keep the file's order, and a parsed item gives back
        the file's question text exactly. With ``swapped=True`` the two choice texts exchange
        letters; everything else (header, indentation, line breaks) stays in place.

        Example:
            >>> item = ABItem("Agree?", "Yes", "No", "A", layout=("\\n", " ", "\\n", " ", ""))
            >>> item.prompt()
            'Agree?\\n(A) Yes\\n(B) No'
            >>> item.prompt(swapped=True)
            'Agree?\\n(A) No\\n(B) Yes'
        """
        first, second = (self.matching, self.not_matching)
        if (self.file_letter == "B") != swapped:
            first, second = second, first
        head, a_lead, a_trail, b_lead, b_trail = self.layout
        return f"{self.question}{head}(A){a_lead}{first}{a_trail}(B){b_lead}{second}{b_trail}"

    def matching_letter(self, swapped: bool = False) -> str:
        """The letter (``"A"`` or ``"B"``) of the matching choice in `prompt` (same ``swapped``).

        Example:
            >>> ABItem("Agree?", "Yes", "No", "A").matching_letter(swapped=True)
            'B'
        """
        if not swapped:
            return self.file_letter
        return "B" if self.file_letter == "A" else "A"


@dataclass(frozen=True, repr=False)
class Behaviour:
    """A behaviour's A/B items, split into train (for building vectors) and test items.

    Args:
        name: the behaviour's name (a bundled name, or the user's file name without suffix).
        train: the train items, in file order.
        test: the test items, in file order (empty for a test-only or train-only behaviour).
        skipped: sources (``"<file name>#<index>"``) of the items that are not two-way A/B;
            ``len(b.skipped)`` is their count.
        duplicates: sources of exact repeats within a split that were dropped (the first
            occurrence is kept).
        source: where the data comes from: the attribution of bundled data, or file paths.

    Example:
        >>> load_behaviour("corrigible-neutral-HHH")  # doctest: +ELLIPSIS
        <Behaviour 'corrigible-neutral-HHH': 114 train + 50 test A/B items
         skipped 0 (not two-way), dropped 1 (exact repeats)
         source: nrimsky/CAA (MIT); items from ...>
    """

    name: str
    train: tuple[ABItem, ...]
    test: tuple[ABItem, ...]
    skipped: tuple[str, ...] = ()
    duplicates: tuple[str, ...] = ()
    source: str = ""

    def __repr__(self) -> str:
        return (
            f"<Behaviour {self.name!r}: {len(self.train)} train + {len(self.test)} test A/B items\n"
            f" skipped {len(self.skipped)} (not two-way), dropped {len(self.duplicates)} "
            f"(exact repeats)\n source: {self.source}>"
        )


def bundled_behaviours() -> list[str]:
    """The names of the behaviours bundled with steerlens, sorted.

    Example:
        >>> "sycophancy" in bundled_behaviours()
        True
    """
    folder = resources.files(_PACKAGE).joinpath(_DATA_DIR)
    names = {
        entry.name.split(".")[0]
        for entry in folder.iterdir()
        if entry.name.endswith((".generate.json", ".test.json"))
    }
    return sorted(names)


def load_behaviour(
    name_or_path: str | os.PathLike[str],
    *,
    test: str | os.PathLike[str] | None = None,
    test_fraction: float | None = None,
    seed: int = 0,
    name: str | None = None,
) -> Behaviour:
    """Load a behaviour's two-way A/B items: a bundled behaviour or a user's JSON file.

    A bundled name (see `bundled_behaviours`) gives its fixed splits: train from
    ``<name>.generate.json``, test from ``<name>.test.json`` (``"mmlu"`` has test items only).
    A string that is not a bundled name, or any ``os.PathLike``, is a path to a JSON file (to
    load a local file named like a bundled behaviour, pass a ``Path``):

    - ``load_behaviour("train.json")``: every item is a train item; ``test`` is empty.
    - ``load_behaviour("train.json", test="test.json")``: train and test from two files.
    - ``load_behaviour("all.json", test_fraction=0.2, seed=0)``: one file split at random
      (deterministic for a seed) into train and test; each split keeps the file's order.

    Args:
        name_or_path: a bundled behaviour name or the path of a JSON file.
        test: the path of a test file (user files only).
        test_fraction: the share of a single file's items that go to test, in (0, 1).
        seed: the seed of the ``test_fraction`` split.
        name: the behaviour's name (default: the bundled name or the train file's stem).

    Returns:
        A `Behaviour`; the rules for parsing are in this module's docstring.

    Raises:
        InputError: a file that is missing or malformed, an item that cannot be used (the
            message names the file and the item's index), a file with no two-way items, a
            repeated or shared question, or an empty split.
        SpecError: an unknown bundled name, or options that do not fit together.

    Example:
        >>> b = load_behaviour("sycophancy")
        >>> len(b.train), len(b.test), len(b.skipped)
        (56, 37, 0)
        >>> b.test[0].source, b.test[0].matching_letter()
        ('sycophancy.test.json#0', 'B')
    """
    bundled = bundled_behaviours()
    if isinstance(name_or_path, str) and name_or_path in bundled:
        if test is not None or test_fraction is not None:
            raise SpecError(
                f"bundled behaviour {name_or_path!r} has fixed train/test splits; got "
                f"test={test!r}, test_fraction={test_fraction!r}; leave them out, or pass the "
                "path of your own JSON file."
            )
        return _load_bundled(name_or_path, name=name)
    path = Path(name_or_path)
    if (
        isinstance(name_or_path, str)
        and not path.exists()
        and path.suffix.lower() != ".json"
        and os.sep not in name_or_path
        and "/" not in name_or_path
    ):
        raise SpecError(
            f"{name_or_path!r} is neither a bundled behaviour nor an existing file; the bundled "
            f"behaviours are: {', '.join(bundled)}; or pass the path of a JSON file."
        )
    if test is not None and test_fraction is not None:
        raise SpecError(
            f"pass either test= (a test file) or test_fraction= (split one file), not both; got "
            f"test={test!r}, test_fraction={test_fraction!r}."
        )
    if test_fraction is not None and (
        isinstance(test_fraction, bool)
        or not isinstance(test_fraction, (int, float))
        or not 0 < test_fraction < 1
    ):
        raise SpecError(
            f"test_fraction must be a number between 0 and 1 (exclusive), got {test_fraction!r}; "
            "e.g. test_fraction=0.2."
        )
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise SpecError(f"seed must be a non-negative integer, got {seed!r}; e.g. seed=0.")
    whole = _parse(_read_user_file(path), path.name, where=str(path))
    skipped, duplicates = whole.skipped, whole.duplicates
    if test is not None:
        test_path = Path(test)
        test_part = _parse(_read_user_file(test_path), test_path.name, where=str(test_path))
        _check_disjoint(whole.items, test_part.items, str(path), str(test_path))
        train_items, test_items = whole.items, test_part.items
        skipped, duplicates = skipped + test_part.skipped, duplicates + test_part.duplicates
        source = f"train: {path}; test: {test_path}"
    elif test_fraction is not None:
        train_items, test_items = _split(whole.items, float(test_fraction), seed, where=str(path))
        source = f"{path} (test_fraction={test_fraction}, seed={seed})"
    else:
        train_items, test_items = whole.items, ()
        source = str(path)
    return Behaviour(
        name=name if name is not None else path.stem,
        train=train_items,
        test=test_items,
        skipped=skipped,
        duplicates=duplicates,
        source=source,
    )


@dataclass(frozen=True)
class _Parsed:
    items: tuple[ABItem, ...]
    skipped: tuple[str, ...]
    duplicates: tuple[str, ...]


def _load_bundled(behaviour: str, *, name: str | None) -> Behaviour:
    folder = resources.files(_PACKAGE).joinpath(_DATA_DIR)
    splits = []
    for split in ("generate", "test"):
        file_name = f"{behaviour}.{split}.json"
        entry = folder.joinpath(file_name)
        if not entry.is_file():
            splits.append(_Parsed((), (), ()))
            continue
        where = f"bundled {file_name}"
        splits.append(
            _parse(
                decode_json(entry.read_text(encoding="utf-8"), where, expected=_FORMAT),
                file_name,
                where,
            )
        )
    train, test = splits
    _check_disjoint(train.items, test.items, f"{behaviour}.generate.json", f"{behaviour}.test.json")
    return Behaviour(
        name=name if name is not None else behaviour,
        train=train.items,
        test=test.items,
        skipped=train.skipped + test.skipped,
        duplicates=train.duplicates + test.duplicates,
        source=_ATTRIBUTION.get(behaviour, _CAA_ATTRIBUTION),
    )


def _read_user_file(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(
            f"behaviour file '{path}' not found; pass the path of an existing JSON file, or a "
            f"bundled behaviour name ({', '.join(bundled_behaviours())})."
        ) from None
    except IsADirectoryError:
        raise InputError(
            f"behaviour file '{path}' is a folder; pass the path of a JSON file in it."
        ) from None
    except UnicodeDecodeError as error:
        raise InputError(
            f"behaviour file '{path}' is not UTF-8 text ({error.reason} at byte {error.start}); "
            "save it as UTF-8 JSON."
        ) from None
    except OSError as error:
        raise InputError(
            f"behaviour file '{path}' cannot be read ({error.strerror}); check its permissions."
        ) from None
    return decode_json(text, f"behaviour file '{path}'", expected=_FORMAT)


def _parse(data: Any, file_name: str, where: str) -> _Parsed:
    """Parse a decoded file into two-way items; ``where`` names the file in errors."""
    if not isinstance(data, list):
        raise InputError(
            f"{where} holds a JSON {_json_type(data)}, not a list; it must be {_FORMAT}."
        )
    if not data:
        raise InputError(
            f"{where} holds an empty list; add items (objects with keys {', '.join(_KEYS)})."
        )
    items: list[ABItem] = []
    skipped: list[str] = []
    duplicates: list[str] = []
    seen: dict[str, tuple[int, ABItem]] = {}
    for index, raw in enumerate(data):
        item = _parse_item(raw, file_name, index, where)
        if item is None:
            skipped.append(f"{file_name}#{index}")
            continue
        key = _key(item)
        if key in seen:
            first_index, first = seen[key]
            if first.matching_letter() != item.matching_letter():
                raise InputError(
                    f"{where}: item {index} repeats the question of item {first_index} with "
                    f"the other answer (matching {item.matching_letter()!r} vs "
                    f"{first.matching_letter()!r}); remove the wrong one."
                )
            duplicates.append(item.source)
            continue
        seen[key] = (index, item)
        items.append(item)
    if not items:
        raise InputError(
            f"{where} has no two-way (A)/(B) items: all {len(data)} were skipped (a two-way "
            "item's question has exactly two choices, lines starting with '(A)' and '(B)'); "
            "check the file's format."
        )
    return _Parsed(tuple(items), tuple(skipped), tuple(duplicates))


def _parse_item(raw: Any, file_name: str, index: int, where: str) -> ABItem | None:
    """One item, or None when it is not two-way A/B."""
    at = f"{where}, item {index}"
    if not isinstance(raw, dict):
        raise InputError(
            f"{at} is a JSON {_json_type(raw)}, not an object; each item must be an object "
            f"with keys {', '.join(_KEYS)}."
        )
    missing = [key for key in _KEYS if key not in raw]
    if missing:
        present = ", ".join(map(str, raw)) or "none"
        raise InputError(
            f"{at} lacks key(s) {', '.join(missing)} (it has: {present}); each item needs "
            f"{', '.join(_KEYS)}."
        )
    for key in _KEYS:
        if not isinstance(raw[key], str):
            raise InputError(
                f"{at}: {key} must be a string, got a JSON {_json_type(raw[key])} ({raw[key]!r})."
            )
    question: str = raw["question"]
    labels = list(_LABEL.finditer(question))
    if [label.group(1) for label in labels] != ["A", "B"]:
        return None
    a_label, b_label = labels
    a_start = a_label.end() - 3
    b_start = b_label.end() - 3
    prefix = question[:a_start]
    a_raw = question[a_label.end() : b_start]
    b_raw = question[b_label.end() :]
    a_text, a_lead, a_trail = _strip(a_raw)
    b_text, b_lead, b_trail = _strip(b_raw)
    for letter, text in (("A", a_text), ("B", b_text)):
        if not text:
            raise InputError(f"{at}: choice ({letter}) has no text; write the choice after it.")
    letters = [_answer_letter(raw[key], key, at) for key in _KEYS[1:]]
    if letters[0] == letters[1]:
        raise InputError(
            f"{at}: answer_matching_behavior and answer_not_matching_behavior are both "
            f"'({letters[0]})'; one must be '(A)' and the other '(B)'."
        )
    head = _HEAD.search(prefix)
    cut = head.start() if head is not None else len(prefix)
    matching, not_matching = (a_text, b_text) if letters[0] == "A" else (b_text, a_text)
    return ABItem(
        question=prefix[:cut],
        matching=matching,
        not_matching=not_matching,
        file_letter=letters[0],
        source=f"{file_name}#{index}",
        layout=(prefix[cut:], a_lead, a_trail, b_lead, b_trail),
    )


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    names = {dict: "object", list: "list", str: "string", int: "number", float: "number"}
    return names.get(type(value), type(value).__name__)


def _strip(text: str) -> tuple[str, str, str]:
    """(stripped text, leading whitespace, trailing whitespace)."""
    core = text.strip()
    if not core:
        return "", text, ""
    lead = text[: len(text) - len(text.lstrip())]
    trail = text[len(text.rstrip()) :]
    return core, lead, trail


def _answer_letter(answer: str, key: str, at: str) -> str:
    match = _ANSWER.match(answer)
    if match is None:
        raise InputError(
            f"{at}: {key} is {answer!r}, neither '(A)' nor '(B)'; write '(A)' or '(B)' (the "
            "letter of a choice in the question)."
        )
    return match.group(1)


def _key(item: ABItem) -> str:
    """The question as the model sees it, whitespace-normalised: equal keys are one question."""
    return " ".join(item.prompt().split())


def _check_disjoint(
    train: Sequence[ABItem], test: Sequence[ABItem], train_where: str, test_where: str
) -> None:
    in_train = {_key(item): item for item in train}
    for item in test:
        other = in_train.get(_key(item))
        if other is not None:
            raise InputError(
                f"the question of {test_where}, item {item.source.rsplit('#', 1)[1]} is also in "
                f"{train_where}, item {other.source.rsplit('#', 1)[1]}; a question must be in "
                "train or test, not both: remove it from one file."
            )


def _split(
    items: tuple[ABItem, ...], test_fraction: float, seed: int, where: str
) -> tuple[tuple[ABItem, ...], tuple[ABItem, ...]]:
    n = len(items)
    n_test = round(n * test_fraction)
    if n_test == 0 or n_test == n:
        empty = "test" if n_test == 0 else "train"
        raise InputError(
            f"{where}: test_fraction={test_fraction} of its {n} two-way items leaves the {empty} "
            "split empty; choose a test_fraction that leaves items in both splits, or add items."
        )
    order = np.random.default_rng(seed).permutation(n)
    test_rows = {int(i) for i in order[:n_test]}
    train = tuple(item for i, item in enumerate(items) if i not in test_rows)
    test = tuple(item for i, item in enumerate(items) if i in test_rows)
    return train, test
