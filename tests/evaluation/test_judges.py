"""Judges, the Wilson interval and success_rate; plus one real-model run: an optimized "answer in
French" vector raises the rate at which a string judge finds French words."""

from __future__ import annotations

import json

import pytest
import torch

import steerlens
from steerlens import runtime
from steerlens.errors import SteerlensError
from steerlens.evaluation import (
    AnswerTokenError,
    ContextWindowError,
    ModelJudge,
    RateResult,
    StringMatchJudge,
    TemplateError,
    success_rate,
    wilson_interval,
)
from steerlens.steering.steer import Steering


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [
        (0, 10, 0.0, 0.2775),
        (5, 10, 0.2366, 0.7634),
        (10, 10, 0.7225, 1.0),
        (1, 20, 0.0089, 0.2361),
        (81, 263, 0.2553, 0.3662),
    ],
)
def test_wilson_interval_known_values(k, n, low, high):
    got = wilson_interval(k, n)
    assert got == pytest.approx((low, high), abs=5e-5)


def test_wilson_interval_properties():
    lo, hi = wilson_interval(3, 17)
    assert (1 - hi, 1 - lo) == pytest.approx(wilson_interval(14, 17))  # symmetric
    narrow = wilson_interval(3, 17, z=1.0)
    assert lo < narrow[0] < narrow[1] < hi
    assert wilson_interval(0, 10) == (0.0, pytest.approx(0.2775, abs=5e-5))
    with pytest.raises(SteerlensError, match="at least one trial"):
        wilson_interval(0, 0)
    with pytest.raises(SteerlensError, match="between 0 and n=3"):
        wilson_interval(4, 3)


def test_rate_result_from_outcomes():
    res = RateResult.from_outcomes([True, False, True], prompts=["a", "b", "c"], texts="xyz")
    assert (res.successes, res.n, res.rate) == (2, 3, pytest.approx(2 / 3))
    assert (res.ci_low, res.ci_high) == wilson_interval(2, 3)
    assert "2/3 = 66.7%, 95% CI" in repr(res) and "success" in repr(res)
    assert json.loads(json.dumps(res.to_dict()))["outcomes"] == [True, False, True]


def test_string_match_judge():
    judge = StringMatchJudge([" est ", "Pizza"])
    assert judge("Elle EST belle") and judge("I like PIZZA")
    assert judge("the best one") is False  # " est " needs its spaces
    assert not StringMatchJudge(["Pizza"], case_insensitive=False)("I like pizza")
    assert StringMatchJudge("pizza")("Pizza!")  # a single phrase may be a plain string
    assert judge.judge_all(["la pizza", "nothing"]) == [True, False]
    with pytest.raises(SteerlensError, match="non-empty list of non-empty phrases"):
        StringMatchJudge([])
    with pytest.raises(SteerlensError, match="non-empty list of non-empty phrases"):
        StringMatchJudge(["ok", ""])


def test_model_judge_template_must_contain_text(tiny):
    with pytest.raises(TemplateError, match=r"has no \{text\} placeholder"):
        ModelJudge(tiny, "Is this French?", yes_no=("Y", "N"), chat=True)


def test_model_judge_refuses_texts_longer_than_the_context_window(tiny):
    judge = ModelJudge(tiny, "French? {text}", yes_no=("Y", "N"), chat=True)
    with pytest.raises(ContextWindowError, match="judge prompt for text 1"):
        judge.judge_all(["ok", "la " * 300])


def test_model_judge_needs_single_token_answers(tiny):
    # The tiny tokenizer has no "Yes" token: the error shows how both pairs tokenise.
    with pytest.raises(AnswerTokenError, match=r"neither 'Yes'/'No' nor ' Yes'/' No'.*3 tokens"):
        ModelJudge(tiny, "Is this French? {text}", chat=True)
    with pytest.raises(AnswerTokenError, match="'Yes' is not a single token"):
        ModelJudge(tiny, "Is this French? {text}", yes_no=("Yes", "N"), chat=True)


@pytest.mark.parametrize("chat", [True, False])
def test_model_judge_compares_the_two_answer_logits(tiny, chat):
    template = 'Text: {text}\nIs it {"json": "braces"} French? Answer (Y/N):'
    judge = ModelJudge(tiny, template, chat=chat, yes_no=("Y", "N"), batch_size=2)
    texts = ["la pizza est bonne", "the pizza is good", "zz", "a b c d e f g"]
    y, n = (runtime.encode(tiny, s)[0] for s in ("Y", "N"))
    want = []
    for t in texts:
        prompt = template.replace("{text}", t)
        prompt = runtime.chat_prompt(tiny, prompt) if chat else prompt
        with torch.no_grad():
            logits = tiny(torch.tensor([runtime.encode(tiny, prompt)]))[0, -1]
        want.append(float(logits[y] - logits[n]))
    torch.testing.assert_close(judge.margins(texts), torch.tensor(want), rtol=1e-4, atol=1e-5)
    assert judge.judge_all(texts) == [m > 0 for m in want]
    assert [judge(t) for t in texts] == [m > 0 for m in want]
    assert "ModelJudge(model='steerlens/tiny-llama'" in repr(judge)


def test_success_rate_generates_then_judges(tiny):
    prompts = ["Hi", "Tell me a story", "What is 2+2?"]
    v = torch.randn(64) * 4
    judge = StringMatchJudge(["e"])
    res = success_rate(
        tiny, prompts, judge, steering=Steering(v, layer=1), max_new_tokens=6, chat=True
    )
    texts = steerlens.generate(tiny, prompts, Steering(v, layer=1), max_new_tokens=6, chat=True)
    assert res.texts == tuple(texts) and res.prompts == tuple(prompts)
    assert res.outcomes == tuple(judge(t) for t in texts)
    assert (res.successes, res.n) == (sum(judge(t) for t in texts), 3)
    assert (res.ci_low, res.ci_high) == wilson_interval(res.successes, 3)


def test_success_rate_model_judge_runs_unsteered(tiny):
    """The judge runs after the steering is removed, even when it is the same model."""
    judge = ModelJudge(tiny, "Is it French? {text}", yes_no=("Y", "N"), chat=True)
    res = success_rate(
        tiny,
        ["Hi", "Bonjour"],
        judge,
        steering=Steering(torch.randn(64) * 50, layer=0),
        max_new_tokens=4,
        chat=True,
    )
    assert res.outcomes == tuple(judge.judge_all(list(res.texts)))


def test_success_rate_accepts_any_callable(tiny):
    res = success_rate(tiny, "Hi", lambda text: True, max_new_tokens=2, chat=True)
    assert (res.successes, res.n, res.ci_high) == (1, 1, 1.0)


FRENCH = StringMatchJudge([" est ", " la ", " le ", " je ", " de la "])
HELD_OUT = [
    "What is your favorite season?",
    "Describe your ideal weekend.",
    "What do you like to drink in the morning?",
    "Tell me about your hometown.",
    "What is your favorite animal?",
]


@pytest.mark.slow
def test_optimized_vector_raises_the_french_rate(smol):
    dp = steerlens.Datapoint.from_message(
        smol,
        "What is your favorite food?",
        promote=["Ma nourriture préférée est la pizza. J'adore"],
    )
    opt = steerlens.optimize_vector(
        smol, dp, 8, lr=0.1, max_steps=30, constraints=(steerlens.NormCap(40.0),)
    )
    kwargs = {"max_new_tokens": 40, "batch_size": 5, "chat": True}
    base = success_rate(smol, HELD_OUT, FRENCH, **kwargs)
    steered = success_rate(smol, HELD_OUT, FRENCH, steering=opt.vector, **kwargs)
    print(base, steered, sep="\n")
    assert steered.successes >= base.successes + 3
    assert steered.rate > base.ci_high


def test_success_rate_passes_generate_keywords_and_refuses_others(tiny):
    import inspect

    from steerlens.steering.generate import GENERATE_OPTIONS, generate

    keyword_only = [
        name
        for name, p in inspect.signature(generate).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    assert list(GENERATE_OPTIONS) == keyword_only  # the list cannot drift from generate
    with pytest.raises(SteerlensError, match=r"unknown keyword\(s\) 'max_tokens'.*max_new_tokens"):
        success_rate(tiny, ["Hi"], StringMatchJudge(["x"]), max_tokens=3, chat=True)
