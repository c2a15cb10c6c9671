"""beam_search against brute force: every two-token continuation of a prompt (265 x 265 on the
tiny model) scored by the plain forward pass, steered with ``steerlens.steer``.

Tolerance: tests/tolerances.py derives it. Beam search scores rows batched and with a KV cache,
brute force scores them in other batches, so float32 sums run in another order: a hypothesis of
n tokens may move by ``n * TINY32`` (``peaked`` scales every logit by 8, so its bound takes
L = 8 x 2). Two pairs closer than twice that may swap ranks on another machine (the full-width
tables hold pairs 2e-6 apart), so rankings are compared up to that (`assert_top_k`).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from tolerances import TINY32, TINY_LOGITS, TINY_VOCAB, check_logits, logprob_bound

from steerlens import runtime, steer
from steerlens.errors import SpecError
from steerlens.evaluation import beam_search
from steerlens.steering.steer import Steering
from steerlens.testing import tiny_model

LAYER = 1
PEAKED = logprob_bound(TINY_VOCAB, 8 * TINY_LOGITS)  # per token of the peaked model


def assert_top_k(res, joint, k, bound):
    """``res`` is brute force's top ``k`` up to rounding: each score within ``bound`` of brute
    force's, scores in order, and no pair left out that beats a kept one by more than twice
    ``bound`` (pairs closer than that may rank either way on another machine)."""
    vocab = math.isqrt(joint.numel())
    got = torch.tensor([h.logprob for h in res], dtype=torch.float64)
    want = torch.tensor([float(joint[a * vocab + b]) for a, b in (h.tokens for h in res)])
    assert len({h.tokens for h in res}) == len(res) == k
    assert float((got - want).abs().max()) <= bound
    assert got.tolist() == sorted(got.tolist(), reverse=True)
    assert float(want.min()) >= float(joint.topk(k).values[-1]) - 2 * bound


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
    assert_top_k(res, brute_force_two_tokens(tiny, "the cat", **dict(steering)), vocab, 2 * TINY32)
    assert res.provably_exact


@pytest.mark.parametrize("prompt", ["the cat", "a"])
def test_small_width_equals_brute_force(tiny, prompt):
    v = torch.randn(64) * 4
    res = beam_search(tiny, prompt, k=3, n_tokens=2, steering=Steering(v, layer=LAYER), chat=False)
    joint = brute_force_two_tokens(tiny, prompt, steering=Steering(v, layer=LAYER))
    assert_top_k(res, joint, 3, 2 * TINY32)


def test_sharp_model_is_provably_exact_and_equals_brute_force(peaked):
    with torch.no_grad():
        check_logits(peaked(torch.tensor([runtime.encode(peaked, "the cat")])), 8 * TINY_LOGITS)
    joint = brute_force_two_tokens(peaked, "the cat")
    for k in (1, 2, 4):
        res = beam_search(peaked, "the cat", k=k, n_tokens=2, chat=False)
        assert res.provably_exact
        assert_top_k(res, joint, k, 2 * PEAKED)


def test_exactness_flag_is_honest_when_beam_search_misses(tiny):
    """On this near-uniform model, width 5 misses a top-5 pair; the flag must say so."""
    res = beam_search(tiny, "the cat", k=5, n_tokens=2, chat=False)
    pairs, values = top_k(brute_force_two_tokens(tiny, "the cat"), 5, tiny.cfg.d_vocab)
    assert [h.tokens for h in res] != pairs  # beam search is a heuristic
    assert not res.provably_exact
    # Its scores are still exact, and here it does find the single best pair.
    assert res[0].tokens == pairs[0] and abs(res[0].logprob - values[0]) <= 2 * TINY32


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
        assert abs(h.logprob - want) <= 3 * TINY32  # three tokens (module docstring)
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
        for other in (b, g):  # three tokens each (module docstring)
            gaps = [abs(x.logprob - y.logprob) for x, y in zip(other, s, strict=True)]
            assert max(gaps) <= 3 * TINY32, gaps


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
