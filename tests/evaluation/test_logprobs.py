"""completion_logprobs against a hand computation: the model's plain forward pass on
``prompt + completion`` (steered with ``steerlens.steer`` or a hook written here) and
``log_softmax(c * logits)`` in float64.

Tolerance: tests/tolerances.py derives it. The tool batches and pads rows, the hand computation
runs one row, so float32 sums run in another order: each token's log-probability within
``TINY32`` (logits below 2, coldness at most 1), a total of k tokens within k times that.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from tolerances import TINY32, U32

from steerlens import runtime, steer
from steerlens.errors import SpecError, SteerlensError
from steerlens.evaluation import ContextWindowError, completion_logprobs
from steerlens.steering.steer import Steering

PROMPTS = ["the cat sat on", "a dog"]
COMPLETIONS = [" the mat", " in", "xyz!"]
LAYER = 1


def hand_logprobs(model, prompt, completion, coldness=1.0, **steering):
    """Per-token float64 log-probs of ``completion`` after ``prompt`` from one plain forward."""
    p_ids = runtime.encode(model, prompt)
    c_ids = runtime.encode(model, prompt + completion)[len(p_ids) :]
    tokens = torch.tensor([p_ids + c_ids])
    with (
        torch.no_grad(),
        steer(model, Steering(steering.pop("steering"), **steering) if steering else None),
    ):
        logits = model(tokens)[0].double()
    logp = (coldness * logits).log_softmax(-1)
    return torch.stack([logp[len(p_ids) - 1 + k, t] for k, t in enumerate(c_ids)])


def assert_matches_hand(model, res, coldness=1.0, **steering):
    for i, p in enumerate(PROMPTS):
        for j, c in enumerate(COMPLETIONS):
            want = hand_logprobs(model, p, c, coldness, **dict(steering))
            got = res.token_logprobs[i][j].double()
            torch.testing.assert_close(got, want, rtol=0, atol=TINY32)
            assert abs(res.total(i, j) - float(want.sum())) <= len(want) * TINY32


def test_unsteered_equals_hand_computation(tiny):
    res = completion_logprobs(tiny, PROMPTS, COMPLETIONS, coldness=0.7, chat=False)
    assert res.totals.shape == (2, 3)
    assert res.steering == "unsteered"
    assert_matches_hand(tiny, res, coldness=0.7)


def test_steered_equals_hand_computation(tiny):
    v = torch.randn(64) * 4
    res = completion_logprobs(
        tiny, PROMPTS, COMPLETIONS, steering=Steering(v, layer=LAYER), chat=False
    )
    assert_matches_hand(tiny, res, steering=v, layer=LAYER)
    unsteered = completion_logprobs(tiny, PROMPTS, COMPLETIONS, chat=False)
    assert not torch.allclose(res.totals, unsteered.totals)
    assert "Add(strength=1) at layer 1" in res.steering


def test_prompt_positions_steer_the_prompt_only(tiny):
    """A hook written here adds v at the prompt's positions only."""
    v = torch.randn(64) * 4
    prompt, completion = PROMPTS[0], COMPLETIONS[0]
    p_ids = runtime.encode(tiny, prompt)
    c_ids = runtime.encode(tiny, prompt + completion)[len(p_ids) :]

    def hook(x, *, hook):
        x = x.clone()
        x[:, : len(p_ids)] += v
        return x

    with torch.no_grad(), tiny.hooks(fwd_hooks=[(f"blocks.{LAYER}.hook_resid_pre", hook)]):
        logits = tiny(torch.tensor([p_ids + c_ids]))[0].double().log_softmax(-1)
    want = sum(float(logits[len(p_ids) - 1 + k, t]) for k, t in enumerate(c_ids))
    res = completion_logprobs(
        tiny,
        [prompt, "a much longer prompt here"],
        completion,
        steering=Steering(v, layer=LAYER, positions="prompt"),
        chat=False,
    )
    assert abs(res.total(0, 0) - want) <= len(c_ids) * TINY32


def test_units_and_means(tiny):
    nats = completion_logprobs(tiny, PROMPTS, COMPLETIONS, chat=False)
    bits = completion_logprobs(tiny, PROMPTS, COMPLETIONS, unit="bits", chat=False)
    hartleys = completion_logprobs(tiny, PROMPTS, COMPLETIONS, unit="hartleys", chat=False)
    lengths = torch.tensor([[len(t) for t in row] for row in nats.tokens], dtype=torch.float32)
    # The same log-probabilities, converted token by token and then added (k roundings and a
    # sum of k terms of one sign) or added then converted: within 2 (k + 1) u of each other.
    rtol = 2 * (int(lengths.max()) + 1) * U32
    torch.testing.assert_close(bits.totals, nats.totals / math.log(2), rtol=rtol, atol=0)
    torch.testing.assert_close(hartleys.totals, nats.totals / math.log(10), rtol=rtol, atol=0)
    assert torch.equal(nats.means, nats.totals / lengths)  # the same division


def test_batch_size_and_plain_model_do_not_change_results(tiny, plain):
    v = torch.randn(64) * 3
    big = completion_logprobs(
        tiny, PROMPTS, COMPLETIONS, steering=Steering(v, layer=0, positions="last:2"), chat=False
    )
    one = completion_logprobs(
        tiny,
        PROMPTS,
        COMPLETIONS,
        steering=Steering(v, layer=0, positions="last:2"),
        batch_size=1,
        chat=False,
    )
    generic = completion_logprobs(
        plain, PROMPTS, COMPLETIONS, steering=Steering(v, layer=0, positions="last:2"), chat=False
    )
    bounds = torch.tensor([[len(t) * TINY32 for t in row] for row in big.tokens])
    assert bool(((one.totals - big.totals).abs() <= bounds).all())
    assert bool(((generic.totals - big.totals).abs() <= bounds).all())


def test_chat_formats_the_prompt(tiny):
    chat = completion_logprobs(tiny, "Hi", "A", chat=True)
    written = completion_logprobs(tiny, runtime.chat_prompt(tiny, "Hi"), "A", chat=False)
    assert chat.total() == written.total()  # the same tokens, the same forward pass
    assert chat.prompts == ("Hi",) and chat.chat


def test_boundary_merge_scores_the_completion_alone_and_warns(tiny):
    # " t" + "he" would tokenise jointly as " the"; the completion's own tokens are scored.
    with pytest.warns(UserWarning, match="merges with the end of prompt 0"):
        res = completion_logprobs(tiny, "the cat t", "he", chat=False)
    assert res.boundary_merged == ((True,),)
    assert list(res.tokens[0][0]) == runtime.encode(tiny, "he")
    p_ids = runtime.encode(tiny, "the cat t")
    with torch.no_grad():
        logp = tiny(torch.tensor([p_ids + list(res.tokens[0][0])]))[0].double().log_softmax(-1)
    want = sum(float(logp[len(p_ids) - 1 + k, t]) for k, t in enumerate(res.tokens[0][0]))
    assert abs(res.total() - want) <= len(res.tokens[0][0]) * TINY32


def test_repr_and_to_dict(tiny):
    res = completion_logprobs(tiny, PROMPTS, COMPLETIONS, unit="bits", chat=False)
    text = repr(res)
    assert "CompletionLogprobs (bits" in text and "log-prob (bits)" in text
    assert len(text.splitlines()) == 2 + len(PROMPTS) * len(COMPLETIONS)
    data = json.loads(json.dumps(res.to_dict()))
    assert data["unit"] == "bits"
    assert data["totals"][1][2] == res.total(1, 2)  # JSON keeps a float exactly


def test_bad_input(tiny):
    with pytest.raises(SteerlensError, match="completion list is empty"):
        completion_logprobs(tiny, "a", [], chat=False)
    with pytest.raises(SteerlensError, match="completion 1 is ''"):
        completion_logprobs(tiny, "a", [" b", ""], chat=False)
    with pytest.raises(SteerlensError, match="prompt list is empty"):
        completion_logprobs(tiny, [], " b", chat=False)
    with pytest.raises(SpecError, match="unknown loss unit 'decibans'"):
        completion_logprobs(tiny, "a", " b", unit="decibans", chat=False)
    with pytest.raises(SpecError, match="coldness must be > 0"):
        completion_logprobs(tiny, "a", " b", coldness=0.0, chat=False)
    with pytest.raises(SpecError, match="batch_size"):
        completion_logprobs(tiny, "a", " b", batch_size=0, chat=False)
    with pytest.raises(ContextWindowError, match=r"n_ctx = 256"):
        completion_logprobs(tiny, "a", " b" * 300, chat=False)
