"""Many steerings in shared batches equal one steering at a time.

Tolerance: tests/tolerances.py derives it. The checks run the tiny model in float64, but
TransformerLens's Bridge computes each attention softmax in float32 whatever the model's dtype,
and packing rows differently (other rows beside them, another padded width, another batch size)
changes the order of that softmax's sum over keys. So a batched row and the same row alone
differ by at most ``DELTA = logprob_bound(KEYS)`` (about 8e-6) with KEYS the longest padded row,
checked below; with every reduction in float32 the longest is the vocabulary, ``DELTA32``.

A real mistake (a row under another row's steering, a token counted as prompt that is generated)
moves log-probabilities by more than ``REAL = 1e-3`` here, which each test checks, so the bound
separates rounding from errors by a factor of 100. Derived quantities carry the bound through:
a difference of two log-probabilities 2 DELTA; a KL, ``sum p (log p - log q)``, at most
``DELTA (2 + max |log p - log q|)`` (both log-probabilities and the weights p move); a
reference from `steerlens.runtime.last_logits`, which returns float32, adds its rounding of the
logits, 2**-24 max |logit|, doubled by the log-softmax.
"""

from __future__ import annotations

import pytest
import torch
from tolerances import REAL, TINY32, TINY_VOCAB, U32, check_logits, logprob_bound

from steerlens import Steering, evaluation, runtime, steer
from steerlens.errors import ContextWindowError, InputError, SpecError
from steerlens.evaluation import (
    completion_logprobs_many,
    next_token_kl,
    next_token_logprobs,
    propensities,
    rollout_kl,
)
from steerlens.evaluation.inputs import prompt_rows
from steerlens.runtime import prefixes
from steerlens.steering.interventions import Ablate, Clamp
from steerlens.testing import tiny_model

KEYS = 32  # the most keys in any attention row of these tests (prompts + rollouts, padded)
DELTA = logprob_bound(KEYS)  # log-probabilities of differently packed rows (module docstring)
DELTA32 = TINY32  # the same bound with every reduction in float32
PROMPTS = ["the cat", "a dog ran far away today", "in", "the quick brown fox jumps"]
SAME_LENGTH = ["the cat", "so far", "we ran", "my hat"]  # 6 tokens each
N_TOKENS = 5  # rollout length in the KL tests


def test_rows_fit_the_tolerance(tiny64):
    longest = max(len(runtime.encode(tiny64, t, bos=True)) for t in PROMPTS)
    for text in PROMPTS:  # the bound's premise: logits below TINY_LOGITS, steered or not
        ids = torch.tensor([runtime.encode(tiny64, text)])
        for plan in _steerings():
            with torch.no_grad(), steer(tiny64, plan):
                check_logits(tiny64(ids))
    assert longest + N_TOKENS <= KEYS
    assert runtime.vocab_size(tiny64) == TINY_VOCAB and max(KEYS, 2 * 64) < TINY_VOCAB  # d_mlp


@pytest.fixture(scope="module")
def tiny64():
    return tiny_model().to(torch.float64)


@pytest.fixture(params=["bridge", "plain"])
def model64(request, tiny64, plain):
    """The float64 tiny Bridge, and the same model behind the cache-free plain interface."""
    return tiny64 if request.param == "bridge" else type(plain)(tiny64)


def _steerings():
    g = torch.Generator().manual_seed(4)
    v = [torch.randn(64, generator=g, dtype=torch.float64) for _ in range(4)]
    return [
        Steering(v[0], layer=1, strength=2.0),
        None,
        Steering(v[1], layer=0, strength=-1.5, positions="prompt"),
        [Steering(v[2], layer=1, kind=Clamp, strength=0.5), Steering(v[3], layer=0)],
        [Steering(v[0], layer=0, strength=3.0), Steering(v[0], layer=1, kind=Ablate)],
        Steering(v[1], layer=1, strength=3.0, positions="last:1"),
        Steering(v[2], layer=0, strength=2.0, positions="generated"),
    ]


def _alone(model, ids, plan, cols, n_prompt):
    """Log-probabilities at ``cols`` of one row run alone under ``steer(model, plan)``, with
    its first ``n_prompt`` tokens as prompt (float64)."""
    tokens = torch.tensor([ids])
    ctx = runtime.TokenContext.prompts(torch.tensor([n_prompt]))
    with torch.no_grad(), steer(model, plan):
        logits = runtime.logits_at(
            model, tokens, torch.ones_like(tokens), torch.zeros_like(cols), cols, ctx
        )
    return logits.double().log_softmax(-1)


@pytest.mark.parametrize("batch_size", [1, 3, 5, 32])
def test_next_token_logprobs_equal_one_steering_at_a_time(model64, batch_size):
    plans = _steerings()
    vocab = runtime.vocab_size(model64)
    ids = [0, 5, 77, vocab - 1]
    out = next_token_logprobs(model64, PROMPTS, plans, ids, batch_size=batch_size)
    assert out.shape == (len(plans), len(PROMPTS), len(ids)) and out.dtype == torch.float64
    base = None
    for s, plan in enumerate(plans):
        for p, text in enumerate(PROMPTS):
            row = runtime.encode(model64, text)
            n = len(row)
            expected = _alone(model64, row, plan, torch.tensor([n - 1]), n)[0, ids]
            torch.testing.assert_close(out[s, p], expected, atol=DELTA, rtol=0)
        if plan is None:
            base = out[s]
    assert base is not None
    for s, plan in enumerate(plans):
        if plan is not None and s != 6:  # "generated" steers no prompt token: no change here
            assert (out[s] - base).abs().max() > REAL, f"steering {s} changes nothing"


def test_logprobs_equal_last_logits_under_steer(tiny64):
    plans = _steerings()
    ids = list(range(runtime.vocab_size(tiny64)))
    out = next_token_logprobs(tiny64, PROMPTS, plans, ids, batch_size=6)
    rows = [runtime.encode(tiny64, t) for t in PROMPTS]
    for s, plan in enumerate(plans):
        with torch.no_grad(), steer(tiny64, plan):
            logits = runtime.last_logits(tiny64, rows)  # float32 roundings of float64 logits
        expected = logits.double().log_softmax(-1)
        # float32 rounding of the reference, doubled by log-softmax (module docstring)
        bound = 2 * U32 * float(logits.abs().max()) + DELTA
        torch.testing.assert_close(out[s], expected, atol=bound, rtol=0)


def test_token_lists_give_what_texts_give(tiny64):
    plans = _steerings()[:3]
    rows = [runtime.encode(tiny64, t, bos=True) for t in PROMPTS]
    from_text = next_token_logprobs(tiny64, PROMPTS, plans, [5, 6], bos=True, batch_size=4)
    from_lists = next_token_logprobs(tiny64, rows, plans, [5, 6], batch_size=4)
    from_tensors = next_token_logprobs(
        tiny64, [torch.tensor(r) for r in rows], plans, [5, 6], batch_size=4
    )
    torch.testing.assert_close(from_lists, from_text, atol=DELTA, rtol=0)
    torch.testing.assert_close(from_tensors, from_text, atol=DELTA, rtol=0)


def test_default_dtype_is_float32(tiny):
    plans = [None, Steering(torch.ones(64), layer=1, strength=2.0)]
    out = next_token_logprobs(tiny, PROMPTS, plans, [5, 6, 7], batch_size=3)
    assert out.shape == (2, 4, 3) and out.dtype == torch.float32 and out.device.type == "cpu"
    assert bool(out.isfinite().all()) and bool((out < 0).all())
    kl = rollout_kl(tiny, PROMPTS[:2], plans, n_tokens=3, batch_size=3)
    assert kl.dtype == torch.float32 and kl.shape[0] == 2 and 2 <= kl.shape[1] <= 6


@pytest.mark.parametrize("batch_size", [1, 4, 32])
def test_propensities_are_logprob_differences(tiny64, batch_size):
    plans = _steerings()
    a, b = runtime.answer_token_ids(tiny64, ["A", "B"])
    prompts = [p + " (" for p in PROMPTS]
    matching, other = [a, b, b, a], [b, a, a, b]
    out = propensities(tiny64, prompts, plans, matching, other, batch_size=batch_size)
    assert out.shape == (len(plans), len(prompts)) and out.dtype == torch.float64
    for s, plan in enumerate(plans):
        for p, text in enumerate(prompts):
            row = runtime.encode(tiny64, text)
            lp = _alone(tiny64, row, plan, torch.tensor([len(row) - 1]), len(row))[0]
            expected = lp[matching[p]] - lp[other[p]]
            assert abs(float(out[s, p] - expected)) <= 2 * DELTA, (s, p)
    assert (out[0] - out[1]).abs().max() > REAL
    torch.testing.assert_close(
        propensities(tiny64, prompts, plans, other, matching), -out, atol=2 * DELTA, rtol=0
    )


def _rollout_reference(model, prompts, plans, n_tokens):
    """Per steering, the per-token KL(steered || unsteered) computed one prompt and one
    steering at a time, along rollouts decoded one prompt at a time; the rollouts' lengths;
    and the largest |log p - log q| seen (for the KL's bound)."""
    out = []
    rollouts = []
    ratio = 0.0
    for text in prompts:
        row = runtime.encode(model, text)
        with torch.no_grad():
            rollouts.append(runtime.decode_tokens(model, [row], max_new_tokens=n_tokens)[0])
    for plan in plans:
        kls = []
        for text, new in zip(prompts, rollouts, strict=True):
            row = runtime.encode(model, text)
            seq = row + new
            cols = torch.arange(len(row) - 1, len(seq) - 1)
            p = _alone(model, seq, plan, cols, len(row))
            q = _alone(model, seq, None, cols, len(row))
            kls.append((p.exp() * (p - q)).sum(-1).clamp_min(0.0))
            ratio = max(ratio, float((p - q).abs().max()))
        out.append(torch.cat(kls))
    return torch.stack(out), [len(r) for r in rollouts], ratio


@pytest.fixture(
    params=[(d, m) for d in ("float64", "float32") for m in ("bridge", "plain")],
    ids=lambda dm: "-".join(dm),
)
def rollout_case(request, tiny64, tiny, plain):
    """(model, prompts, bound on log-probabilities) for the rollout checks, on the Bridge and
    behind the cache-free plain interface. Decoding left-pads prompts of different lengths, and
    the float64 Bridge turns a fully masked (left-pad) query row into NaN (its float64 mask
    value overflows to -inf in the float32 softmax), so in float64 the prompts share one
    length; prompts of different lengths run in float32."""
    dtype, kind = request.param
    if dtype == "float64":
        assert len({len(runtime.encode(tiny64, t)) for t in SAME_LENGTH}) == 1
        return (tiny64 if kind == "bridge" else type(plain)(tiny64)), SAME_LENGTH, DELTA
    return (tiny if kind == "bridge" else plain), PROMPTS, DELTA32


@pytest.mark.parametrize("batch_size", [1, 4, 32])
def test_rollout_kl_equals_one_steering_at_a_time(rollout_case, batch_size):
    model, prompts, delta = rollout_case
    plans = _steerings()
    out = rollout_kl(model, prompts, plans, n_tokens=N_TOKENS, batch_size=batch_size)
    expected, sizes, ratio = _rollout_reference(model, prompts, plans, N_TOKENS)
    assert out.shape == expected.shape == (len(plans), sum(sizes))
    assert out.dtype == (torch.float64 if delta == DELTA else torch.float32)
    bound = delta * (2 + ratio)  # the KL's bound (module docstring)
    torch.testing.assert_close(out.double(), expected, atol=bound, rtol=0)
    assert torch.equal(out[1], torch.zeros_like(out[1]))  # None: exact
    for s, plan in enumerate(plans):
        if plan is not None:
            assert out[s].max() > 10 * bound, f"steering {s} changes too little to test"
    # "generated" steers only rollout tokens: the prompt's last position (first KL of each
    # prompt) is untouched, the later ones are not.
    firsts = torch.tensor([sum(sizes[:p]) for p in range(len(prompts))])
    assert out[6, firsts].max() <= 2 * delta  # the KL bound with |log p - log q| <= 2 delta
    later = torch.ones(sum(sizes), dtype=torch.bool)
    later[firsts] = False
    assert out[6, later].max() > 10 * bound


def test_rollout_kl_of_a_zero_steering_is_zero(rollout_case):
    model, prompts, delta = rollout_case
    zero = Steering(torch.zeros(64), layer=[0, 1], strength=5.0)
    kl = rollout_kl(model, prompts, [zero, None], n_tokens=N_TOKENS, batch_size=3)
    # x + 5 * 0 is x exactly: only packing differs, so |log p - log q| <= 2 delta
    assert kl.shape[1] > 0 and float(kl.max()) <= 2 * delta
    assert float(kl.min()) >= 0.0


def test_rollouts_stop_at_n_tokens_and_shapes_follow(tiny):
    plans = [Steering(torch.ones(64), layer=1)] * 3
    kl = rollout_kl(tiny, ["the cat", "in"], plans, n_tokens=2)
    assert kl.shape[0] == 3 and kl.shape[1] <= 4


def test_progress_bars_show_over_several_batches(tiny, capsys):
    plans = [None, Steering(torch.ones(64), layer=1)]
    next_token_logprobs(tiny, PROMPTS, plans, [5], batch_size=3, progress=True)
    assert "forward" in capsys.readouterr().err
    rollout_kl(tiny, PROMPTS, plans, n_tokens=2, batch_size=3, progress=True)
    err = capsys.readouterr().err
    assert "rollout" in err and "score" in err
    next_token_logprobs(tiny, PROMPTS, plans, [5], batch_size=8, progress=True)
    assert capsys.readouterr().err == ""  # one batch: no bar


def test_inputs_are_refused_clearly(tiny):
    plan = [Steering(torch.ones(64), layer=1)]
    vocab = runtime.vocab_size(tiny)
    with pytest.raises(InputError, match="empty"):
        next_token_logprobs(tiny, [], plan, [5])
    with pytest.raises(InputError, match="empty"):
        rollout_kl(tiny, [], plan)
    with pytest.raises(SpecError, match="steerings is empty"):
        next_token_logprobs(tiny, ["a"], [], [5])
    with pytest.raises(SpecError, match="steerings is empty"):
        rollout_kl(tiny, ["a"], [])
    with pytest.raises(SpecError, match="token_ids is empty"):
        next_token_logprobs(tiny, ["a"], plan, [])
    for bad in (-1, vocab):
        with pytest.raises(SpecError, match=rf"\[{bad}\] outside the model's vocabulary"):
            next_token_logprobs(tiny, ["a"], plan, [5, bad])
        with pytest.raises(SpecError, match="outside the model's vocabulary"):
            propensities(tiny, ["a"], plan, [bad], [5])
    with pytest.raises(SpecError, match="not a token id"):
        next_token_logprobs(tiny, ["a"], plan, [5.0])
    for size in (0, -2, 1.5, True):
        with pytest.raises(SpecError, match="batch_size"):
            next_token_logprobs(tiny, ["a"], plan, [5], batch_size=size)
        with pytest.raises(SpecError, match="batch_size"):
            propensities(tiny, ["a"], plan, [5], [6], batch_size=size)
        with pytest.raises(SpecError, match="batch_size"):
            rollout_kl(tiny, ["a"], plan, batch_size=size)
    for n in (0, -1, 2.0, True):
        with pytest.raises(SpecError, match="n_tokens"):
            rollout_kl(tiny, ["a"], plan, n_tokens=n)


def test_answers_and_prompts_are_checked(tiny):
    plan = [None]
    with pytest.raises(SpecError, match="2 token ids for 1 prompts"):
        propensities(tiny, ["a"], plan, [5, 6], [7])
    with pytest.raises(SpecError, match=r"same token for prompt\(s\) \[1\]"):
        propensities(tiny, ["a", "b"], plan, [5, 6], [7, 6])
    with pytest.raises(SpecError, match="list of token ids"):
        propensities(tiny, ["a"], plan, 5, [6])
    with pytest.raises(InputError, match="list of ints"):
        next_token_logprobs(tiny, [5, 6, 7], plan, [5])
    with pytest.raises(InputError, match="no tokens"):
        next_token_logprobs(tiny, [[5], []], plan, [5])
    # None inside a token list is named like any other non-int (it was a bare TypeError).
    with pytest.raises(InputError, match="prompt 0 holds None at index 1, not a token id"):
        prompt_rows(tiny, [[5, None]])
    with pytest.raises(InputError, match="prompt 1 holds None at index 0, not a token id"):
        next_token_logprobs(tiny, [[5], [None]], plan, [5])
    with pytest.raises(SpecError, match="token_ids holds None at index 1, not a token id"):
        next_token_logprobs(tiny, ["a", "b"], plan, [5, None])
    with pytest.raises(InputError, match="outside the model's vocabulary"):
        next_token_logprobs(tiny, [[5, runtime.vocab_size(tiny)]], plan, [5])
    with pytest.raises(InputError, match="all prompts as text or all as token"):
        next_token_logprobs(tiny, [[5], "a"], plan, [5])
    with pytest.raises(InputError, match="not a str"):
        next_token_logprobs(tiny, ["a", [5]], plan, [5])
    with pytest.raises(InputError, match="tensor"):
        next_token_logprobs(tiny, torch.tensor([[5, 6]]), plan, [5])
    with pytest.raises(SpecError, match="bos=True applies to text prompts"):
        next_token_logprobs(tiny, [[5, 6]], plan, [5], bos=True)
    with pytest.raises(SpecError, match="wrap it in a plan"):
        next_token_logprobs(tiny, ["a"], [torch.ones(64)], [5])


def _suffix_steerings():
    g = torch.Generator().manual_seed(7)
    v = [torch.randn(64, generator=g, dtype=torch.float64) for _ in range(3)]
    return [
        None,
        Steering(v[0], layer=1, strength=3.0, positions="last:2"),
        Steering(v[1], layer=0, strength=-2.0, positions="last:1"),
        [Steering(v[2], layer=1, strength=2.0, positions="last:3"), Steering(v[0], layer=0)],
        Steering(v[2], layer=1, strength=2.0, positions="last:3"),
    ]


@pytest.mark.parametrize("batch_size", [1, 2, 32])
def test_a_shared_unsteered_prefix_equals_one_steering_at_a_time(tiny64, monkeypatch, batch_size):
    """When no steering touches a prompt's first tokens (here: ``last:N`` rules), they run once
    and the steered rows reuse their KV cache; the values are those of full forward passes (the
    same attention sums, in another grouping: the module docstring's DELTA). Plan 3 steers every
    token, so those rows take the full path."""
    calls = []
    real = prefixes.prefix_cache
    monkeypatch.setattr(prefixes, "prefix_cache", lambda *a, **k: calls.append(a) or real(*a, **k))
    plans = _suffix_steerings()
    only_suffix = [plans[i] for i in (0, 1, 2, 4)]
    ids = [0, 5, 77]
    out = next_token_logprobs(tiny64, PROMPTS, only_suffix, ids, batch_size=batch_size)
    assert calls, "the prefix path was not taken"
    assert len({c[1] for c in calls}) == len(calls), "a prefix ran twice"
    for s, plan in enumerate(only_suffix):
        for p, text in enumerate(PROMPTS):
            row = runtime.encode(tiny64, text)
            n = len(row)
            expected = _alone(tiny64, row, plan, torch.tensor([n - 1]), n)[0, ids]
            torch.testing.assert_close(out[s, p], expected, atol=DELTA, rtol=0)
        if plan is not None:
            assert (out[s] - out[0]).abs().max() > REAL, f"steering {s} changes nothing"
    calls.clear()
    mixed = next_token_logprobs(tiny64, PROMPTS, plans, ids, batch_size=batch_size)
    assert not calls  # one steering of every token: no prefix is unsteered
    torch.testing.assert_close(mixed[[0, 1, 2, 4]], out, atol=2 * DELTA, rtol=0)


def test_a_prefix_store_runs_each_prefix_once_across_calls(tiny64, monkeypatch):
    calls = []
    real = prefixes.prefix_cache
    monkeypatch.setattr(prefixes, "prefix_cache", lambda *a, **k: calls.append(a) or real(*a, **k))
    plans = [_suffix_steerings()[i] for i in (0, 1, 2)]
    store = runtime.PrefixStore(tiny64)
    first = next_token_logprobs(tiny64, PROMPTS, plans, [0, 5], prefixes=store)
    again = next_token_logprobs(tiny64, PROMPTS, plans[1:], [0, 5], prefixes=store)
    assert calls and store.hits == len(calls)  # the second call computed no prefix
    torch.testing.assert_close(again, first[1:], atol=DELTA, rtol=0)


def test_a_full_prefix_store_drops_the_least_recently_used():
    model = tiny_model()
    store = runtime.PrefixStore(model, max_bytes=1)
    store.cache([5, 6], 1, prompt_end=3)
    store.cache([7, 8], 2, prompt_end=3)
    assert len(store) == 1  # over budget: only the newest stays
    store.cache([7, 8], 1, prompt_end=3)
    assert store.hits == 1


# -- completion log-probabilities and the next-token KL ---------------------------------------

PAIRS = [  # (prompt, completion): prompts repeated, lengths mixed, 1 to 8 completion tokens
    ("the cat", " sat"),
    ("the cat", " on the mat"),
    ("a dog ran far away today", "!"),
    ("in", " the"),
    ("in", "s"),
    ("the quick brown fox jumps", " on the mat"),
]


def _completion_bound(delta, n_tokens, total):
    """How far a total of ``n_tokens`` log-probabilities from shared batches may be from
    `completion_logprobs`'s: each term moves by ``delta`` (packing), and the reference rounds
    each term to float32 and sums them in float32, ``U32 |lp_i|`` plus ``(k - 1) U32 sum |lp_i|``
    (tests/tolerances.py); every log-probability is <= 0, so ``sum |lp_i| = |total|``."""
    return n_tokens * delta + (n_tokens + 1) * U32 * abs(total)


def _one_steering_at_a_time(model, plan):
    """Per pair, ``completion_logprobs``'s total under ``with steer(model, plan)`` and the
    completion's token count."""
    totals, sizes = [], []
    with steer(model, plan):
        for prompt, completion in PAIRS:
            res = evaluation.completion_logprobs(model, prompt, completion, chat=False)
            totals.append(res.total())
            sizes.append(len(res.tokens[0][0]))
    return totals, sizes


@pytest.mark.parametrize("batch_size", [1, 3, 32])
def test_completion_logprobs_many_equal_one_steering_at_a_time(model64, batch_size):
    plans = _steerings()
    prompts, completions = zip(*PAIRS, strict=True)
    out = completion_logprobs_many(model64, prompts, completions, plans, batch_size=batch_size)
    assert out.shape == (len(plans), len(PAIRS)) and out.dtype == torch.float64
    for s, plan in enumerate(plans):
        expected, sizes = _one_steering_at_a_time(model64, plan)
        assert max(len(runtime.encode(model64, p + c)) for p, c in PAIRS) <= KEYS
        for p, (total, k) in enumerate(zip(expected, sizes, strict=True)):
            bound = _completion_bound(DELTA, k, total)
            assert abs(float(out[s, p]) - total) <= bound, (s, p, float(out[s, p]), total)
    unsteered = out[1]
    for s, plan in enumerate(plans):
        if plan is not None:
            assert (out[s] - unsteered).abs().max() > REAL, f"steering {s} changes nothing"
    # "generated" steers the completion's tokens only: a one-token completion is predicted at
    # the prompt's last position, untouched; longer ones are not.
    one_token = [p for p, (_, c) in enumerate(PAIRS) if c in ("!", " the", "s")]
    assert (out[6, one_token] - unsteered[one_token]).abs().max() <= 2 * DELTA
    assert (out[6, 1] - unsteered[1]).abs() > REAL


def test_completion_token_lists_give_what_texts_give(tiny64):
    plans = _steerings()[:4]
    prompts, completions = zip(*PAIRS, strict=True)
    rows = [runtime.encode(tiny64, p, bos=True) for p in prompts]
    ids = [
        runtime.completion_tokens(tiny64, r, p, c)[0] for r, (p, c) in zip(rows, PAIRS, strict=True)
    ]
    from_text = completion_logprobs_many(tiny64, prompts, completions, plans, bos=True)
    from_lists = completion_logprobs_many(tiny64, rows, ids, plans, batch_size=5)
    as_tensors = [torch.tensor(t) for t in ids]
    from_tensors = completion_logprobs_many(tiny64, rows, as_tensors, plans, batch_size=7)
    longest = max(len(t) for t in ids)
    torch.testing.assert_close(from_lists, from_text, atol=longest * DELTA, rtol=0)
    torch.testing.assert_close(from_tensors, from_text, atol=longest * DELTA, rtol=0)


def test_completion_logprobs_many_default_dtype_is_float32(tiny):
    plans = [None, Steering(torch.ones(64), layer=1, strength=2.0)]
    out = completion_logprobs_many(tiny, ["the cat", "in"], [" sat", " the"], plans)
    assert out.shape == (2, 2) and out.dtype == torch.float32 and out.device.type == "cpu"
    assert bool((out < 0).all())


@pytest.mark.parametrize("batch_size", [1, 2, 32])
def test_completion_logprobs_with_a_shared_prefix_equal_one_steering_at_a_time(
    tiny64, monkeypatch, batch_size
):
    """``last:N`` steerings leave each prompt's first tokens alone: they run once and the
    steered rows reuse their KV cache (next_token_logprobs's prefix path)."""
    calls = []
    real = prefixes.prefix_cache
    monkeypatch.setattr(prefixes, "prefix_cache", lambda *a, **k: calls.append(a) or real(*a, **k))
    plans = [_suffix_steerings()[i] for i in (0, 1, 2, 4)]
    prompts, completions = zip(*PAIRS, strict=True)
    out = completion_logprobs_many(tiny64, prompts, completions, plans, batch_size=batch_size)
    assert calls, "the prefix path was not taken"
    for s, plan in enumerate(plans):
        expected, sizes = _one_steering_at_a_time(tiny64, plan)
        for p, (total, k) in enumerate(zip(expected, sizes, strict=True)):
            assert abs(float(out[s, p]) - total) <= _completion_bound(DELTA, k, total), (s, p)
        if plan is not None:
            assert (out[s] - out[0]).abs().max() > REAL, f"steering {s} changes nothing"


def test_completion_inputs_are_refused_clearly(tiny):
    plan = [Steering(torch.ones(64), layer=1)]
    with pytest.raises(InputError, match="2 prompts and 1 completions; give one completion per"):
        completion_logprobs_many(tiny, ["a", "b"], [" c"], plan)
    with pytest.raises(InputError, match="completion 1 is ''"):
        completion_logprobs_many(tiny, ["a", "b"], [" c", ""], plan)
    with pytest.raises(InputError, match="completion 0 is 5"):
        completion_logprobs_many(tiny, ["a"], [5], plan)
    with pytest.raises(InputError, match="completion 0 is text but the prompts are token lists"):
        completion_logprobs_many(tiny, [[5, 6]], [" c"], plan)
    with pytest.raises(InputError, match="completion 1 has no tokens"):
        completion_logprobs_many(tiny, [[5], [6]], [[7], []], plan)
    with pytest.raises(InputError, match="completion 0 has token id"):
        completion_logprobs_many(tiny, [[5]], [[runtime.vocab_size(tiny)]], plan)
    with pytest.raises(InputError, match="completions is a tensor"):
        completion_logprobs_many(tiny, [[5]], torch.tensor([[6]]), plan)
    with pytest.raises(ContextWindowError, match="prompt 0 followed by its completion"):
        completion_logprobs_many(tiny, ["a"], [" b" * 200], plan)
    with pytest.raises(InputError, match="empty"):
        completion_logprobs_many(tiny, [], [], plan)
    with pytest.raises(SpecError, match="steerings is empty"):
        completion_logprobs_many(tiny, ["a"], [" b"], [])
    with pytest.raises(SpecError, match="batch_size"):
        completion_logprobs_many(tiny, ["a"], [" b"], plan, batch_size=0)


@pytest.fixture(params=["bridge", "plain"])
def model32(request, tiny, plain):
    return tiny if request.param == "bridge" else plain


@pytest.mark.parametrize("batch_size", [1, 3, 32])
def test_next_token_kl_equals_side_effect_kl_per_steering(model32, batch_size):
    """`side_effect_kl` runs in float32 whatever the model, so both run the float32 tiny model:
    log-probabilities within ``DELTA32``, the KL within ``DELTA32 (2 + max |log p - log q|)``
    (module docstring)."""
    plans = _steerings()
    out = next_token_kl(model32, PROMPTS, plans, batch_size=batch_size)
    assert out.shape == (len(plans), len(PROMPTS)) and out.dtype == torch.float32
    rows = [runtime.encode(model32, t) for t in PROMPTS]
    base = runtime.last_logits(model32, rows).log_softmax(-1)
    for s, plan in enumerate(plans):
        expected = evaluation.side_effect_kl(model32, PROMPTS, plan, chat=False)
        with torch.no_grad(), steer(model32, plan):
            ratio = float((runtime.last_logits(model32, rows).log_softmax(-1) - base).abs().max())
        bound = DELTA32 * (2 + ratio)
        values = torch.tensor(expected.values, dtype=torch.float64)
        torch.testing.assert_close(out[s].double(), values, atol=bound, rtol=0)
        if plan is None:
            assert torch.equal(out[s], torch.zeros(len(PROMPTS)))  # exact, without a forward
        elif s != 6:  # "generated" steers no prompt token: nothing to see after the prompt
            assert out[s].max() > 10 * bound, f"steering {s} changes too little to test"
    assert out[6].max() <= 2 * DELTA32  # the KL bound with |log p - log q| <= 2 delta


def test_next_token_kl_equals_rows_alone_in_float64(tiny64):
    plans = _suffix_steerings() + _steerings()[:3]
    out = next_token_kl(tiny64, PROMPTS, plans, batch_size=5)
    assert out.dtype == torch.float64
    for s, plan in enumerate(plans):
        for p, text in enumerate(PROMPTS):
            row = runtime.encode(tiny64, text)
            last = torch.tensor([len(row) - 1])
            q = _alone(tiny64, row, plan, last, len(row))[0]
            base = _alone(tiny64, row, None, last, len(row))[0]
            expected = (base.exp() * (base - q)).sum().clamp_min(0.0)
            bound = DELTA * (2 + float((base - q).abs().max()))
            assert abs(float(out[s, p] - expected)) <= bound, (s, p)
        if plan is not None:
            assert out[s].max() > REAL, f"steering {s} changes nothing"


def test_next_token_kl_of_nothing_is_exactly_zero(tiny):
    out = next_token_kl(tiny, PROMPTS, [None, []], batch_size=3)
    assert torch.equal(out, torch.zeros(2, len(PROMPTS)))


def test_next_token_kl_inputs_are_refused_clearly(tiny):
    plan = [Steering(torch.ones(64), layer=1)]
    with pytest.raises(InputError, match="empty"):
        next_token_kl(tiny, [], plan)
    with pytest.raises(SpecError, match="steerings is empty"):
        next_token_kl(tiny, ["a"], [])
    with pytest.raises(SpecError, match="batch_size"):
        next_token_kl(tiny, ["a"], plan, batch_size=-1)
    with pytest.raises(SpecError, match="wrap it in a plan"):
        next_token_kl(tiny, ["a"], [torch.ones(64)])
