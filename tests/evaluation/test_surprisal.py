"""Base-model surprisal against a manual sum over one plain forward pass per sample, and a count
of how often the context is run."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tolerances import TINY32, U64

from steerlens import runtime
from steerlens.errors import SpecError, SteerlensError
from steerlens.evaluation import (
    ContextWindowError,
    compare_contexts,
    compare_samples,
    information_complexity,
    mean_surprisal,
)

CONTEXT = "Examples of the behavior:\nthe cat sat on the mat.\na dog ran in the park.\n\n"
# Two computations of a per-token surprisal (bits) that add in other orders (batched or alone,
# a KV cache or none) are within the log-probabilities' bound (tests/tolerances.py) over log 2;
# a per-sample mean keeps it, a total of k tokens is k times it.
BITS = TINY32 / math.log(2)
SAMPLES = [
    "the cat ran.",
    "a dog sat on the cat and the mat",
    "zq!",
    "in the park, the dog",
    "P",
    "the the the the the the",
    "a mat",
]


def manual_surprisal(model, context, sample, *, max_tokens=None, bos=False):
    """Per-token surprisal (bits) of ``sample`` after ``context``: ``-log2 B(x | C) / |x|``."""
    ctx = runtime.encode(model, context)
    if bos:
        ctx = [model.tokenizer.bos_token_id, *ctx]
    x = runtime.encode(model, sample)[:max_tokens]
    with torch.no_grad():
        logp = model(torch.tensor([ctx + x]))[0].double().log_softmax(-1)
    nats = -sum(float(logp[len(ctx) - 1 + t, tok]) for t, tok in enumerate(x))
    return nats / len(x) / math.log(2)


def test_equals_manual_sum(tiny):
    res = mean_surprisal(tiny, SAMPLES, CONTEXT, batch_size=3)
    want = [manual_surprisal(tiny, CONTEXT, s) for s in SAMPLES]
    assert res.per_sample == pytest.approx(want, abs=BITS)
    assert res.mean == pytest.approx(sum(want) / len(want), abs=BITS)
    assert res.n_tokens == tuple(len(runtime.encode(tiny, s)) for s in SAMPLES)
    assert res.unit == "bits" and res.n_truncated == 0 and not res.bos


def test_truncation_units_and_bos(tiny):
    res = mean_surprisal(tiny, SAMPLES, CONTEXT, max_tokens=4)
    want = [manual_surprisal(tiny, CONTEXT, s, max_tokens=4) for s in SAMPLES]
    assert res.per_sample == pytest.approx(want, abs=BITS)
    assert max(res.n_tokens) == 4
    assert res.n_truncated == sum(len(runtime.encode(tiny, s)) > 4 for s in SAMPLES)
    nats = mean_surprisal(tiny, SAMPLES, CONTEXT, max_tokens=4, unit="nats")
    # The same log-probabilities; each side a few float64 roundings (conversion, mean).
    assert nats.mean == pytest.approx(res.mean * math.log(2), rel=8 * U64, abs=0)
    with_bos = mean_surprisal(tiny, SAMPLES, CONTEXT, bos=True)
    want = [manual_surprisal(tiny, CONTEXT, s, bos=True) for s in SAMPLES]
    assert with_bos.per_sample == pytest.approx(want, abs=BITS)
    assert with_bos.bos and with_bos.context_tokens == len(runtime.encode(tiny, CONTEXT)) + 1


class ForwardLog:
    """Records the ``[batch, pos]`` shape of every input reaching block 0."""

    def __init__(self, model):
        self.model, self.shapes = model, []

    def hook(self, x, *, hook):
        self.shapes.append(tuple(x.shape[:2]))
        return x

    def __enter__(self):
        self._ctx = self.model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", self.hook)])
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def test_context_is_computed_once_for_many_samples(tiny):
    samples = SAMPLES * 3  # 21 samples, 6 batches of 4
    n_context = len(runtime.encode(tiny, CONTEXT))
    assert n_context > max(len(runtime.encode(tiny, s)) for s in samples)
    with ForwardLog(tiny) as log:
        res = mean_surprisal(tiny, samples, CONTEXT, batch_size=4)
    assert res.context_passes == 1
    # One pass over the context alone; then one per batch over the samples' tokens only.
    assert log.shapes[0] == (1, n_context)
    assert len(log.shapes) == 1 + math.ceil(len(samples) / 4)
    assert all(pos < n_context for _, pos in log.shapes[1:])
    assert res.per_sample == pytest.approx(
        mean_surprisal(tiny, samples, CONTEXT, batch_size=32).per_sample, abs=BITS
    )


def test_plain_model_recomputes_the_context_with_the_same_result(tiny, plain):
    cached = mean_surprisal(tiny, SAMPLES, CONTEXT, batch_size=3)
    with ForwardLog(tiny) as log:
        generic = mean_surprisal(plain, SAMPLES, CONTEXT, batch_size=3)
    assert generic.context_passes == 3 == len(log.shapes)
    assert generic.per_sample == pytest.approx(cached.per_sample, abs=BITS)


def test_compare_samples_and_contexts(tiny):
    x, y = SAMPLES[:3], SAMPLES[3:]
    with ForwardLog(tiny) as log:
        cmp = compare_samples(tiny, x, y, CONTEXT, batch_size=16)
    assert len(log.shapes) == 2  # the context once, then all seven samples in one batch
    # one batch of seven against batches of three and four
    assert cmp.first.mean == pytest.approx(mean_surprisal(tiny, x, CONTEXT).mean, abs=BITS)
    assert cmp.second.mean == pytest.approx(mean_surprisal(tiny, y, CONTEXT).mean, abs=BITS)
    assert cmp.difference == cmp.first.mean - cmp.second.mean
    other = "Some other texts:\nzq zq zq.\n\n"
    ctx = compare_contexts(tiny, SAMPLES, CONTEXT, other, labels=("cats", "zq"))
    assert ctx.first.mean == pytest.approx(mean_surprisal(tiny, SAMPLES, CONTEXT).mean, abs=BITS)
    assert ctx.second.mean == pytest.approx(mean_surprisal(tiny, SAMPLES, other).mean, abs=BITS)
    assert "cats" in repr(ctx) and "difference" in repr(ctx)


def test_information_complexity_equals_manual_sum(tiny):
    tokens = runtime.encode(tiny, CONTEXT)
    with torch.no_grad():
        logp = tiny(torch.tensor([tokens]))[0].double().log_softmax(-1)
    want = -sum(float(logp[t - 1, tokens[t]]) for t in range(1, len(tokens))) / math.log(2)
    ic = information_complexity(tiny, CONTEXT)
    assert ic.value == pytest.approx(want, abs=(len(tokens) - 1) * BITS)
    assert ic.n_tokens == len(tokens) - 1 and ic.context_tokens == len(tokens)
    assert ic.first_token.startswith("skipped")
    with_bos = information_complexity(tiny, CONTEXT, bos=True, unit="nats")
    bos_tokens = [tiny.tokenizer.bos_token_id, *tokens]
    with torch.no_grad():
        logp = tiny(torch.tensor([bos_tokens]))[0].double().log_softmax(-1)
    want = -sum(float(logp[t - 1, bos_tokens[t]]) for t in range(1, len(bos_tokens)))
    assert with_bos.value == pytest.approx(want, abs=len(tokens) * TINY32)  # nats
    assert with_bos.n_tokens == len(tokens) and "conditioned on BOS '<|im_start|>'" in repr(
        with_bos
    )


def test_chain_rule_links_context_and_sample_surprisal(tiny):
    """-log B(C x) = -log B(C) - log B(x | C) when C + x tokenises as C's tokens then x's."""
    sample = "the cat ran."
    assert runtime.encode(tiny, CONTEXT + sample) == runtime.encode(tiny, CONTEXT) + runtime.encode(
        tiny, sample
    )
    s = mean_surprisal(tiny, sample, CONTEXT)
    total_x = s.mean * s.n_tokens[0]
    joint = information_complexity(tiny, CONTEXT + sample)
    # Each of the three within half the bound per token of the exact value, whose chain rule
    # is exact: as many tokens on each side.
    parts = information_complexity(tiny, CONTEXT).value + total_x
    assert joint.value == pytest.approx(parts, abs=joint.n_tokens * BITS)


def test_results_print_and_save(tiny):
    res = mean_surprisal(tiny, SAMPLES, CONTEXT)
    assert "bits/token over 7 samples" in repr(res) and "1 context pass" in repr(res)
    assert json.loads(json.dumps(res.to_dict()))["per_sample"] == list(res.per_sample)
    cmp = compare_samples(tiny, SAMPLES[:2], SAMPLES[2:], CONTEXT)
    assert json.loads(json.dumps(cmp.to_dict()))["difference"] == cmp.difference
    assert "bits over" in repr(information_complexity(tiny, CONTEXT))


def test_bad_input(tiny):
    with pytest.raises(SteerlensError, match="the context is empty"):
        mean_surprisal(tiny, SAMPLES, "")
    with pytest.raises(SteerlensError, match="the context is empty"):
        information_complexity(tiny, "  \n")
    with pytest.raises(SteerlensError, match="one token and has no BOS"):
        information_complexity(tiny, "a")
    with pytest.raises(SteerlensError, match="sample list is empty"):
        mean_surprisal(tiny, [], CONTEXT)
    with pytest.raises(SteerlensError, match=r"sample 1 \(''\) has no tokens"):
        mean_surprisal(tiny, ["ok", ""], CONTEXT)
    with pytest.raises(SpecError, match="max_tokens must be an int >= 1 or None"):
        mean_surprisal(tiny, SAMPLES, CONTEXT, max_tokens=0)


def test_samples_longer_than_the_context_window_are_refused(tiny):
    n_context = len(runtime.encode(tiny, CONTEXT))
    long_sample = "the " * 300  # 302 tokens; the tiny model's n_ctx is 256
    n_long = len(runtime.encode(tiny, long_sample))
    match = rf"sample 1 \({n_long} tokens with max_tokens=None\) is {n_context + n_long} tokens"
    with pytest.raises(ContextWindowError, match=match) as e:
        mean_surprisal(tiny, ["ok", long_sample], CONTEXT, max_tokens=None)
    assert f"pass max_tokens <= {256 - n_context}" in str(e.value)
    # Truncated to max_tokens it fits, and is scored.
    res = mean_surprisal(tiny, ["ok", long_sample], CONTEXT, max_tokens=100)
    assert res.n_tokens[1] == 100 and res.n_truncated == 1
    with pytest.raises(ContextWindowError, match="the context"):
        information_complexity(tiny, "the " * 300)
