"""``Datapoint`` validation, ``Datapoint.from_message``, and the exact prompt/completion split."""

from __future__ import annotations

import warnings

import pytest

from steerlens import Datapoint, Positions
from steerlens import runtime as tl
from steerlens.errors import SpecError, SteerlensError
from steerlens.training.data import tokenize


def test_completions_and_defaults():
    dp = Datapoint("Q: 2+2?\nA:", promote=[" 4", " four"], suppress=[" 5"], chat=False)
    assert dp.completions == [(" 4", "promote"), (" four", "promote"), (" 5", "suppress")]
    assert dp.negate is False and dp.positions is None
    assert dp.targets() == [None, None, None]


def test_a_single_string_is_one_completion():
    dp = Datapoint("p", promote=" yes", suppress=" no", chat=False)
    assert dp.promote == (" yes",) and dp.suppress == (" no",)
    assert dp.completions == [(" yes", "promote"), (" no", "suppress")]


def test_targets_follow_completion_order():
    dp = Datapoint("p", promote=["a", "b"], suppress=["c"], promote_targets=[1.0, 2.0], chat=False)
    assert dp.targets() == [1.0, 2.0, None]
    dp = Datapoint("p", promote=["a"], suppress=["c", "d"], suppress_targets=[0.1, 0.2], chat=False)
    assert dp.targets() == [None, 0.1, 0.2]


@pytest.mark.parametrize("prompt", ["", "   ", "\n"])
def test_empty_prompt(prompt):
    with pytest.raises(SteerlensError, match="prompt is empty"):
        Datapoint(prompt, promote=["x"], chat=False)


def test_no_completions():
    with pytest.raises(SteerlensError, match="has no promote and no suppress"):
        Datapoint("a prompt", chat=False)
    with pytest.raises(SteerlensError, match="no promote and no suppress"):
        Datapoint("a prompt", promote=[], suppress=(), chat=False)


@pytest.mark.parametrize(
    ("kind", "kw"), [("promote", {"promote": ["ok", ""]}), ("suppress", {"suppress": [""]})]
)
def test_empty_completion(kind, kw):
    with pytest.raises(SteerlensError, match=f"a {kind} completion is empty"):
        Datapoint("a prompt", **kw, chat=False)


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"promote": ["a", "b"], "promote_targets": [1.0]}, "promote_targets has 1 values for 2"),
        (
            {"suppress": ["a"], "suppress_targets": [1.0, 2.0]},
            "suppress_targets has 2 values for 1",
        ),
        ({"promote": ["a"], "suppress_targets": [1.0]}, "suppress_targets has 1 values for 0"),
    ],
)
def test_targets_length_mismatch(kw, msg):
    with pytest.raises(SteerlensError, match=msg):
        Datapoint("a prompt", **kw, chat=False)


def test_bad_positions_are_refused_early():
    with pytest.raises(SpecError, match="unknown position spec"):
        Datapoint("a prompt", promote=["x"], positions="middle", chat=False)
    assert Datapoint("p", promote=["x"], positions="last:2", chat=False).positions == "last:2"


def test_chat_formatting(tiny):
    dp = Datapoint.from_message(tiny, "Hi there", promote=["Hello!"])
    assert dp.prompt == "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
    assert dp.promote == ("Hello!",)
    sys_dp = Datapoint.from_message(tiny, "Hi", system="Be brief.", suppress=["No"], negate=True)
    assert sys_dp.prompt == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert sys_dp.negate and sys_dp.suppress == ("No",)


def test_chat_prompt_tokens_keep_special_tokens_and_no_extra_bos(tiny):
    dp = Datapoint.from_message(tiny, "Hi", promote=["Hello"])
    (tdp,) = tokenize(tiny, dp)
    tok = tiny.tokenizer
    im_start = tok.convert_tokens_to_ids("<|im_start|>")
    assert tdp.prompt_tokens[0] == im_start  # the template's own start token, once
    assert tdp.prompt_tokens.count(im_start) == 2
    assert tok.decode(tdp.prompt_tokens) == dp.prompt


def test_tokenize_split_is_exact(tiny):
    dp = Datapoint("the cat sat", promote=[" on the mat", " the"], suppress=[" xyz"], chat=False)
    (tdp,) = tokenize(tiny, dp)
    assert tdp.prompt_tokens == tl.encode(tiny, dp.prompt)
    assert [c.kind for c in tdp.completions] == ["promote", "promote", "suppress"]
    for comp, (text, _) in zip(tdp.completions, dp.completions, strict=True):
        assert comp.text == text
        assert not comp.boundary_merged
        assert tdp.prompt_tokens + comp.tokens == tl.encode(tiny, dp.prompt + text)
        assert tiny.tokenizer.decode(comp.tokens) == text
    # " the" is a single token of the tiny tokenizer (its merges)
    assert len(tdp.completions[1].tokens) == 1


def test_tokenize_carries_targets_and_positions(tiny):
    dp = Datapoint(
        "ab", promote=["c"], suppress=["d"], promote_targets=[0.5], positions="prompt", chat=False
    )
    (tdp,) = tokenize(tiny, dp, default_positions="last:1")
    assert [c.target for c in tdp.completions] == [0.5, None]
    assert tdp.positions == Positions.prompt()  # the datapoint's own setting wins
    (tdp2,) = tokenize(tiny, Datapoint("ab", promote=["c"], chat=False), default_positions="last:1")
    assert tdp2.positions == Positions.last(1)


def test_boundary_merge_warns_and_scores_the_completion_alone(tiny):
    prompt, completion = "at t", "he end"  # "Ġt" + "he" merge into " the" when joint
    joint = tl.encode(tiny, prompt + completion)
    prompt_tokens = tl.encode(tiny, prompt)
    assert joint[: len(prompt_tokens)] != prompt_tokens  # the merge really happens
    with pytest.warns(UserWarning, match="merges with the end of its prompt"):
        (tdp,) = tokenize(tiny, Datapoint(prompt, promote=[completion], chat=False))
    (comp,) = tdp.completions
    assert comp.boundary_merged
    assert tdp.prompt_tokens == prompt_tokens
    assert comp.tokens == tl.encode(tiny, completion)
    with pytest.warns(UserWarning, match="merges"):
        assert tl.completion_tokens(tiny, prompt_tokens, prompt, completion) == (comp.tokens, True)


def test_no_warning_without_merge(tiny):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (tdp,) = tokenize(
            tiny, Datapoint("at", promote=["he end"], chat=False)
        )  # "t"+"he": no merge rule
    assert not tdp.completions[0].boundary_merged


def test_non_string_completion():
    with pytest.raises(SteerlensError, match="completion is empty"):
        Datapoint("a prompt", promote=[None], chat=False)  # type: ignore[list-item]


def test_empty_completion_is_refused_by_tokenize_at_the_latest(tiny):
    with pytest.raises(SteerlensError, match=r"completion is empty|tokenises to nothing"):
        tokenize(tiny, Datapoint("a prompt", promote=["ok", ""], chat=False))


def test_tokenize_errors(tiny, monkeypatch):
    with pytest.raises(SteerlensError, match="no datapoints given"):
        tokenize(tiny, [])
    with pytest.raises(SteerlensError, match=r"expected steerlens\.Datapoint, got str"):
        tokenize(tiny, ["the cat"])
    real_encode = tl.encode

    def fake(m, text, **kw):
        return [] if text.endswith("!") else real_encode(m, text, **kw)

    monkeypatch.setattr(tl, "encode", fake)
    monkeypatch.setattr("steerlens.runtime.tokens.encode", fake)
    with pytest.raises(SteerlensError, match="suppress completion 'oops!' tokenises to nothing"):
        tokenize(tiny, Datapoint("the cat", suppress=["oops!"], chat=False))
    with pytest.raises(SteerlensError, match="tokenises to nothing"):
        tokenize(tiny, Datapoint("hello!", promote=["x"], chat=False))
