"""beam_search against brute force: every two-token continuation of a prompt (265 x 265 on the
tiny model) scored by the plain forward pass, steered with ``steerlens.steer``."""

from __future__ import annotations

import json

import pytest
import torch

from steerlens import runtime, steer
from steerlens.errors import SpecError
from steerlens.evaluation import beam_search
from steerlens.steering.steer import Steering
from steerlens.testing import tiny_model

LAYER = 1


def brute_force_two_tokens(model, prompt, **steering):
    """``[vocab * vocab]`` log-probs of every continuation ``(a, b)``, at index ``a * V + b``."""
    ids = runtime.encode(model, prompt)
    vocab = model.cfg.d_vocab
    with torch.no_grad(), steer(model, steering.get("steering")):
        first = model(torch.tensor([ids]))[0, -1].double().log_softmax(-1)
        rows = torch.cat([torch.tensor([ids]).expand(vocab, -1), torch.arange(vocab)[:, None]], 1)
        second = model(rows)[:, -1].double().log_softmax(-1)
    return (first[:, None] + second).flatten()


def top_k(joint, k, vocab):
    top = joint.topk(k)
    pairs = [(int(i) // vocab, int(i) % vocab) for i in top.indices]
    return pairs, top.values.tolist()


@pytest.fixture(scope="module")
def peaked():
    """A tiny model with sharp next-token distributions (final norm scaled up)."""
    model = tiny_model(seed=1)
    with torch.no_grad():
        model.original_model.model.norm.weight.mul_(8.0)
    return model


@pytest.mark.parametrize("steered", [False, True])
def test_full_width_equals_brute_force(tiny, steered):
    """With k = V nothing is pruned after the first token, so n=2 beam search is exact."""
    vocab = tiny.cfg.d_vocab
    steering = {"steering": Steering(torch.randn(64) * 4, layer=LAYER)} if steered else {}
    res = beam_search(tiny, "the cat", k=vocab, n_tokens=2, **steering, chat=False)
    pairs, values = top_k(brute_force_two_tokens(tiny, "the cat", **dict(steering)), vocab, vocab)
    assert [h.tokens for h in res] == pairs
    torch.testing.assert_close(
        torch.tensor([h.logprob for h in res]),
        torch.tensor(values, dtype=torch.float32),
        rtol=1e-5,
        atol=1e-5,
    )
    assert res.provably_exact


@pytest.mark.parametrize("prompt", ["the cat", "a"])
def test_small_width_equals_brute_force(tiny, prompt):
    v = torch.randn(64) * 4
    res = beam_search(tiny, prompt, k=3, n_tokens=2, steering=Steering(v, layer=LAYER), chat=False)
    pairs, values = top_k(
        brute_force_two_tokens(tiny, prompt, steering=Steering(v, layer=LAYER)), 3, 265
    )
    assert [h.tokens for h in res] == pairs
    assert [h.logprob for h in res] == pytest.approx(values, rel=1e-5)


def test_sharp_model_is_provably_exact_and_equals_brute_force(peaked):
    vocab = peaked.cfg.d_vocab
    for k in (1, 2, 4):
        res = beam_search(peaked, "the cat", k=k, n_tokens=2, chat=False)
        pairs, values = top_k(brute_force_two_tokens(peaked, "the cat"), k, vocab)
        assert res.provably_exact
        assert [h.tokens for h in res] == pairs
        assert [h.logprob for h in res] == pytest.approx(values, rel=1e-5, abs=1e-5)


def test_exactness_flag_is_honest_when_beam_search_misses(tiny):
    """On this near-uniform model, width 5 misses a top-5 pair; the flag must say so."""
    res = beam_search(tiny, "the cat", k=5, n_tokens=2, chat=False)
    pairs, values = top_k(brute_force_two_tokens(tiny, "the cat"), 5, tiny.cfg.d_vocab)
    assert [h.tokens for h in res] != pairs  # beam search is a heuristic
    assert not res.provably_exact
    # Its scores are still exact, and here it does find the single best pair.
    assert res[0].logprob == pytest.approx(values[0], rel=1e-5)


def test_three_token_scores_are_exact_log_probabilities(tiny):
    v = torch.randn(64) * 3
    res = beam_search(
        tiny,
        "the cat",
        k=4,
        n_tokens=3,
        steering=Steering(v, layer=LAYER),
        coldness=0.7,
        chat=False,
    )
    ids = runtime.encode(tiny, "the cat")
    for h in res:
        tokens = torch.tensor([ids + list(h.tokens)])
        with torch.no_grad(), steer(tiny, Steering(v, layer=LAYER)):
            logp = (0.7 * tiny(tokens)[0].double()).log_softmax(-1)
        want = sum(float(logp[len(ids) - 1 + i, t]) for i, t in enumerate(h.tokens))
        assert h.logprob == pytest.approx(want, rel=1e-5)
        assert h.text == runtime.decode(tiny, list(h.tokens), skip_special_tokens=False)
    assert [h.logprob for h in res] == sorted((h.logprob for h in res), reverse=True)


def test_prompt_batch_equals_one_by_one(tiny, plain):
    prompts = ["a", "the longer prompt here", "in"]
    v = torch.randn(64) * 3
    kwargs = {"k": 3, "n_tokens": 3, "steering": Steering(v, layer=0, positions="prompt")}
    batched = beam_search(tiny, prompts, batch_size=2, **kwargs, chat=False)
    single = [beam_search(tiny, p, **kwargs, chat=False) for p in prompts]
    generic = beam_search(
        plain, prompts, **kwargs, chat=False
    )  # no KV cache: recomputed every step
    for b, s, g in zip(batched, single, generic, strict=True):
        assert [h.tokens for h in b] == [h.tokens for h in s] == [h.tokens for h in g]
        assert [h.logprob for h in b] == pytest.approx([h.logprob for h in s], rel=1e-5)
        assert [h.logprob for h in g] == pytest.approx([h.logprob for h in s], rel=1e-5)


def test_result_is_a_sequence_with_a_table(tiny):
    res = beam_search(tiny, "the cat", k=2, n_tokens=2, unit="bits", chat=False)
    assert len(res) == 2 and list(res)[1] is res[1]
    assert "rank" in repr(res) and "log-prob (bits)" in repr(res)
    data = json.loads(json.dumps(res.to_dict()))
    assert data["hypotheses"][0]["tokens"] == list(res[0].tokens)


def test_bad_widths(tiny):
    with pytest.raises(SpecError, match=r"beam width k=266 is larger than the vocabulary \(265"):
        beam_search(tiny, "a", k=266, n_tokens=2, chat=False)
    with pytest.raises(SpecError, match="k must be an int >= 1"):
        beam_search(tiny, "a", k=0, n_tokens=2, chat=False)
    with pytest.raises(SpecError, match="n_tokens must be an int >= 1"):
        beam_search(tiny, "a", k=2, n_tokens=0, chat=False)
