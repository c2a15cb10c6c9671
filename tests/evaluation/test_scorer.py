"""`PromptScorer` gives `next_token_logprobs`'s values, on the fast path and the hooked one.

Tolerance: the tiny model runs in float64; the packed engine computes every step in float64,
while the Bridge (behind `next_token_logprobs`) rounds each attention softmax in float32. So
the two differ by the Bridge's rounding alone, which tests/tolerances.py bounds by
``logprob_bound(K)`` for K keys per attention row; here K <= 32 (the longest prompt), about 8e-6.
A real error (a steering at the wrong tokens or layer) moves log-probabilities by more than
1e-3, checked below.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from tolerances import (
    FAMILY_GAIN,
    REAL,
    TINY_LOGITS,
    TINY_VOCAB,
    U64,
    kl_gap,
    logprob_bound,
)

from steerlens import Steering, runtime, steer
from steerlens.errors import SpecError
from steerlens.evaluation import PromptScorer, next_token_logprobs, propensities, rollout_kl
from steerlens.steering.conditional import Condition
from steerlens.steering.interventions import Clamp
from steerlens.steering.steer import Conditional
from steerlens.testing import tiny_family_model, tiny_model
from steerlens.training.engines import HookedEngine, NoAdapterNotice, PackedEngine

KEYS = 32
DELTA = logprob_bound(KEYS)
PROMPTS = ["the cat sat on the mat", "a dog", "the quick brown fox jumps over"]
IDS = [0, 5, 77]


@pytest.fixture(scope="module")
def tiny64():
    model = tiny_model().to(torch.float64)
    assert max(len(runtime.encode(model, p)) for p in PROMPTS) <= KEYS
    return model


def _plans(d_model: int, dtype: torch.dtype = torch.float64):
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(3, d_model, generator=gen, dtype=torch.float64).to(dtype)
    return [
        None,
        Steering(v[0], layer=1, strength=3.0, positions="last:2"),
        [
            Steering(v[1], layer=0, strength=-2.0, positions="last:2"),
            Steering(v[2], layer=1, positions="last:2"),
        ],
        Steering(Clamp(v[2]), layer=1, strength=2.0, positions="last:2"),
    ]


@pytest.mark.parametrize("copies", [1, 3])
def test_the_scorer_equals_next_token_logprobs(tiny64, copies):
    plans = _plans(64)
    scorer = PromptScorer(tiny64, PROMPTS, "last:2", [0, 1], copies=copies)
    assert isinstance(scorer.engines[0], PackedEngine) and scorer.engines[0].kv  # frozen prefixes
    fast = scorer.next_token_logprobs(plans, IDS)
    slow = next_token_logprobs(tiny64, PROMPTS, plans, IDS)
    torch.testing.assert_close(fast, slow, atol=DELTA, rtol=0)
    for s in range(1, len(plans)):
        assert (fast[s] - fast[0]).abs().max() > REAL, f"steering {s} changes nothing"


@pytest.mark.parametrize("batch_size", [1, 2, 32])
def test_a_subset_of_prompts_comes_back_in_the_order_asked(tiny64, batch_size):
    plans = _plans(64)[:2]
    scorer = PromptScorer(tiny64, PROMPTS, "last:2", [1], batch_size=batch_size)
    assert len(scorer.engines) == -(-len(PROMPTS) // batch_size)
    every = scorer.next_token_logprobs(plans, IDS)
    some = scorer.next_token_logprobs(plans, IDS, prompts=[2, 0])
    # the packed engine's float64 steps, the prompts packed differently
    torch.testing.assert_close(
        some, every[:, [2, 0]], atol=logprob_bound(TINY_VOCAB, u=U64), rtol=0
    )
    alone = next_token_logprobs(tiny64, PROMPTS, plans, IDS)
    torch.testing.assert_close(every, alone, atol=DELTA, rtol=0)


def test_propensities_equal_the_batched_ones(tiny64):
    plans = _plans(64)[:2]
    matching, other = [5, 6, 7], [6, 5, 5]
    scorer = PromptScorer(tiny64, PROMPTS, "last:2", [1])
    fast = scorer.propensities(plans, matching, other)
    slow = propensities(tiny64, PROMPTS, plans, matching, other)
    torch.testing.assert_close(fast, slow, atol=2 * DELTA, rtol=0)


def test_a_family_without_an_adapter_takes_the_hooked_engine_with_the_same_values():
    # float64, so that only the attention softmax rounds in float32 (KEYS keys at most), grown
    # by the family's layers by less than FAMILY_GAIN (tests/tolerances.py)
    model = tiny_family_model("opt", n_layers=2, dtype=torch.float64)
    d = runtime.d_model(model)
    v = torch.randn(d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    plans = [None, Steering(v, layer=0, strength=20.0, positions="last:2")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoAdapterNotice)  # tested in tests/training/engines
        scorer = PromptScorer(model, PROMPTS, "last:2", [0])
    assert isinstance(scorer.engines[0], HookedEngine)
    fast = scorer.next_token_logprobs(plans, IDS)
    slow = next_token_logprobs(model, PROMPTS, plans, IDS)
    rows = [runtime.encode(model, p) for p in PROMPTS]
    largest = 0.0
    for plan in plans:
        with torch.no_grad(), steer(model, plan):
            largest = max(largest, float(runtime.last_logits(model, rows).abs().max()))
    bound = FAMILY_GAIN * logprob_bound(KEYS, largest)
    torch.testing.assert_close(fast, slow, atol=bound, rtol=0)
    assert (fast[1] - fast[0]).abs().max() > max(REAL, 10 * bound)


def test_steerings_the_scorer_was_not_built_for_are_refused(tiny64):
    scorer = PromptScorer(tiny64, PROMPTS, "last:2", [1])
    v = torch.ones(64, dtype=torch.float64)
    with pytest.raises(SpecError, match=r"steers last 3 prompt tokens.*built for last 2"):
        scorer.next_token_logprobs([Steering(v, layer=1, positions="last:3")], IDS)
    with pytest.raises(SpecError, match=r"layer 0.*PromptScorer\(layers=...\)"):
        scorer.next_token_logprobs([Steering(v, layer=0, positions="last:2")], IDS)
    with pytest.raises(SpecError, match=r"copies must be an int >= 1"):
        PromptScorer(tiny64, PROMPTS, "last:2", [1], copies=0)
    with pytest.raises(SpecError, match="not among the scorer's 3 prompts"):
        scorer.next_token_logprobs([None], IDS, prompts=[3])
    with pytest.raises(SpecError, match=r"the same token for prompt\(s\) \[0\]"):
        scorer.propensities([None], [5, 5, 7], [5, 6, 5])
    plan = Steering(v, layer=1, positions="last:2")
    gen = torch.Generator().manual_seed(1)
    states = torch.randn(8, 64, generator=gen, dtype=torch.float64)
    condition = Condition.from_states(
        states[:4], states[4:], layer=0, model_id=runtime.model_id(tiny64)
    )
    conditional = Conditional(plan, condition)
    with pytest.raises(SpecError, match="conditional"):
        scorer.next_token_logprobs([conditional], IDS)


@pytest.mark.parametrize("copies", [1, 2])
def test_kl_along_given_rollouts_equals_rollout_kl(tiny64, copies):
    """With the unsteered greedy rollouts as completions, the scorer's ``kl`` is
    `rollout_kl`'s: log-probabilities within DELTA of each other and at most 4 TINY_LOGITS
    apart (tests/tolerances.py, ``KL_TINY32``), each KL summed in float64."""
    plans = _plans(64)
    rows = [runtime.encode(tiny64, p) for p in PROMPTS]
    rollouts = runtime.decode_tokens(tiny64, rows, max_new_tokens=4)
    scorer = PromptScorer(
        tiny64, rows, "last:2", [0, 1], completions=rollouts, batch_size=2, copies=copies
    )
    fast = scorer.kl(plans)
    slow = rollout_kl(tiny64, rows, plans, n_tokens=4)
    assert fast.shape == slow.shape == (len(plans), sum(len(r) for r in rollouts))
    assert bool(fast[0].eq(0).all())
    bound = kl_gap(4 * TINY_LOGITS, d=DELTA, u=U64)  # about (2 + 8) DELTA
    torch.testing.assert_close(fast, slow, atol=bound, rtol=0)
    assert float(fast[1:].min(dim=1).values.max()) > 0 and float(fast[1:].max()) > REAL
