"""Stop rules: unit tests on made-up loss histories, and their effect on the optimizer."""

from __future__ import annotations

import numpy as np
import pytest
from optimizer_cases import (
    DP_ON,
    hist,
    initial_loss,
)
from tolerances import loss_bounds

from steerlens import (
    Datapoint,
    optimize_vector,
)
from steerlens.errors import (
    SpecError,
)
from steerlens.training.stopping import Plateau, TargetLoss


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


def test_target_loss_stops_the_optimization(tiny):
    dp = Datapoint(DP_ON[0], promote=DP_ON[1], chat=False)
    start = initial_loss(tiny, dp)
    res = optimize_vector(tiny, dp, 1, lr=0.1, max_steps=100, stop=(TargetLoss(value=start - 1),))
    assert res.stop_reason.startswith("target reached") and "total loss" in res.stop_reason
    assert 0 < res.steps < 100 and len(res.loss_history) == res.steps + 1
    assert res.loss_history[-1].sum() < start - 1 <= res.loss_history[-2].sum()

    dp_t = Datapoint(DP_ON[0], promote=DP_ON[1], promote_targets=[start - 1], chat=False)
    rule = TargetLoss(per_completion=True, patience=2)
    res2 = optimize_vector(tiny, dp_t, 1, lr=0.1, max_steps=100, stop=(rule,))
    assert "every completion" in res2.stop_reason
    assert res2.steps == res.steps + 1  # one more step for patience 2
    assert np.all(res2.loss_history[-2:, 0] < start - 1)


def test_plateau_stops_the_optimization(tiny):
    dp = Datapoint(DP_ON[0], promote=DP_ON[1], chat=False)
    # Steps of 1e-9 move the loss far less than its float32 rounding, which the bound of two
    # orders covers (tests/tolerances.py); a rounding flip of the 1e-6 default would restart it.
    eps = float(loss_bounds(tiny, dp).sum())
    res = optimize_vector(tiny, dp, 1, lr=1e-9, max_steps=50, stop=(Plateau(eps, patience=3),))
    assert res.stop_reason.startswith("plateau")
    assert res.steps == 3


def test_max_steps_otherwise(tiny):
    dp = Datapoint(DP_ON[0], promote=DP_ON[1], chat=False)
    stop = (Plateau(eps=1e-12), TargetLoss(value=-1.0))
    res = optimize_vector(tiny, dp, 1, lr=0.1, max_steps=7, stop=stop)
    assert res.stop_reason == "max steps (7)"
    assert res.steps == 7 and res.loss_history.shape == (8, 1)
    zero = optimize_vector(tiny, dp, 1, max_steps=0)
    assert zero.steps == 0 and zero.loss_history.shape == (1, 1)
