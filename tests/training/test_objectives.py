"""The objectives of METHOD.md section 2.1, checked against a hand computation.

The reference runs the model's ordinary forward pass, ``tiny(tokens)`` on ``prompt + completion``
with the vector installed by ``steerlens.steer`` at ``blocks.L.hook_resid_pre``, and computes
``log_softmax(c * logits)`` in float64; ``evaluate_objective`` (which uses the optimizer's engine)
must agree with it, within the bound of two summation orders (tests/tolerances.py): the engine
packs rows and adds in another order than the plain forward.
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch
from tolerances import TINY_LOGITS, TINY_VOCAB, U32, U64, assert_losses_close, logprob_bound

from steerlens import Datapoint, evaluate_objective, steer
from steerlens.errors import SpecError
from steerlens.runtime import TokenContext, token_context, token_logprobs
from steerlens.runtime.logprobs import convert_loss
from steerlens.steering.steer import Steering
from steerlens.training.data import tokenize
from steerlens.training.objectives import Objective, completion_losses, log1mexp

PROMPT = "the cat sat"
LAYER = 1


def hand_logprobs(model, prompt_tokens, comp_tokens, coldness=0.7, **steering):
    """float64 ``log P(y_k | x, y_<k)`` from the plain hooked forward, steered with ``steer``."""
    tokens = torch.tensor([prompt_tokens + comp_tokens])
    p = len(prompt_tokens)
    ctx = TokenContext(torch.tensor([0]), torch.tensor([p]), 0)
    with (
        torch.no_grad(),
        steer(model, Steering(steering.pop("vector"), **steering) if steering else None),
        token_context(ctx),
    ):
        logits = model(tokens)[0].double()
    lp = torch.log_softmax(coldness * logits, dim=-1)
    rows = torch.arange(p - 1, p - 1 + len(comp_tokens))
    return lp[rows, torch.tensor(comp_tokens)]


def toks(model, dp):
    (tdp,) = tokenize(model, dp)
    return tdp.prompt_tokens, [c.tokens for c in tdp.completions]


def promotion(lp):
    return float(-lp.sum())


def suppression(lp):
    # The premise of `bounds`: log(1 - p) moves by no more than log p does while p < 1/2, here
    # at any log p within the bound at the largest coldness tested (3).
    assert float(lp.max()) + logprob_bound(TINY_VOCAB, 3 * TINY_LOGITS) < -math.log(2.0)
    return float(-torch.log(-torch.expm1(lp)).sum())  # -sum log(1 - p), float64


def bounds(model, dps, coldness=1.0, normalize=False):
    """Per completion, how far the engine's loss may be from the hand one: each token's
    log-probability within the bound of two orders of logits below ``coldness * TINY_LOGITS``
    (`logprob_bound`), k tokens k times that (a mean: once)."""
    data = tokenize(model, dps)
    one = logprob_bound(TINY_VOCAB, coldness * TINY_LOGITS)
    return np.array(
        [one * (1 if normalize else len(c.tokens)) for t in data for c in t.completions]
    )


def values(ev):
    return list(ev.losses.values())


@pytest.fixture
def v():
    return torch.randn(64, generator=torch.Generator().manual_seed(1)) * 2


@pytest.mark.parametrize("layer", [0, 1])
def test_promotion_is_minus_sum_logp(tiny, v, layer):
    dp = Datapoint(PROMPT, promote=[" on the mat"], chat=False)
    prompt, (comp,) = toks(tiny, dp)
    assert len(comp) > 1
    expected = promotion(hand_logprobs(tiny, prompt, comp, vector=v, layer=layer))
    got = values(evaluate_objective(tiny, dp, layer, v))
    assert_losses_close(got, [expected], bounds(tiny, dp))


def test_unsteered_is_vector_none(tiny):
    dp = Datapoint(PROMPT, promote=[" on the mat"], chat=False)
    prompt, (comp,) = toks(tiny, dp)
    expected = promotion(hand_logprobs(tiny, prompt, comp))
    got = values(evaluate_objective(tiny, dp, LAYER, None))
    zero = values(evaluate_objective(tiny, dp, LAYER, torch.zeros(64)))
    assert_losses_close(got, [expected], bounds(tiny, dp))
    assert_losses_close(zero, [expected], bounds(tiny, dp))


def test_suppression_one_minus(tiny, v):
    dp = Datapoint(PROMPT, suppress=[" on the mat"], chat=False)
    prompt, (comp,) = toks(tiny, dp)
    lp = hand_logprobs(tiny, prompt, comp, vector=v, layer=LAYER)
    (got,) = values(evaluate_objective(tiny, dp, LAYER, v))
    assert_losses_close([got], [suppression(lp)], bounds(tiny, dp))
    assert got > 0


def test_suppression_logprob_variant(tiny, v):
    dp = Datapoint(PROMPT, suppress=[" on the mat"], chat=False)
    prompt, (comp,) = toks(tiny, dp)
    lp = hand_logprobs(tiny, prompt, comp, vector=v, layer=LAYER)
    obj = Objective(suppression="logprob")
    (got,) = values(evaluate_objective(tiny, dp, LAYER, v, objective=obj))
    assert_losses_close([got], [float(lp.sum())], bounds(tiny, dp))
    assert got < 0


def test_mixed_per_completion_values(tiny, v):
    dp = Datapoint(PROMPT, promote=[" on the mat", " in"], suppress=[" xyz", " the"], chat=False)
    prompt, comps = toks(tiny, dp)
    kinds = ["promote", "promote", "suppress", "suppress"]
    ev = evaluate_objective(tiny, dp, LAYER, v)
    assert len(ev.losses) == 4
    expected = []
    for kind, comp in zip(kinds, comps, strict=True):
        lp = hand_logprobs(tiny, prompt, comp, vector=v, layer=LAYER)
        expected.append(promotion(lp) if kind == "promote" else suppression(lp))
    assert_losses_close(values(ev), expected, bounds(tiny, dp))
    assert_losses_close([ev.total], [sum(expected)], [bounds(tiny, dp).sum()])
    assert [label.split()[1] for label in ev.losses] == kinds


def test_length_normalisation(tiny, v):
    dp = Datapoint(PROMPT, promote=[" on the mat"], suppress=[" xyz"], chat=False)
    prompt, comps = toks(tiny, dp)
    lps = [hand_logprobs(tiny, prompt, c, vector=v, layer=LAYER) for c in comps]
    expected = [promotion(lps[0]) / len(comps[0]), suppression(lps[1]) / len(comps[1])]
    obj = Objective(length_normalize=True)
    got = values(evaluate_objective(tiny, dp, LAYER, v, objective=obj))
    assert_losses_close(got, expected, bounds(tiny, dp, normalize=True))
    plain = values(evaluate_objective(tiny, dp, LAYER, v))
    # The same engine's sums in the same order: normalising only divides by the length
    # (float32, one rounding, relative U32).
    want = [g * len(c) for g, c in zip(got, comps, strict=True)]
    assert_losses_close(plain, want, np.abs(want) * 2 * U32)


@pytest.mark.parametrize("coldness", [0.25, 1.0, 3.0])
def test_coldness(tiny, v, coldness):
    dp = Datapoint(PROMPT, promote=[" on the mat"], suppress=[" xyz"], chat=False)
    prompt, comps = toks(tiny, dp)
    lps = [hand_logprobs(tiny, prompt, c, coldness, vector=v, layer=LAYER) for c in comps]
    expected = [promotion(lps[0]), suppression(lps[1])]
    obj = Objective(coldness=coldness)
    got = values(evaluate_objective(tiny, dp, LAYER, v, objective=obj))
    assert_losses_close(got, expected, bounds(tiny, dp, coldness))


@pytest.mark.parametrize("bad", [0.0, -0.7, float("nan")])
def test_coldness_must_be_positive(bad):
    with pytest.raises(SpecError, match="coldness must be > 0"):
        Objective(coldness=bad)


def test_unknown_suppression_variant():
    with pytest.raises(SpecError, match="unknown suppression"):
        Objective(suppression="minus")  # type: ignore[arg-type]


def test_negated_datapoint_uses_minus_v(tiny, v):
    kw = {"promote": [" on the mat"], "suppress": [" xyz"]}
    neg = Datapoint(PROMPT, negate=True, **kw, chat=False)
    pos = Datapoint(PROMPT, **kw, chat=False)
    got = values(evaluate_objective(tiny, neg, LAYER, v))
    # negate steers with -v: the same values, so the same sums in the same order
    assert got == values(evaluate_objective(tiny, pos, LAYER, -v))
    wrong = np.array(values(evaluate_objective(tiny, pos, LAYER, v)))
    assert np.abs(wrong - got).max() > bounds(tiny, pos).max()  # +v would fail the check
    prompt, comps = toks(tiny, pos)
    lps = [hand_logprobs(tiny, prompt, c, vector=v, layer=LAYER, strength=-1.0) for c in comps]
    assert_losses_close(got, [promotion(lps[0]), suppression(lps[1])], bounds(tiny, pos))


def test_several_datapoints_some_negated(tiny, v):
    a = Datapoint(PROMPT, promote=[" on the mat"], chat=False)
    b = Datapoint("a dog ran", suppress=[" away"], negate=True, chat=False)
    got = values(evaluate_objective(tiny, [a, b], LAYER, v))
    pa, (ca,) = toks(tiny, a)
    pb, (cb,) = toks(tiny, b)
    expected = [
        promotion(hand_logprobs(tiny, pa, ca, vector=v, layer=LAYER)),
        suppression(hand_logprobs(tiny, pb, cb, vector=-v, layer=LAYER)),
    ]
    assert_losses_close(got, expected, bounds(tiny, [a, b]))


@pytest.mark.parametrize(("unit", "base"), [("nats", math.e), ("bits", 2.0), ("hartleys", 10.0)])
def test_units(tiny, v, unit, base):
    dp = Datapoint(PROMPT, promote=[" on the mat"], suppress=[" xyz"], chat=False)
    nats = evaluate_objective(tiny, dp, LAYER, v)
    other = evaluate_objective(tiny, dp, LAYER, v, unit=unit)
    assert nats.unit == "nats" and other.unit == unit
    # The same losses (one engine, the same order), each divided by the same float64 constant.
    assert values(other) == [x / math.log(base) for x in values(nats)]
    assert unit in repr(other)


def test_unit_conversion_constants():
    # A float divided by itself is exactly 1.
    assert convert_loss(math.log(2.0), "bits") == 1.0
    assert convert_loss(math.log(10.0), "hartleys") == 1.0
    assert convert_loss(1.5, "nats") == 1.5
    t = convert_loss(torch.tensor([math.log(10.0), 0.0]), "hartleys")
    # float32: log 10 rounded once into the tensor and once more by the division
    torch.testing.assert_close(t, torch.tensor([1.0, 0.0]), rtol=2 * U32, atol=0)


def test_unknown_unit_is_refused(tiny, v):
    with pytest.raises(SpecError, match="unknown loss unit 'decibans'"):
        evaluate_objective(
            tiny, Datapoint("a", promote=[" b"], chat=False), LAYER, v, unit="decibans"
        )


# -- log1mexp ---------------------------------------------------------------------------------

XS = [-1e-10, -1e-7, -1e-5, -1e-3, -0.5, -math.log(2.0), -0.7, -1.0, -5.0, -10.0, -30.0, -50.0]


def exact_log1mexp(x: float) -> float:
    with mpmath.workdps(50):
        return float(mpmath.log(1 - mpmath.exp(mpmath.mpf(x))))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log1mexp_accuracy(dtype):
    xs = torch.tensor(XS, dtype=dtype)
    got = log1mexp(xs)
    assert got.dtype == dtype
    # Against the exact value at the input as rounded into ``dtype``: two elementary functions,
    # each within 2 ulp (4u, CPU and CUDA), the inner one's error grown at most 1/log 2 by the
    # outer one (its argument stays in [1/2, 1) or (0, 1/2]): (4 / log 2 + 4) u < 10 u.
    rel = 10 * (U32 if dtype == torch.float32 else U64)
    for x, g in zip(xs.tolist(), got.tolist(), strict=True):
        assert g == pytest.approx(exact_log1mexp(x), rel=rel, abs=0), x


def test_log1mexp_extremes():
    # very negative: log(1 - e^x) ~ -e^x, tiny but exact in float64 and never NaN
    big = torch.tensor([-200.0, -700.0, -1e4], dtype=torch.float64)
    # the same exp on both sides; log1p(z) of so small a z is z within its 2 ulp
    torch.testing.assert_close(log1mexp(big), -torch.exp(big), rtol=4 * U64, atol=0)
    f32 = log1mexp(torch.tensor([-200.0, -1e4]))
    assert torch.all(f32 <= 0) and torch.all(f32 > -1e-30)
    # at (and just below) zero: finite, very negative, never NaN
    near0 = log1mexp(torch.tensor([0.0, -1e-30, -1e-12], dtype=torch.float64))
    assert torch.isfinite(near0).all() and torch.all(near0 < -20)


def test_log1mexp_gradient_moderate_inputs():
    x = torch.tensor([-1e-3, -0.5, -1.0, -10.0], dtype=torch.float64, requires_grad=True)
    log1mexp(x).sum().backward()
    # d/dx log(1 - e^x) = -e^x / (1 - e^x) = -1 / expm1(-x). Autograd's chain is two
    # elementary functions (4u each), a difference from 1 of a term at most 1/2 (its error at
    # most doubled) and two roundings, about 12u; the reference one function and a division,
    # 5u: within 20u of each other.
    torch.testing.assert_close(x.grad, -1 / torch.expm1(-x.detach()), rtol=20 * U64, atol=0)


def test_log1mexp_gradient_is_finite_near_zero_float32():
    x = torch.tensor([-1e-10, -1e-9, -3e-8], requires_grad=True)
    log1mexp(x).sum().backward()
    assert torch.isfinite(x.grad).all(), x.grad


def test_token_logprobs_keeps_float64():
    logits = torch.randn(3, 7, dtype=torch.float64)
    lp = token_logprobs(logits, torch.tensor([0, 1, 2]), 0.7)
    assert lp.dtype == torch.float64


# -- the pure helpers, on made-up numbers -----------------------------------------------------


def test_token_logprobs_and_completion_losses_by_hand():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0], [1.0, 2.0, 3.0]])
    targets = torch.tensor([0, 2, 1])
    c = 0.7
    lp = token_logprobs(logits, targets, c)
    ref = torch.log_softmax(c * logits.double(), -1)[torch.arange(3), targets]
    d = logprob_bound(3, c * 3.0)  # three logits, the largest 3 before the coldness
    torch.testing.assert_close(lp.double(), ref, rtol=0, atol=d)
    index = torch.tensor([0, 0, 1])  # tokens 0,1 -> completion 0 (promote); 2 -> 1 (suppress)
    sup = torch.tensor([False, True])
    lengths = torch.tensor([2.0, 1.0])
    out = completion_losses(lp, index, sup, lengths, Objective())
    expected = [-(ref[0] + ref[1]).item(), -math.log(1 - math.exp(ref[2].item()))]
    assert math.exp(ref[2].item()) < 0.5  # log(1 - p) moves no more than log p (`bounds`)
    assert_losses_close(out.tolist(), expected, [2 * d, d])
    norm = completion_losses(lp, index, sup, lengths, Objective(length_normalize=True))
    assert_losses_close(norm.tolist(), [expected[0] / 2, expected[1]], [d, d])
    variant = completion_losses(lp, index, sup, lengths, Objective(suppression="logprob"))
    assert_losses_close(variant.tolist(), [expected[0], ref[2].item()], [2 * d, d])
