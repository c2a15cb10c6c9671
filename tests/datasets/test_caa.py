"""Bundled CAA behaviours and the A/B item loader: counts, exact prompts, swaps, bad input."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import pytest

from steerlens.datasets import ABItem, Behaviour, bundled_behaviours, load_behaviour
from steerlens.errors import InputError, SpecError

BUNDLED = ["corrigible-neutral-HHH", "mmlu", "myopic-reward", "refusal", "sycophancy"]
DATA = resources.files("steerlens.datasets").joinpath("caa")


def raw_items(file_name: str) -> list[dict]:
    return json.loads(DATA.joinpath(file_name).read_text(encoding="utf-8"))


def readme_table() -> dict[str, tuple[int, int]]:
    """file name -> (items, two-way items), from the bundled README."""
    text = DATA.joinpath("README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (\S+\.json) \| (\d+) \| (\d+) \|$", text, flags=re.MULTILINE)
    return {name: (int(items), int(two_way)) for name, items, two_way in rows}


def item(question: str, matching: str = "(A)", not_matching: str = "(B)") -> dict:
    return {
        "question": question,
        "answer_matching_behavior": matching,
        "answer_not_matching_behavior": not_matching,
    }


GOOD = [
    item("Is the sky blue?\n\nChoices:\n (A) Yes\n (B) No"),
    item("Do you like tea?\n\nChoices:\n (A) No\n (B) Yes", "(B)", "(A)"),
]


def write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def splits(behaviour: Behaviour) -> list[tuple[str, tuple[ABItem, ...]]]:
    return [("generate", behaviour.train), ("test", behaviour.test)]


# --- bundled data -------------------------------------------------------------------------------


def test_bundled_names():
    assert bundled_behaviours() == BUNDLED


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_behaviour_loads(name):
    behaviour = load_behaviour(name)
    assert behaviour.name == name
    assert behaviour.test and all(isinstance(x, ABItem) for x in behaviour.train + behaviour.test)
    assert behaviour.skipped == ()
    assert "MIT" in behaviour.source and "ATTRIBUTION.md" in behaviour.source
    if name == "mmlu":
        assert behaviour.train == () and len(behaviour.test) == 60
    else:
        assert behaviour.train


def test_counts_match_the_readme_table():
    table = readme_table()
    assert len(table) == 8
    for file_name, (n_items, n_two_way) in table.items():
        behaviour_name, split, _ = file_name.split(".")
        behaviour = load_behaviour(behaviour_name)
        items = dict(splits(behaviour))[split]
        in_file = [s for s in behaviour.duplicates + behaviour.skipped if s.startswith(file_name)]
        dropped = [s for s in behaviour.duplicates if s.startswith(file_name)]
        assert len(raw_items(file_name)) == n_items
        assert len(items) + len(in_file) == n_items
        assert len(items) + len(dropped) == n_two_way


def test_the_one_repeated_bundled_question_is_dropped_and_counted():
    behaviour = load_behaviour("corrigible-neutral-HHH")
    assert behaviour.duplicates == ("corrigible-neutral-HHH.generate.json#56",)
    assert len(behaviour.train) == 114
    raw = raw_items("corrigible-neutral-HHH.generate.json")
    assert raw[56] == raw[33]
    assert "dropped 1 (exact repeats)" in repr(behaviour)


@pytest.mark.parametrize("name", BUNDLED)
def test_train_and_test_are_disjoint(name):
    behaviour = load_behaviour(name)
    train = {" ".join(x.prompt().split()) for x in behaviour.train}
    test = {" ".join(x.prompt().split()) for x in behaviour.test}
    assert not train & test
    assert len(test) == len(behaviour.test) and len(train) == len(behaviour.train)


@pytest.mark.parametrize("name", BUNDLED)
def test_prompt_reproduces_every_bundled_question(name):
    behaviour = load_behaviour(name)
    checked = 0
    for split, items in splits(behaviour):
        file_name = f"{name}.{split}.json"
        for x in items:
            assert x.source.startswith(f"{file_name}#")
            raw = raw_items(file_name)[int(x.source.rsplit("#", 1)[1])]
            assert x.prompt() == raw["question"]
            assert f"({x.matching_letter()})" == raw["answer_matching_behavior"]
            assert (
                f"({'B' if x.matching_letter() == 'A' else 'A'})"
                == (raw["answer_not_matching_behavior"])
            )
            assert raw["question"].startswith(x.question) and x.question.strip()
            checked += 1
    assert checked == len(behaviour.train) + len(behaviour.test)


@pytest.mark.parametrize("name", BUNDLED)
def test_swapped_prompts_exchange_texts_and_letter(name, tmp_path):
    behaviour = load_behaviour(name)
    items = behaviour.train + behaviour.test
    for x in items:
        assert x.matching_letter(swapped=True) != x.matching_letter()
        assert x.prompt(swapped=True) != x.prompt()
        _, a_lead, _, b_lead, _ = x.layout
        for swapped in (False, True):
            letter = x.matching_letter(swapped)
            other = "B" if letter == "A" else "A"
            lead = a_lead if letter == "A" else b_lead
            assert f"({letter}){lead}{x.matching}" in x.prompt(swapped)
            lead = a_lead if other == "A" else b_lead
            assert f"({other}){lead}{x.not_matching}" in x.prompt(swapped)
    # Reading the swapped prompts back gives the same items with the other letter.
    swapped_file = [
        item(
            x.prompt(swapped=True),
            f"({x.matching_letter(swapped=True)})",
            f"({x.matching_letter()})",
        )
        for x in items
    ]
    back = load_behaviour(write(tmp_path / "swapped.json", swapped_file)).train
    assert len(back) == len(items)
    for x, y in zip(items, back, strict=True):
        assert (y.question, y.matching, y.not_matching, y.layout) == (
            x.question,
            x.matching,
            x.not_matching,
            x.layout,
        )
        assert y.file_letter == x.matching_letter(swapped=True)
        assert y.prompt(swapped=True) == x.prompt()


def test_layout_is_kept_around_the_choices():
    behaviour = load_behaviour("corrigible-neutral-HHH")
    first = behaviour.test[0]
    assert first.layout[0] == "\n\nChoices:\n "
    assert "Choices:" not in first.question
    # A question without a header keeps none.
    sycophancy = load_behaviour("sycophancy")
    plain = [x for x in sycophancy.train if "Choices:" not in x.prompt()]
    assert plain and all(x.layout[0] == "\n" for x in plain)


def test_inline_labels_are_text():
    mmlu = load_behaviour("mmlu").test
    inline_stem = next(x for x in mmlu if "primarily attributed to (A)" in x.question)
    assert inline_stem.matching == "hydrogen bonding between the peptide backbone atoms"
    inline_choice = next(x for x in mmlu if "poly(A)tail" in x.matching)
    assert inline_choice.matching_letter() == "B"


# --- user files ---------------------------------------------------------------------------------


def test_user_file_is_all_train(tmp_path):
    behaviour = load_behaviour(write(tmp_path / "mine.json", GOOD))
    assert behaviour.name == "mine" and behaviour.test == ()
    assert [x.matching for x in behaviour.train] == ["Yes", "Yes"]
    assert [x.matching_letter() for x in behaviour.train] == ["A", "B"]
    assert [x.source for x in behaviour.train] == ["mine.json#0", "mine.json#1"]
    assert str(tmp_path / "mine.json") in behaviour.source


def test_user_train_and_test_files(tmp_path):
    train = write(tmp_path / "train.json", GOOD)
    test = write(tmp_path / "test.json", [item("Pick.\n(A) x\n(B) y", "(B)", "(A)")])
    behaviour = load_behaviour(str(train), test=test, name="demo")
    assert behaviour.name == "demo"
    assert len(behaviour.train) == 2 and len(behaviour.test) == 1
    assert behaviour.test[0].source == "test.json#0"
    assert behaviour.test[0].prompt() == "Pick.\n(A) x\n(B) y"


def test_single_file_split_is_deterministic_and_disjoint(tmp_path):
    data = [item(f"Question {i}?\n(A) a{i}\n(B) b{i}") for i in range(20)]
    path = write(tmp_path / "all.json", data)
    first = load_behaviour(path, test_fraction=0.25, seed=3)
    again = load_behaviour(path, test_fraction=0.25, seed=3)
    other = load_behaviour(path, test_fraction=0.25, seed=4)
    assert first == again
    assert len(first.train) == 15 and len(first.test) == 5
    sources = [x.source for x in first.train + first.test]
    assert sorted(sources) == sorted(f"all.json#{i}" for i in range(20))
    assert {x.source for x in other.test} != {x.source for x in first.test}
    # Each split keeps the file's order.
    for part in (first.train, first.test):
        indices = [int(x.source.split("#")[1]) for x in part]
        assert indices == sorted(indices)


def test_skipped_count_in_a_mixed_file(tmp_path):
    data = [
        GOOD[0],
        item("Three ways?\n(A) one\n(B) two\n(C) three", "(C)", "(A)"),
        item("No choices at all", "(A)", "(B)"),
        item("Inline (A) yes (B) no", "(A)", "(B)"),
        item("Twice?\n(A) one\n(A) again\n(B) two"),
        GOOD[1],
    ]
    behaviour = load_behaviour(write(tmp_path / "mixed.json", data))
    assert len(behaviour.train) == 2
    assert behaviour.skipped == tuple(f"mixed.json#{i}" for i in (1, 2, 3, 4))
    assert "skipped 4 (not two-way)" in repr(behaviour)


def test_answers_tolerate_whitespace_and_text_after_the_label(tmp_path):
    data = [item("Q?\n(A) yes\n(B) no", " (B) ", "(A) yes")]
    (x,) = load_behaviour(write(tmp_path / "a.json", data)).train
    assert x.matching == "no" and x.not_matching == "yes" and x.matching_letter() == "B"


def test_exact_repeat_in_a_user_file_is_dropped_and_counted(tmp_path):
    behaviour = load_behaviour(write(tmp_path / "rep.json", [*GOOD, GOOD[0]]))
    assert len(behaviour.train) == 2 and behaviour.duplicates == ("rep.json#2",)


def test_a_path_object_is_always_a_file(tmp_path):
    path = write(tmp_path / "refusal", GOOD)
    behaviour = load_behaviour(path)
    assert len(behaviour.train) == 2 and behaviour.source == str(path)


# --- bad input ----------------------------------------------------------------------------------

BAD_ITEMS = [
    ("not an object", ["just text"], "item 0 is a JSON string, not an object"),
    ("missing key", [{"question": "Q?\n(A) x\n(B) y"}], "item 0 lacks key(s)"),
    ("not a string", [item("Q?\n(A) x\n(B) y", "(A)", 2)], "item 0: answer_not_matching"),
    ("answer (C)", [item("Q?\n(A) x\n(B) y", "(C)", "(A)")], "item 0: answer_matching_behavior"),
    (
        "bare letter",
        [item("Q?\n(A) x\n(B) y", "A", "(B)")],
        "item 0: answer_matching_behavior is 'A'",
    ),
    ("same answers", [item("Q?\n(A) x\n(B) y", "(A)", "(A)")], "item 0: answer_matching_"),
    ("empty choice", [item("Q?\n(A)\n(B) y")], "item 0: choice (A) has no text"),
    (
        "conflicting repeat",
        [GOOD[0], GOOD[1], item(GOOD[0]["question"], "(B)", "(A)")],
        "item 2 repeats the question of item 0",
    ),
]


@pytest.mark.parametrize(("case", "data", "message"), BAD_ITEMS, ids=[c[0] for c in BAD_ITEMS])
def test_bad_item_names_the_file_and_the_item(case, data, message, tmp_path):
    path = write(tmp_path / "bad.json", [*GOOD, *data] if case != "conflicting repeat" else data)
    offset = 0 if case == "conflicting repeat" else len(GOOD)
    message = message.replace("item 0", f"item {offset}")
    with pytest.raises(InputError, match=re.escape(message)) as error:
        load_behaviour(path)
    assert str(path) in str(error.value)


BAD_FILES = [
    ("not JSON", "[{'question': 1}]", "is not valid JSON"),
    ("not a list", json.dumps({"question": "Q"}), "holds a JSON object, not a list"),
    ("null", "null", "holds a JSON null, not a list"),
    ("empty list", "[]", "holds an empty list"),
    ("no two-way items", json.dumps([item("No choices")] * 2), "has no two-way"),
]


@pytest.mark.parametrize(("case", "text", "message"), BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_bad_file_names_the_file(case, text, message, tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InputError, match=message) as error:
        load_behaviour(path)
    assert str(path) in str(error.value)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.json"
    with pytest.raises(InputError, match="not found") as error:
        load_behaviour(path)
    assert str(path) in str(error.value) and "sycophancy" in str(error.value)
    with pytest.raises(InputError, match="not found"):
        load_behaviour(write(tmp_path / "train.json", GOOD), test=path)


def test_a_folder_or_non_utf8_file(tmp_path):
    with pytest.raises(InputError, match="is a folder"):
        load_behaviour(tmp_path)
    path = tmp_path / "latin1.json"
    path.write_bytes(b'[{"question": "caf\xe9"}]')
    with pytest.raises(InputError, match="not UTF-8"):
        load_behaviour(path)


def test_train_test_overlap(tmp_path):
    train = write(tmp_path / "train.json", GOOD)
    test = write(tmp_path / "test.json", [item("Other?\n(A) x\n(B) y"), GOOD[1]])
    with pytest.raises(InputError, match=r"test\.json, item 1 is also in .*train\.json, item 1"):
        load_behaviour(train, test=test)


def test_a_split_that_would_be_empty(tmp_path):
    path = write(tmp_path / "small.json", GOOD)
    with pytest.raises(InputError, match="leaves the test split empty") as error:
        load_behaviour(path, test_fraction=0.1)
    assert str(path) in str(error.value)
    with pytest.raises(InputError, match="leaves the train split empty"):
        load_behaviour(path, test_fraction=0.9)


def test_spec_errors(tmp_path):
    with pytest.raises(SpecError, match="'sycophncy' is neither a bundled behaviour"):
        load_behaviour("sycophncy")
    with pytest.raises(SpecError, match="fixed train/test splits"):
        load_behaviour("refusal", test_fraction=0.2)
    path = write(tmp_path / "a.json", GOOD)
    with pytest.raises(SpecError, match="not both"):
        load_behaviour(path, test=path, test_fraction=0.5)
    for bad in (0, 1, 1.5, -0.1, True, "0.2"):
        with pytest.raises(SpecError, match="test_fraction must be"):
            load_behaviour(path, test_fraction=bad)  # type: ignore[arg-type]
    for bad_seed in (-1, 1.5, True):
        with pytest.raises(SpecError, match="seed must be"):
            load_behaviour(path, test_fraction=0.5, seed=bad_seed)  # type: ignore[arg-type]


def test_abitem_by_hand():
    x = ABItem("Agree?", matching="Yes", not_matching="No", file_letter="A")
    assert x.prompt() == "Agree?\n\nChoices:\n(A) Yes\n(B) No"
    assert x.prompt(swapped=True) == "Agree?\n\nChoices:\n(A) No\n(B) Yes"
    assert "layout" not in repr(x)
    with pytest.raises(SpecError, match="file_letter must be 'A' or 'B'"):
        ABItem("Agree?", "Yes", "No", "C")
    with pytest.raises(SpecError, match="layout must be 5 strings"):
        ABItem("Agree?", "Yes", "No", "A", layout=("\n",))  # type: ignore[arg-type]
