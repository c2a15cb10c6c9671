"""Generation and judging: settings of the wrong type are steerlens errors, seeded samples do not
depend on batching, and a judge's answer is a bool (issue "Nothing silent, nothing lost"; cases
found by benchmarks/reliability_sweep.py)."""

from __future__ import annotations

import pytest

import steerlens
from steerlens.errors import InputError, SpecError, SteerlensError
from steerlens.evaluation import StringMatchJudge, success_rate


@pytest.mark.parametrize("max_new_tokens", [0, -1, 2.5, "3", None, True])
def test_max_new_tokens_must_be_a_positive_int(tiny, max_new_tokens):
    with pytest.raises(SpecError, match="max_new_tokens must be an int >= 1"):
        steerlens.generate(tiny, "the cat", max_new_tokens=max_new_tokens)


def test_temperature_must_be_a_number(tiny):
    with pytest.raises(SpecError, match=r"temperature must be >= 0 .* got 'hot' \(str\)"):
        steerlens.generate(tiny, "the cat", max_new_tokens=2, temperature="hot")


def test_a_system_message_must_be_text(tiny):
    with pytest.raises(InputError, match=r"system must be a str .* got 123 \(int\)"):
        steerlens.generate(tiny, "the cat", max_new_tokens=2, chat=True, system=123)


def test_seeded_samples_depend_on_neither_batch_size_nor_batch_mates(tiny):
    prompts = ["hi", "yo", "the cat"]
    kw = {"temperature": 1.0, "seed": 3, "max_new_tokens": 6}
    by_size = [steerlens.generate(tiny, prompts, batch_size=b, **kw) for b in (1, 2, 3)]
    assert by_size[0] == by_size[1] == by_size[2]
    # A much longer mate changes every row's left padding, not its sample.
    mates = steerlens.generate(
        tiny, ["hi", "a much longer prompt than the others", "the cat"], **kw
    )
    assert (mates[0], mates[2]) == (by_size[0][0], by_size[0][2])


def test_a_judge_that_is_not_callable_is_refused_before_generating(tiny, monkeypatch):
    monkeypatch.setattr(steerlens.evaluation.judges, "generate", lambda *a, **k: pytest.fail())
    with pytest.raises(SpecError, match=r"judge must be a callable text -> bool.*got 'x'"):
        success_rate(tiny, ["a"], "x", max_new_tokens=2)  # type: ignore[arg-type]


def test_a_judge_must_answer_true_or_false(tiny):
    # bool("no") is True: a judge answering in words would count every reply as a success.
    with pytest.raises(SteerlensError, match="the judge returned 'no'"):
        success_rate(tiny, ["a"], lambda text: "no", max_new_tokens=2)
    assert success_rate(tiny, ["a", "b"], lambda text: 1, max_new_tokens=2).successes == 2
    assert success_rate(tiny, ["a"], StringMatchJudge(["zzzz"]), max_new_tokens=2).successes == 0
