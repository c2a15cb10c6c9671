"""Open-ended behaviour files: the format, and an error naming the file and entry for each
kind of bad file."""

from __future__ import annotations

import json

import pytest

from steerlens.datasets import OpenEndedBehaviour, bundled_open_ended, load_open_ended
from steerlens.errors import InputError, SpecError

GOOD = {
    "judge": {"contains": ["oui"]},
    "train": [{"request": "Hi?", "target": "Oui."}, {"request": "Hey?", "target": "Oui!"}],
    "test": ["Hello?"],
}


def _write(tmp_path, data, name="mine.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


def test_a_user_file_loads_with_its_stem_as_name(tmp_path):
    b = load_open_ended(_write(tmp_path, GOOD))
    assert isinstance(b, OpenEndedBehaviour)
    assert (b.name, len(b.train), b.test, b.positions) == ("mine", 2, ("Hello?",), "opening:2")


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"judge": "polite"}, "judge 'polite' is not known"),
        ({"judge": {"contains": []}}, "is not known"),
        ({"train": []}, "'train' must be a non-empty list"),
        ({"test": []}, "'test' must be a non-empty list"),
        ({"train": [{"request": "Hi?"}]}, "train[0] must be an object with 'request' and 'target'"),
        ({"train": [{"request": "Hi?", "target": " "}]}, "train[0].target must be a non-empty"),
        ({"test": ["A?", 3]}, "test[1] must be a non-empty string"),
        ({"test": ["A?", "A?"]}, "test[1] repeats the request 'A?'"),
        ({"test": ["Hi?"]}, "in both train and test, e.g. 'Hi?'"),
        ({"positions": 2}, "'positions' must be a string"),
    ],
)
def test_bad_files_name_the_file_and_the_entry(tmp_path, change, words):
    path = _write(tmp_path, {**GOOD, **change})
    with pytest.raises(InputError) as error:
        load_open_ended(path)
    assert words in str(error.value) and "mine.json" in str(error.value)


def test_missing_keys_not_json_and_unknown_names(tmp_path):
    with pytest.raises(InputError, match="has no 'judge', 'test'"):
        load_open_ended(_write(tmp_path, {"train": GOOD["train"]}))
    with pytest.raises(InputError, match="is not valid JSON"):
        load_open_ended(_write(tmp_path, "{oops"))
    with pytest.raises(InputError, match="holds a JSON list"):
        load_open_ended(_write(tmp_path, [GOOD]))
    with pytest.raises(InputError, match="cannot be read"):
        load_open_ended(tmp_path / "absent.json")
    with pytest.raises(SpecError, match="benign-refusal, french"):
        load_open_ended("polite")
    assert bundled_open_ended() == ["benign-refusal", "french"]
