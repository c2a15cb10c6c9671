"""The forward engines: packed and hooked agree with each other and with one plain steered
forward per completion, batched equals one by one, and gradients match finite differences."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from optimizer_cases import (
    datapoints,
    engine_losses,
    hand_losses,
    rand,
)
from tolerances import assert_losses_close, assert_same_direction, loss_bounds

from steerlens import (
    Add,
    Affine,
    Clamp,
    Datapoint,
    evaluate_objective,
    optimize_vector,
)
from steerlens.testing import tiny_model
from steerlens.training.data import tokenize
from steerlens.training.engines import HookedEngine, PackedEngine, make_engine, steering_function
from steerlens.training.kinds import AddSteering, AffineSteering, ClampSteering
from steerlens.training.objectives import Objective

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
    bounds = loss_bounds(tiny, dps, positions)  # float32 rounding in any order (tolerances.py)
    assert_losses_close(packed, hooked, bounds)
    strength = spec.strength if isinstance(spec, ClampSteering) else 1.0
    ref = hand_losses(tiny, dps, layers, make_iv, positions=positions, strength=strength)
    assert_losses_close(packed, ref, bounds)
    unsteered = engine_losses(tiny, dps, layers, {"v": torch.zeros(64)}, fast=True)
    assert (np.abs(packed.numpy() - unsteered.numpy()) > 10 * bounds).any()  # it can fail


def test_a_steering_one_position_off_exceeds_the_bound(tiny):
    """The derived bound is no blanket: steering one more token (last:3 for last:2) moves
    the losses past it."""
    dps = datapoints(tiny)
    v = rand(64, seed=1, scale=0.5)
    packed = engine_losses(tiny, dps, [1], {"v": v}, fast=True, positions="last:2")
    shifted = hand_losses(tiny, dps, [1], lambda s: Add(s * v), positions="last:3")
    gap = np.abs(packed.numpy() - np.asarray(shifted))
    assert (gap > 10 * loss_bounds(tiny, dps, "last:2")).any(), gap


def test_evaluate_objective_fast_equals_hooked(tiny):
    dps = datapoints(tiny)
    v = rand(64, seed=4)
    bounds = loss_bounds(tiny, dps)
    for layer in (0, 1, [0, 1]):
        fast = evaluate_objective(tiny, dps, layer, v)
        slow = evaluate_objective(tiny, dps, layer, v, fast=False)
        assert list(fast.losses) == list(slow.losses)
        assert_losses_close(list(fast.losses.values()), list(slow.losses.values()), bounds)


def test_batched_equals_one_by_one(tiny):
    dps = datapoints(tiny)
    v = rand(64, seed=5)
    batched = evaluate_objective(tiny, dps, 1, v)
    singles = []
    for dp in dps:
        for text, kind in dp.completions:
            one = Datapoint(dp.prompt, negate=dp.negate, **{kind: [text]}, chat=False)
            (loss,) = evaluate_objective(tiny, one, 1, v).losses.values()
            singles.append(loss)
    bounds = loss_bounds(tiny, dps)
    assert_losses_close(list(batched.losses.values()), singles, bounds)
    assert abs(batched.total - sum(singles)) <= bounds.sum()
    first = evaluate_objective(tiny, dps[0], 1, v)
    assert abs(first.total - sum(singles[:3])) <= bounds[:3].sum()


def test_hooked_optimization_follows_packed(tiny):
    dps = datapoints(tiny)
    fast = optimize_vector(tiny, dps, 1, lr=0.1, max_steps=5)
    slow = optimize_vector(tiny, dps, 1, lr=0.1, max_steps=5, fast=False)
    assert (fast.engine, slow.engine) == ("packed", "hooked")
    # Losses before the first step differ by the engines' rounding alone; later rows add
    # Adam's amplification of it (tests/tolerances.py). An amplified coordinate is one the
    # loss hardly depends on, so the losses stay within a few times the rounding over these
    # five small steps (lr 0.1): 10x is the allowance, still 10x below a one-position shift.
    bounds = loss_bounds(tiny, dps)
    assert_losses_close(fast.loss_history[0], slow.loss_history[0], bounds)
    assert_losses_close(fast.loss_history[1:], slow.loss_history[1:], 10 * bounds)
    other = optimize_vector(tiny, dps, 1, lr=0.1, max_steps=5, seed=1)
    assert_same_direction(fast.vector.vector, slow.vector.vector, other.vector.vector)


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
        fn = steering_function(spec.intervention(params), spec.strength, True)
        return Objective().losses(engine.logits(fn), engine.layout).sum()

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
        # Not derived: the central difference's error is h^2 / 6 times a third derivative
        # (no bound at hand) plus the float32 attention softmax's rounding over 2h; 1e-3 of
        # the gradient's norm is measured slack, and a wrong gradient (a sign, a missing
        # term, the wrong positions) is off by far more.
        assert abs(analytic - fd) <= 1e-3 * grad_norm, (k, analytic, fd, grad_norm)
