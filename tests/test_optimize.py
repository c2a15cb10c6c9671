"""``optimize_vector`` / ``evaluate_objective``: engines, gradients, constraints, stop rules,
determinism, the output-constrained phase, noise, and error handling (tiny model unless
marked slow)."""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pytest
import torch

import steerlens.optimize as opt_mod
from steerlens import (
    Add,
    Affine,
    Clamp,
    Datapoint,
    NormCap,
    OptimizeConfig,
    SteeringVector,
    evaluate_objective,
    optimize_vector,
    steer,
)
from steerlens import runtime as tl
from steerlens._engine import HookedEngine, PackedEngine, make_engine
from steerlens.constraints import Noise
from steerlens.data import tokenize
from steerlens.errors import (
    LayerError,
    NonFiniteError,
    SpecError,
    SteerlensError,
    VectorShapeError,
)
from steerlens.objectives import Objective
from steerlens.optimize import (
    AddSteering,
    AffineSteering,
    ClampSteering,
    OutputConstraint,
    _losses,
    _steer_fn,
)
from steerlens.runtime import TokenContext, token_context
from steerlens.steer import Steering
from steerlens.stopping import Plateau, TargetLoss
from steerlens.testing import tiny_model

REL = 1e-5


def gen(seed):
    return torch.Generator().manual_seed(seed)


def rand(*shape, seed=0, scale=1.0, dtype=torch.float32):
    return (torch.randn(*shape, generator=gen(seed)) * scale).to(dtype)


def datapoints(model):
    """Several datapoints, completions of different lengths (so the hooked engine pads), one
    negated, one in the chat template."""
    return [
        Datapoint("the cat sat", promote=[" on the mat", " in"], suppress=[" xyz"]),
        Datapoint("a dog ran far", promote=[" away from home!"], negate=True),
        Datapoint.chat(model, "Hi", promote=["Hello there"], suppress=["No"]),
    ]


def engine_losses(model, dps, layers, params, *, spec=None, objective=None, positions=None, fast):
    data = tokenize(model, dps, positions)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine = make_engine(model, data, layers, fast=fast)
    assert not [w for w in caught if "fast path" in str(w.message)], "packed path fell back"
    assert isinstance(engine, PackedEngine if fast else HookedEngine)
    any_neg = any(t.datapoint.negate for t in data)
    fn = _steer_fn(params, spec or AddSteering(), any_neg)
    with torch.no_grad():
        return _losses(engine, fn, objective or Objective()).double()


def hand_losses(model, dps, layers, make_iv, *, positions=None, coldness=0.7, strength=1.0):
    """Straightforward reference: one plain forward per completion, the intervention installed
    by ``steer`` (``make_iv(sign)``), float64 log-softmax, the METHOD.md formulas."""
    out = []
    for tdp in tokenize(model, dps, positions):
        sign = -1.0 if tdp.datapoint.negate else 1.0
        p = len(tdp.prompt_tokens)
        for comp in tdp.completions:
            tokens = torch.tensor([tdp.prompt_tokens + comp.tokens])
            ctx = TokenContext(torch.tensor([0]), torch.tensor([p]), 0)
            with (
                torch.no_grad(),
                steer(
                    model,
                    Steering(
                        make_iv(sign), layer=layers, positions=tdp.positions, strength=strength
                    ),
                ),
                token_context(ctx),
            ):
                logits = model(tokens)[0].double()
            lp = torch.log_softmax(coldness * logits, -1)
            rows = torch.arange(p - 1, p - 1 + len(comp.tokens))
            lp = lp[rows, torch.tensor(comp.tokens)]
            if comp.kind == "promote":
                out.append(float(-lp.sum()))
            else:
                out.append(float(-torch.log(-torch.expm1(lp)).sum()))
    return out


# -- engines ----------------------------------------------------------------------------------

CASES = {
    "add": (AddSteering(), [1], None),
    "add-layer0": (AddSteering(), [0], None),
    "add-prompt": (AddSteering(), [1], "prompt"),
    "add-last2": (AddSteering(), [1], "last:2"),
    "add-two-layers": (AddSteering(), [0, 1], None),
    "clamp": (ClampSteering(strength=2.0), [1], None),
    "clamp-last2-two-layers": (ClampSteering(strength=2.0), [0, 1], "last:2"),
    "affine": (AffineSteering(rank=2), [1], None),
    "affine-prompt-two-layers": (AffineSteering(rank=2), [0, 1], "prompt"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_packed_engine_equals_hooked_engine_and_hand(tiny, case):
    spec, layers, positions = CASES[case]
    dps = datapoints(tiny)
    v = rand(64, seed=1, scale=0.5)
    params = {"v": v}
    if isinstance(spec, AffineSteering):
        params |= {"left": rand(2, 64, seed=2, scale=0.3), "right": rand(2, 64, seed=3, scale=0.3)}

    def make_iv(sign):
        if isinstance(spec, AffineSteering):
            return Affine(sign * params["left"], params["right"], sign * v)
        if isinstance(spec, ClampSteering):
            return Clamp(sign * v)
        return Add(sign * v)

    kw = {"spec": spec, "positions": positions}
    packed = engine_losses(tiny, dps, layers, params, fast=True, **kw)
    hooked = engine_losses(tiny, dps, layers, params, fast=False, **kw)
    assert packed.shape == (6,)
    assert packed.tolist() == pytest.approx(hooked.tolist(), rel=REL)
    strength = spec.strength if isinstance(spec, ClampSteering) else 1.0
    ref = hand_losses(tiny, dps, layers, make_iv, positions=positions, strength=strength)
    assert packed.tolist() == pytest.approx(ref, rel=REL)
    unsteered = engine_losses(tiny, dps, layers, {"v": torch.zeros(64)}, fast=True)
    assert not np.allclose(packed.numpy(), unsteered.numpy(), rtol=1e-3)  # steering matters


def test_evaluate_objective_fast_equals_hooked(tiny):
    dps = datapoints(tiny)
    v = rand(64, seed=4)
    for layer in (0, 1, [0, 1]):
        fast = evaluate_objective(tiny, dps, layer, v)
        slow = evaluate_objective(tiny, dps, layer, v, fast=False)
        assert list(fast.losses) == list(slow.losses)
        assert list(fast.losses.values()) == pytest.approx(list(slow.losses.values()), rel=REL)


def test_batched_equals_one_by_one(tiny):
    dps = datapoints(tiny)
    v = rand(64, seed=5)
    batched = evaluate_objective(tiny, dps, 1, v)
    singles = []
    for dp in dps:
        for text, kind in dp.completions:
            one = Datapoint(dp.prompt, negate=dp.negate, **{kind: [text]})
            (loss,) = evaluate_objective(tiny, one, 1, v).losses.values()
            singles.append(loss)
    assert list(batched.losses.values()) == pytest.approx(singles, rel=REL)
    assert batched.total == pytest.approx(sum(singles), rel=REL)
    first = evaluate_objective(tiny, dps[0], 1, v)
    assert first.total == pytest.approx(sum(singles[:3]), rel=REL)


def test_the_optimizer_loss_is_evaluate_objective(tiny):
    dps = datapoints(tiny)
    res = optimize_vector(tiny, dps, 1, lr=0.1, max_steps=4)
    assert res.engine == "packed" and res.steps == 4
    assert res.loss_history.shape == (5, 6) and res.loss_history.dtype == np.float32
    assert len(res.labels) == 6 and res.labels[0].startswith("dp0 promote")
    ev = evaluate_objective(tiny, dps, 1, res.vector)
    assert list(ev.losses) == res.labels
    assert list(ev.losses.values()) == pytest.approx(res.loss_history[-1].tolist(), rel=REL)
    assert res.final_losses == dict(zip(res.labels, res.loss_history[-1].tolist(), strict=True))
    assert np.allclose(res.losses("hartleys"), res.loss_history / math.log(10), rtol=1e-6)
    prov = res.vector.provenance
    assert prov["loss_unit"] == "nats" and prov["steps"] == 4
    assert prov["datapoints"][1]["negate"] is True
    assert "nats" in repr(res)


def test_hooked_optimization_follows_packed(tiny):
    dps = datapoints(tiny)
    fast = optimize_vector(tiny, dps, 1, lr=0.1, max_steps=5)
    slow = optimize_vector(tiny, dps, 1, lr=0.1, max_steps=5, fast=False)
    assert (fast.engine, slow.engine) == ("packed", "hooked")
    assert np.allclose(fast.loss_history, slow.loss_history, rtol=1e-4)
    assert torch.allclose(fast.vector.vector, slow.vector.vector, atol=1e-4)


def test_several_layers_and_affine_results_round_trip(tiny):
    dps = datapoints(tiny)[:2]
    two = optimize_vector(tiny, dps, [0, 1], lr=0.1, max_steps=3)
    assert two.vector.layers == [0, 1]
    assert torch.equal(two.vector.directions[0], two.vector.directions[1])
    ev = evaluate_objective(tiny, dps, [0, 1], two.vector.vector)
    assert list(ev.losses.values()) == pytest.approx(two.loss_history[-1].tolist(), rel=REL)

    aff = optimize_vector(tiny, dps, 1, lr=0.1, max_steps=3, steering=AffineSteering(rank=2))
    left, right = aff.vector.affine[1]
    assert left.shape == right.shape == (2, 64)
    assert aff.vector.provenance["steering"] == "affine"
    ev = evaluate_objective(tiny, dps, 1, aff.vector)
    assert list(ev.losses.values()) == pytest.approx(aff.loss_history[-1].tolist(), rel=REL)

    cl = optimize_vector(tiny, dps, 1, lr=0.1, max_steps=3, steering=ClampSteering(strength=2.0))
    ev = evaluate_objective(tiny, dps, 1, cl.vector.vector, steering=ClampSteering(strength=2.0))
    assert list(ev.losses.values()) == pytest.approx(cl.loss_history[-1].tolist(), rel=REL)


def test_affine_factor_norm_cap(tiny):
    spec = AffineSteering(rank=2, factor_norm_cap=0.05, init_scale=1.0)
    res = optimize_vector(tiny, datapoints(tiny)[0], 1, lr=0.5, max_steps=2, steering=spec)
    left, right = res.vector.affine[1]
    assert torch.all(left.norm(dim=1) <= 0.05 + 1e-6)
    assert torch.all(right.norm(dim=1) <= 0.05 + 1e-6)


# -- gradient ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny64():
    return tiny_model().to(torch.float64)


GRAD_CASES = {
    "add-packed": (AddSteering(), True),
    "add-hooked": (AddSteering(), False),
    "clamp": (ClampSteering(strength=2.0), True),
    "affine": (AffineSteering(rank=2), True),
}


@pytest.mark.parametrize("case", list(GRAD_CASES))
def test_gradient_matches_finite_differences(tiny64, case):
    # The HF RMSNorm rounds through float32 even in a float64 model, hence h = 2e-3 and the
    # tolerance below.
    spec, fast = GRAD_CASES[case]
    model = tiny64
    dps = datapoints(model)
    data = tokenize(model, dps, "last:3")
    engine = make_engine(model, data, [0, 1], fast=fast)
    assert isinstance(engine, PackedEngine if fast else HookedEngine)
    names = ["v", "left", "right"] if isinstance(spec, AffineSteering) else ["v"]
    shapes = {"v": (64,), "left": (2, 64), "right": (2, 64)}
    # vectors comparable to the tiny model's residual stream (norm ~0.2), so that every part
    # of the steering function matters
    base = {
        n: rand(*shapes[n], seed=10 + i, scale=0.03, dtype=torch.float64)
        for i, n in enumerate(names)
    }

    def loss(params):
        return _losses(engine, _steer_fn(params, spec, True), Objective()).sum()

    params = {n: t.clone().requires_grad_(True) for n, t in base.items()}
    value = loss(params)
    assert value.dtype == torch.float64
    value.backward()
    grads = {n: params[n].grad for n in names}
    assert all(torch.isfinite(g).all() and g.abs().max() > 0 for g in grads.values())
    grad_norm = math.sqrt(sum(float((g**2).sum()) for g in grads.values()))
    h = 2e-3
    for k in range(4):
        d = {
            n: rand(*shapes[n], seed=100 + 7 * k + i, dtype=torch.float64)
            for i, n in enumerate(names)
        }
        norm = math.sqrt(sum(float((t**2).sum()) for t in d.values()))
        d = {n: t / norm for n, t in d.items()}
        with torch.no_grad():
            up = loss({n: base[n] + h * d[n] for n in names})
            down = loss({n: base[n] - h * d[n] for n in names})
        fd = float(up - down) / (2 * h)
        analytic = sum(float((grads[n] * d[n]).sum()) for n in names)
        assert abs(analytic - fd) <= 1e-3 * grad_norm, (k, analytic, fd, grad_norm)


# -- constraints ------------------------------------------------------------------------------


def test_norm_cap_holds_after_every_step(tiny):
    dp = datapoints(tiny)[0]
    kw = {"lr": 1.0, "constraints": (NormCap(0.5),), "seed": 3}
    full = optimize_vector(tiny, dp, 1, max_steps=6, **kw)
    for k in range(1, 7):
        res = optimize_vector(tiny, dp, 1, max_steps=k, **kw)
        # same seed: run k is a prefix of the 6-step run
        assert np.array_equal(res.loss_history, full.loss_history[: k + 1])
        assert res.vector.norm() <= 0.5 + 1e-6
        assert res.vector.norm() == pytest.approx(0.5, rel=1e-4)  # the cap was active
    free = optimize_vector(tiny, dp, 1, max_steps=2, lr=1.0, seed=3)
    assert free.vector.norm() > 1.0


def test_negated_datapoint_optimizes_minus_v(tiny):
    base = Datapoint("the cat sat", promote=[" on the mat"], suppress=[" in"])
    neg = Datapoint(base.prompt, promote=base.promote, suppress=base.suppress, negate=True)
    res = optimize_vector(tiny, neg, 1, lr=0.1, max_steps=5)
    at_minus = evaluate_objective(tiny, base, 1, -res.vector.vector)
    assert list(at_minus.losses.values()) == pytest.approx(res.loss_history[-1].tolist(), rel=REL)
    # Adam is sign-equivariant: optimizing the negated datapoint from u is optimizing the plain
    # one from -u, with the vector negated.
    u = rand(64, seed=8)
    a = optimize_vector(tiny, neg, 1, lr=0.1, max_steps=5, init=u)
    b = optimize_vector(tiny, base, 1, lr=0.1, max_steps=5, init=-u)
    assert torch.allclose(a.vector.vector, -b.vector.vector, atol=1e-5)
    assert np.allclose(a.loss_history, b.loss_history, rtol=REL)


# -- stop rules -------------------------------------------------------------------------------


def hist(*rows):
    return [torch.tensor(r, dtype=torch.float32) for r in rows]


def test_plateau_unit():
    rule = Plateau(eps=1e-3, patience=2)
    assert rule.check(hist([10.0])) is None
    assert rule.check(hist([10.0], [10.0])) is None  # needs patience + 1 values
    assert rule.check(hist([10.0], [9.0], [8.9995])) is None
    reason = rule.check(hist([10.0], [9.0], [8.9995], [8.999]))
    assert reason is not None and reason.startswith("plateau") and "2 steps" in reason
    assert rule.check(hist([9.0], [9.0], [8.0])) is None
    # the total is what counts: completions trading loss still plateau
    assert Plateau(eps=1e-6).check(hist([1.0, 2.0], [2.0, 1.0])) is not None
    assert Plateau(eps=1e-6).check(hist([1.0, 2.0], [1.0, 2.1])) is None
    assert Plateau().check(hist([5.0], [5.0])) is not None  # default eps 1e-6, patience 1


def test_target_loss_total_unit():
    rule = TargetLoss(value=5.0)
    assert rule.check(hist([3.0, 3.0])) is None  # total 6
    reason = rule.check(hist([3.0, 3.0], [2.0, 2.0]))
    assert reason is not None and "target reached" in reason and "total loss" in reason
    assert rule.check([]) is None
    rule2 = TargetLoss(value=5.0, patience=2)
    assert rule2.check(hist([6.0], [4.0])) is None
    assert rule2.check(hist([6.0], [4.0], [4.5])) is not None
    assert rule2.check(hist([4.0], [6.0], [4.5])) is None


def test_target_loss_per_completion_unit():
    rule = TargetLoss(value=2.0, per_completion=True)
    targets = [1.0, None]  # the second completion falls back to value=2.0
    assert rule.check(hist([0.5, 1.9]), targets) is not None
    assert "every completion" in rule.check(hist([0.5, 1.9]), targets)
    assert rule.check(hist([1.1, 0.1]), targets) is None
    assert rule.check(hist([0.5, 2.1]), targets) is None
    only_own = TargetLoss(per_completion=True, patience=2)
    assert only_own.check(hist([0.5, 0.5], [0.5, 0.5]), [1.0, 1.0]) is not None
    assert only_own.check(hist([1.5, 0.5], [0.5, 0.5]), [1.0, 1.0]) is None
    with pytest.raises(SpecError, match="needs a target for every completion"):
        only_own.check(hist([0.5, 0.5], [0.5, 0.5]), [1.0, None])
    with pytest.raises(SpecError, match="TargetLoss needs value= or per_completion=True"):
        TargetLoss()


DP_ON = ("the cat sat", [" on"])


def initial_loss(model, dp):
    return float(optimize_vector(model, dp, 1, max_steps=0).loss_history[0].sum())


def test_target_loss_stops_the_optimization(tiny):
    dp = Datapoint(DP_ON[0], promote=DP_ON[1])
    start = initial_loss(tiny, dp)
    res = optimize_vector(tiny, dp, 1, lr=0.1, max_steps=100, stop=(TargetLoss(value=start - 1),))
    assert res.stop_reason.startswith("target reached") and "total loss" in res.stop_reason
    assert 0 < res.steps < 100 and len(res.loss_history) == res.steps + 1
    assert res.loss_history[-1].sum() < start - 1 <= res.loss_history[-2].sum()

    dp_t = Datapoint(DP_ON[0], promote=DP_ON[1], promote_targets=[start - 1])
    rule = TargetLoss(per_completion=True, patience=2)
    res2 = optimize_vector(tiny, dp_t, 1, lr=0.1, max_steps=100, stop=(rule,))
    assert "every completion" in res2.stop_reason
    assert res2.steps == res.steps + 1  # one more step for patience 2
    assert np.all(res2.loss_history[-2:, 0] < start - 1)


def test_plateau_stops_the_optimization(tiny):
    dp = Datapoint(DP_ON[0], promote=DP_ON[1])
    res = optimize_vector(tiny, dp, 1, lr=1e-9, max_steps=50, stop=(Plateau(patience=3),))
    assert res.stop_reason.startswith("plateau")
    assert res.steps == 3


def test_max_steps_otherwise(tiny):
    dp = Datapoint(DP_ON[0], promote=DP_ON[1])
    stop = (Plateau(eps=1e-12), TargetLoss(value=-1.0))
    res = optimize_vector(tiny, dp, 1, lr=0.1, max_steps=7, stop=stop)
    assert res.stop_reason == "max steps (7)"
    assert res.steps == 7 and res.loss_history.shape == (8, 1)
    zero = optimize_vector(tiny, dp, 1, max_steps=0)
    assert zero.steps == 0 and zero.loss_history.shape == (1, 1)


# -- determinism, noise -----------------------------------------------------------------------


def test_same_seed_same_vector_bitwise(tiny):
    dps = datapoints(tiny)
    a = optimize_vector(tiny, dps, 1, lr=0.1, max_steps=5, seed=11)
    b = optimize_vector(tiny, dps, 1, lr=0.1, max_steps=5, seed=11)
    c = optimize_vector(tiny, dps, 1, lr=0.1, max_steps=5, seed=12)
    assert torch.equal(a.vector.vector, b.vector.vector)
    assert np.array_equal(a.loss_history, b.loss_history)
    assert not torch.equal(a.vector.vector, c.vector.vector)
    assert float(torch.cosine_similarity(a.vector.vector, c.vector.vector, dim=0)) < 0.99
    # the global torch RNG does not leak in
    torch.manual_seed(999)
    d = optimize_vector(tiny, dps, 1, lr=0.1, max_steps=5, seed=11)
    assert torch.equal(a.vector.vector, d.vector.vector)


def test_starting_norm_and_init(tiny):
    dp = datapoints(tiny)[0]
    res = optimize_vector(tiny, dp, 1, max_steps=0, starting_norm=3.0)
    assert res.vector.norm() == pytest.approx(3.0, rel=1e-6)
    u = rand(64, seed=21)
    res = optimize_vector(tiny, dp, 1, max_steps=0, init=u)
    assert torch.equal(res.vector.vector, u)
    sv = SteeringVector({1: u}, model_id=tl.model_id(tiny))
    res = optimize_vector(tiny, dp, 1, max_steps=0, init=sv)
    assert torch.equal(res.vector.vector, u)


@pytest.mark.parametrize(
    "noise",
    [
        Noise(scale=0.01),
        Noise(scale=0.01, project_off_gradient=True),
        Noise(scale=0.01, anticorrelated=True),
        Noise(scale=0.01, project_off_gradient=True, anticorrelated=True),
    ],
)
def test_noise_regulariser(tiny, noise):
    dp = datapoints(tiny)[0]
    kw = {"lr": 0.1, "max_steps": 5, "seed": 2}
    plain = optimize_vector(tiny, dp, 1, **kw)
    a = optimize_vector(tiny, dp, 1, constraints=(noise,), **kw)
    b = optimize_vector(tiny, dp, 1, constraints=(noise,), **kw)
    assert torch.isfinite(a.vector.vector).all()
    assert torch.equal(a.vector.vector, b.vector.vector)
    assert not torch.equal(a.vector.vector, plain.vector.vector)
    other = optimize_vector(tiny, dp, 1, constraints=(noise,), **(kw | {"seed": 5}))
    assert not torch.equal(a.vector.vector, other.vector.vector)


def test_noise_variants_differ_and_zero_noise_is_no_noise(tiny):
    dp = datapoints(tiny)[0]
    kw = {"lr": 0.1, "max_steps": 4, "seed": 2}
    plain = optimize_vector(tiny, dp, 1, **kw).vector.vector
    zero = optimize_vector(tiny, dp, 1, constraints=(Noise(0.0),), **kw).vector.vector
    assert torch.equal(plain, zero)
    variants = [
        optimize_vector(tiny, dp, 1, constraints=(n,), **kw).vector.vector
        for n in (
            Noise(0.05),
            Noise(0.05, project_off_gradient=True),
            Noise(0.05, anticorrelated=True),
        )
    ]
    assert not torch.equal(variants[0], variants[1])
    assert not torch.equal(variants[0], variants[2])


def test_noise_then_norm_cap(tiny):
    dp = datapoints(tiny)[0]
    res = optimize_vector(tiny, dp, 1, lr=1.0, max_steps=3, constraints=(Noise(1.0), NormCap(0.5)))
    assert res.vector.norm() <= 0.5 + 1e-6


# -- output-constrained phase -----------------------------------------------------------------


def check_phase(res):
    assert res.norm_phase is not None
    before, after = res.norm_phase
    assert after == pytest.approx(res.vector.norm(), rel=1e-6)
    bounds, final = res.loss_history[-2], res.loss_history[-1]
    assert np.all(final <= bounds + 1e-4), (final, bounds)
    return before, after


def test_output_constraint_lowers_norm_when_loss_allows(tiny):
    # From a vector that hurts the promotion, shrinking it also lowers the loss: feasible.
    dp = Datapoint(DP_ON[0], promote=DP_ON[1])
    good = optimize_vector(tiny, dp, 1, lr=0.1, max_steps=20).vector.vector
    res = optimize_vector(
        tiny,
        dp,
        1,
        max_steps=0,
        init=-3 * good,
        output_constraint=OutputConstraint(max_steps=50, lr=0.05),
    )
    before, after = check_phase(res)
    assert before == pytest.approx(3 * float(good.norm()), rel=1e-5)
    assert after < 0.5 * before
    assert res.loss_history.shape == (2, 1)


def test_output_constraint_never_raises_losses_or_norm(tiny):
    dps = datapoints(tiny)
    res = optimize_vector(
        tiny,
        dps,
        1,
        lr=0.1,
        max_steps=10,
        constraints=(NormCap(3.0),),
        output_constraint=OutputConstraint(max_steps=30, lr=0.05),
    )
    before, after = check_phase(res)
    assert after <= before + 1e-6 and after <= 3.0 + 1e-6
    assert res.loss_history.shape == (12, 6)


def test_output_constraint_lowers_norm_after_optimization(tiny):
    dps = datapoints(tiny)[0]
    res = optimize_vector(
        tiny,
        dps,
        1,
        lr=0.1,
        max_steps=30,
        output_constraint=OutputConstraint(max_steps=50, lr=0.01),
    )
    before, after = check_phase(res)
    assert after < before


# -- bad input --------------------------------------------------------------------------------


def test_no_completions_and_empty_completion(tiny):
    with pytest.raises(SteerlensError, match="no promote and no suppress"):
        optimize_vector(tiny, Datapoint("the cat"), 1)
    with pytest.raises(SteerlensError, match=r"completion is empty|tokenises to nothing"):
        optimize_vector(tiny, Datapoint("the cat", promote=[""]), 1)
    with pytest.raises(SteerlensError, match="no datapoints given"):
        optimize_vector(tiny, [], 1)


def test_completion_that_tokenises_to_nothing(tiny, monkeypatch):
    real = tl.encode

    def fake(m, t):
        return [] if t.endswith("~") else real(m, t)

    monkeypatch.setattr(tl, "encode", fake)
    monkeypatch.setattr("steerlens.runtime.tokens.encode", fake)
    dp = Datapoint("the cat", promote=[" sat"], suppress=["~"])
    with pytest.raises(SteerlensError, match="suppress completion '~' tokenises to nothing"):
        optimize_vector(tiny, dp, 1)


@pytest.mark.parametrize(
    ("layer", "error", "msg"),
    [
        (2, LayerError, "layer 2 is out of range"),
        (-1, LayerError, "layer -1 is out of range"),
        ([0, 5], LayerError, "layer 5 is out of range"),
        ([], LayerError, "no layer given"),
        ("1", LayerError, "layer must be an int"),
        (True, LayerError, "layer must be an int"),
        (1.0, LayerError, "layer must be an int"),
    ],
)
def test_bad_layer(tiny, layer, error, msg):
    dp = datapoints(tiny)[0]
    with pytest.raises(error, match=msg):
        optimize_vector(tiny, dp, layer)
    with pytest.raises(error, match=msg):
        evaluate_objective(tiny, dp, layer, torch.zeros(64))


@pytest.mark.parametrize("lr", [0.0, -0.1, float("nan")])
def test_bad_learning_rate(tiny, lr):
    with pytest.raises(SpecError, match="learning rate must be > 0"):
        optimize_vector(tiny, datapoints(tiny)[0], 1, lr=lr)
    with pytest.raises(SpecError, match="learning rate must be > 0"):
        OptimizeConfig(lr=lr)


def test_bad_numbers():
    for cap in (0.0, -1.0, float("nan")):
        with pytest.raises(SpecError, match="norm cap must be > 0"):
            NormCap(cap)
    with pytest.raises(SpecError, match="noise scale must be >= 0"):
        Noise(scale=-0.1)
    with pytest.raises(SpecError, match="max_steps must be >= 0"):
        OptimizeConfig(max_steps=-1)
    with pytest.raises(SpecError, match="starting_norm must be > 0"):
        OptimizeConfig(starting_norm=0.0)
    with pytest.raises(SpecError, match="affine rank must be >= 1"):
        AffineSteering(rank=0)
    with pytest.raises(SpecError, match="factor_norm_cap must be > 0"):
        AffineSteering(factor_norm_cap=0.0)


@pytest.mark.parametrize("steering", ["clamp", object(), Clamp(torch.ones(64)), None])
def test_contradictory_or_unknown_steering_is_refused(tiny, steering):
    with pytest.raises(SpecError, match=r"steering must be AddSteering\(\), ClampSteering"):
        optimize_vector(tiny, datapoints(tiny)[0], 1, steering=steering)


def test_unknown_option_and_bad_init(tiny):
    dp = datapoints(tiny)[0]
    with pytest.raises(SpecError, match="learning_rate"):
        optimize_vector(tiny, dp, 1, learning_rate=0.1)
    with pytest.raises(VectorShapeError, match="init vector has size 32"):
        optimize_vector(tiny, dp, 1, init=torch.zeros(32))
    bad = torch.zeros(64)
    bad[3] = float("nan")
    with pytest.raises(NonFiniteError, match="init vector has 1 NaN/inf"):
        optimize_vector(tiny, dp, 1, init=bad)


def test_non_finite_loss_mid_run_stops_and_returns_last_finite_vector(tiny, monkeypatch):
    dp = datapoints(tiny)[0]
    kw = {"lr": 0.1, "max_steps": 10, "seed": 4}
    reference = optimize_vector(tiny, dp, 1, **(kw | {"max_steps": 2}))
    calls = []
    real = opt_mod._losses

    def poisoned(engine, fn, objective):
        out = real(engine, fn, objective)
        calls.append(1)
        return out * float("nan") if len(calls) == 4 else out  # the loss at step 3

    monkeypatch.setattr(opt_mod, "_losses", poisoned)
    with pytest.warns(UserWarning, match="non-finite loss at step 3"):
        res = optimize_vector(tiny, dp, 1, **kw)
    assert "non-finite loss at step 3" in res.stop_reason
    assert "step 2" in res.stop_reason
    assert torch.isfinite(res.vector.vector).all()
    assert torch.equal(res.vector.vector, reference.vector.vector)
    assert np.array_equal(res.loss_history, reference.loss_history)
    assert np.isfinite(res.loss_history).all()


@pytest.mark.filterwarnings("ignore:steerlens. non-finite loss")
def test_non_finite_loss_at_the_first_step_is_an_error(tiny):
    dp = datapoints(tiny)[0]
    with pytest.raises(NonFiniteError, match="at the start point"):
        optimize_vector(tiny, dp, 1, objective=Objective(coldness=3e38), max_steps=3)


def test_huge_learning_rate_keeps_the_vector_finite(tiny):
    res = optimize_vector(tiny, datapoints(tiny)[0], 1, lr=1e30, max_steps=3)
    assert torch.isfinite(res.vector.vector).all()
    assert np.isfinite(res.loss_history).all()


def test_non_finite_gradient_stops_gracefully(tiny):
    dp = datapoints(tiny)[0]
    # The loss is finite at v = 3e38 (RMSNorm maps the overflow to 0) but its gradient is NaN.
    res = optimize_vector(tiny, dp, 1, init=torch.full((64,), 3e38), max_steps=5)
    assert "non-finite" in res.stop_reason
    assert re.search(r"step \d+", res.stop_reason)
    assert torch.isfinite(res.vector.vector).all()


# -- tokenisation at the prompt/completion boundary -------------------------------------------


def test_boundary_merge_warns_and_scores_completion_tokens_alone(tiny):
    prompt, completion = "at t", "he end"  # "Ġt" + "he" -> " the" when tokenised jointly
    dp = Datapoint(prompt, promote=[completion])
    with pytest.warns(UserWarning, match="merges with the end of its prompt"):
        (tdp,) = tokenize(tiny, dp)
    assert tdp.completions[0].boundary_merged
    assert tdp.completions[0].tokens == tl.encode(tiny, completion)
    assert tdp.prompt_tokens + tdp.completions[0].tokens != tl.encode(tiny, prompt + completion)
    v = rand(64, seed=6)
    with pytest.warns(UserWarning, match="merges with the end of its prompt"):
        ev = evaluate_objective(tiny, dp, 1, v)
    (got,) = ev.losses.values()
    with pytest.warns(UserWarning, match="merges with the end of its prompt"):
        (ref,) = hand_losses(tiny, dp, [1], lambda s: Add(s * v))
    assert got == pytest.approx(ref, rel=REL)
    with pytest.warns(UserWarning, match="merges with the end of its prompt"):
        res = optimize_vector(tiny, dp, 1, max_steps=1)
    assert res.loss_history.shape == (2, 1)


# -- the real model ---------------------------------------------------------------------------


@pytest.mark.slow
def test_promotion_vector_on_smollm2(smol):
    dp = Datapoint.chat(
        smol, "Tell me a fact about the ocean.", promote=["Arr matey! The ocean be deep."]
    )
    res = optimize_vector(smol, dp, 10, lr=0.3, max_steps=10)
    assert res.engine == "packed"
    first, last = float(res.loss_history[0, 0]), float(res.loss_history[-1, 0])
    assert last < 0.5 * first, res.loss_history[:, 0]
    assert res.vector.layers == [10] and res.vector.vector.shape == (smol.cfg.d_model,)
    assert torch.isfinite(res.vector.vector).all()


def test_objective_scorer_equals_evaluate_objective_for_many_vectors(tiny):
    from steerlens.optimize import ObjectiveScorer

    dps = datapoints(tiny)
    scorer = ObjectiveScorer(tiny, dps, 1, unit="bits")
    g = torch.Generator().manual_seed(3)
    for v in [None, *(torch.randn(64, generator=g) for _ in range(3))]:
        assert scorer(v).losses == evaluate_objective(tiny, dps, 1, v, unit="bits").losses


def test_unknown_setting_names_the_valid_ones(tiny):
    with pytest.raises(SpecError, match=r"unknown OptimizeConfig setting\(s\) 'learning_rate'.*lr"):
        optimize_vector(tiny, Datapoint("a", promote=[" b"]), 1, learning_rate=0.1)
