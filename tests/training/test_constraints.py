"""Constraints: norm caps after every step, noise, affine factor caps, and the
output-constrained (norm-minimising) phase."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from optimizer_cases import (
    DP_ON,
    check_phase,
    datapoints,
)
from tolerances import rescale_bound

from steerlens import (
    Datapoint,
    NormCap,
    optimize_vector,
)
from steerlens.training.constraints import Noise, OutputConstraint
from steerlens.training.kinds import AffineSteering


def test_affine_factor_norm_cap(tiny):
    spec = AffineSteering(rank=2, factor_norm_cap=0.05, init_scale=1.0)
    res = optimize_vector(tiny, datapoints(tiny)[0], 1, lr=0.5, max_steps=2, kind=spec)
    left, right = res.vector.affine[1]
    cap = 0.05 * (1 + rescale_bound(64))  # each factor rescaled in float32 (tests/tolerances.py)
    assert torch.all(left.norm(dim=1) <= cap)
    assert torch.all(right.norm(dim=1) <= cap)


def test_norm_cap_holds_after_every_step(tiny):
    dp = datapoints(tiny)[0]
    kw = {"lr": 1.0, "constraints": (NormCap(0.5),), "seed": 3}
    full = optimize_vector(tiny, dp, 1, max_steps=6, **kw)
    for k in range(1, 7):
        res = optimize_vector(tiny, dp, 1, max_steps=k, **kw)
        # same seed: run k is a prefix of the 6-step run
        assert np.array_equal(res.loss_history, full.loss_history[: k + 1])
        # The cap was active: 0.5 up to the rescaling's float32 rounding (tests/tolerances.py).
        assert res.vector.norm() == pytest.approx(0.5, rel=rescale_bound(64), abs=0)
    free = optimize_vector(tiny, dp, 1, max_steps=2, lr=1.0, seed=3)
    assert free.vector.norm() > 1.0


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
    assert res.vector.norm() <= 0.5 * (1 + rescale_bound(64))  # the cap's float32 rounding


def test_output_constraint_lowers_norm_when_loss_allows(tiny):
    # From a vector that hurts the promotion, shrinking it also lowers the loss: feasible.
    dp = Datapoint(DP_ON[0], promote=DP_ON[1], chat=False)
    good = optimize_vector(tiny, dp, 1, lr=0.1, max_steps=20).vector.vector
    res = optimize_vector(
        tiny,
        dp,
        1,
        max_steps=0,
        init=-3 * good,
        output_constraint=OutputConstraint(max_steps=50, lr=0.05),
    )
    before, after = check_phase(res, tiny, dp)
    # -3 * good in float32: its norm is 3 |good| up to one rescaling's rounding.
    assert before == pytest.approx(3 * float(good.norm()), rel=rescale_bound(64), abs=0)
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
    before, after = check_phase(res, tiny, dps)
    # The phase keeps a point only when its norm is below the best one's (the start's, at
    # first), measured by the same operation: exactly no larger. The cap rescales in float32.
    assert after <= before and after <= 3.0 * (1 + rescale_bound(64))
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
    before, after = check_phase(res, tiny, dps)
    assert after < before
