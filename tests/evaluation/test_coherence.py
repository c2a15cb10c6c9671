"""Coherence metrics: hand-computed values on the tiny model, planted repetition, and the
side-effect KL of a vector that does nothing."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from tolerances import TINY32, kl_bound

from steerlens import Steering, runtime
from steerlens.errors import InputError, SpecError
from steerlens.evaluation import (
    MetricResult,
    coherence,
    distinct_n,
    loop_rate,
    reply_nll,
    side_effect_kl,
)


def test_reply_nll_is_the_mean_negative_log_probability_per_token(tiny):
    prompts, replies = ["the cat", "a dog ran"], [" sat on the mat", " far"]
    res = reply_nll(tiny, prompts, replies, chat=False)
    for i, (p, r) in enumerate(zip(prompts, replies, strict=True)):
        p_ids = runtime.encode(tiny, p)
        r_ids = runtime.encode(tiny, p + r)[len(p_ids) :]
        with torch.no_grad():
            logits = tiny(torch.tensor([p_ids + r_ids]))[0].double()
        lp = logits.log_softmax(-1)[torch.arange(len(p_ids) - 1, len(p_ids) + len(r_ids) - 1)]
        expected = -lp[torch.arange(len(r_ids)), torch.tensor(r_ids)].mean()
        # batched against alone: a mean of log-probabilities keeps their bound (tolerances.py)
        assert res.values[i] == pytest.approx(float(expected), abs=TINY32)
    assert res.unit == "nats/token" and res.mean == np.mean(res.values)  # the same numpy mean


def test_empty_replies_are_skipped_and_counted(tiny):
    res = reply_nll(tiny, ["the cat", "a dog"], [" sat", ""], chat=False)
    assert len(res.values) == 1 and res.skipped == 1
    with pytest.raises(InputError, match="no item has a value"):
        reply_nll(tiny, ["the cat"], [""], chat=False)
    with pytest.raises(InputError, match="one reply per prompt"):
        reply_nll(tiny, ["the cat", "a dog"], [" sat"], chat=False)


def test_distinct_n_and_loops_on_planted_repetition(tiny):
    looping, varied = "la la la la la la la la", "quick brown fox"
    d = distinct_n(tiny, [looping, varied], n=2)
    grams = runtime.encode(tiny, looping)
    pairs = list(itertools.pairwise(grams))
    assert d.values[0] == pytest.approx(len(set(pairs)) / len(pairs))
    assert d.values[0] < d.values[1]
    loops = loop_rate(tiny, [looping, varied, ""], n=2, repeats=3)
    assert loops.outcomes == (True, False, False)
    with pytest.raises(SpecError, match="n must be an int >= 1"):
        distinct_n(tiny, [varied], n=0)


def test_side_effect_kl_is_zero_for_a_null_vector_and_the_hand_kl_otherwise(tiny):
    prompts = ["the cat", "in the end"]
    zero = side_effect_kl(tiny, prompts, Steering(torch.zeros(64), layer=1), chat=False)
    assert zero.values == (0.0, 0.0)
    v = torch.randn(64, generator=torch.Generator().manual_seed(0)) * 3
    res = side_effect_kl(tiny, prompts, Steering(v, layer=1), chat=False)
    # batched in float32 against one row at a time in float64 (`kl_mean_bound`)
    bound = kl_bound(tiny, prompts, Steering(v, layer=1))
    for i, p in enumerate(prompts):
        ids = torch.tensor([runtime.encode(tiny, p)])
        with torch.no_grad():
            base = tiny(ids)[0, -1].double().log_softmax(-1)
            from steerlens import steer

            with steer(tiny, Steering(v, layer=1)):
                steered = tiny(ids)[0, -1].double().log_softmax(-1)
        expected = float((base.exp() * (base - steered)).sum())
        assert res.values[i] == pytest.approx(expected, abs=bound)
    assert res.mean > 0 and res.unit == "nats"


def test_bootstrap_interval_contains_the_mean_and_is_reproducible():
    r1 = MetricResult.of("x", "nats", [0.1, 0.5, 0.9, 0.4])
    r2 = MetricResult.of("x", "nats", [0.1, 0.5, 0.9, 0.4])
    assert r1.ci_low <= r1.mean <= r1.ci_high
    assert (r1.ci_low, r1.ci_high) == (r2.ci_low, r2.ci_high)
    one = MetricResult.of("x", "nats", [2.0])
    assert one.ci_low == one.ci_high == 2.0


def test_coherence_report(tiny):
    v = torch.randn(64, generator=torch.Generator().manual_seed(1)) * 8
    rep = coherence(
        tiny,
        ["the cat", "a dog"],
        Steering(v, layer=1),
        neutral_prompts=["in"],
        max_new_tokens=8,
        chat=False,
    )
    assert len(rep.steered) == len(rep.unsteered) == 2
    assert rep.side_effect is not None and rep.side_effect.mean > 0
    assert rep.nll_ratio == pytest.approx(rep.nll["steered"].mean / rep.nll["unsteered"].mean)
    data = json.loads(json.dumps(rep.to_dict()))
    assert set(data["nll"]) == {"steered", "unsteered"}
    assert "NLL ratio" in repr(rep)
