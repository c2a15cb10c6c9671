"""Calibration: the layer x strength grid's frontier under a coherence budget, with its curve,
the residual-norm scale and a ready plan."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from tolerances import U64, rescale_bound

from steerlens import Steering, SteeringVector, generate
from steerlens.analysis.scale import residual_norms
from steerlens.errors import SpecError
from steerlens.steering.positions import Positions
from steerlens.studies import Calibration, calibrate
from steerlens.studies.grid import layer_strength_grid

PROMPTS = ["the cat sat", "a dog ran", "in the"]
NEUTRAL = ["the sun", "once upon"]
STRENGTHS = [0.0, 1.0, 2.0, 4.0, 8.0]
BUDGET = {"max_nll_ratio": 1.5, "max_kl": 0.02}


def _varied(text: str) -> bool:
    """On the tiny model the vector below turns replies into "888888" as it grows."""
    return "8" in text


def _args(**kw):
    args = {
        "strengths": STRENGTHS,
        "neutral_prompts": NEUTRAL,
        "max_new_tokens": 5,
        "progress": False,
    }
    args.update(kw)
    return args


@pytest.fixture(scope="module")
def vector(tiny):
    v = torch.randn(64, generator=torch.Generator().manual_seed(5))
    # About the typical residual norm of the tiny model at layer 1.
    return SteeringVector.from_tensor(v / v.norm() * 0.19, layer=1, model=tiny)


@pytest.fixture(scope="module")
def cal(tiny, vector) -> Calibration:
    # The tests repeat calibrate's forwards, the same float32 sums in the same order (the
    # run's one thread count, conftest.py), and compare exactly.
    return calibrate(tiny, vector, PROMPTS, _varied, **BUDGET, **_args(), chat=False)


def test_it_is_the_grid_and_its_frontier(tiny, vector, cal):
    grid = layer_strength_grid(
        tiny, vector, layers=[1], prompts=PROMPTS, judge=_varied, **_args(), chat=False
    )
    for metric in grid.metrics:
        np.testing.assert_array_equal(cal.grid.get(metric), grid.get(metric))
    point = grid.frontier(**BUDGET)
    assert (cal.layer, cal.strength, cal.behavior) == (point.layer, point.strength, point.behavior)
    assert cal.budget == BUDGET
    # The budget binds: a stronger setting reaches more behavior, at a KL above it.
    assert cal.strength == 2.0 and 0 < cal.behavior < grid.frontier().behavior


def test_the_curve_has_every_strength_and_marks_the_budget_and_the_choice(cal):
    rows = cal.curve()
    assert [r["strength"] for r in rows] == STRENGTHS
    assert sum(r["chosen"] for r in rows) == 1
    chosen = next(r for r in rows if r["chosen"])
    assert chosen["within_budget"] and chosen["strength"] == cal.strength
    assert chosen["behavior"] == max(r["behavior"] for r in rows if r["within_budget"])
    for r in rows:
        assert r["within_budget"] == (r["nll_ratio"] <= 1.5 and r["kl"] <= 0.02)
        assert {"behavior_low", "behavior_high", "kl", "distinct"} <= set(r)


def test_the_plan_steers_at_the_chosen_point(tiny, vector, cal):
    plan = cal.steering
    assert isinstance(plan, Steering) and plan.what is vector
    assert (plan.layer, plan.strength) == (cal.layer, cal.strength)
    replies = generate(tiny, PROMPTS, plan, max_new_tokens=5, chat=False)
    assert tuple(replies) == cal.grid.replies_at(cal.layer, cal.strength)


def test_the_vector_is_put_in_scale_with_the_residual_stream(tiny, vector, cal):
    # calibrate's own forward (one batch of the three prompts, its batch_size 16): the same
    # float32 sums in the same order, so the same norms; the fraction is the same quotient.
    norms = residual_norms(tiny, PROMPTS, layers=[1], chat=False, batch_size=16)
    assert cal.fraction_of_residual() == norms.fraction(vector, 1)
    # |s| n / t against s (n / t) in float64: two roundings on each side.
    rel = 4 * U64
    assert cal.fraction_of_residual(strength=-3.0) == pytest.approx(
        3 * norms.fraction(vector, 1), rel=rel, abs=0
    )
    assert "of the typical residual norm at layer 1" in cal.guidance()
    assert "of the typical residual norm" in repr(cal)
    row = cal.curve()[3]
    assert row["fraction_of_residual"] == pytest.approx(
        4.0 * norms.fraction(vector, 1), rel=rel, abs=0
    )


def test_a_budget_nothing_meets_says_so(tiny, vector):
    cal = calibrate(tiny, vector, PROMPTS, _varied, max_nll_ratio=0.5, **_args(), chat=False)  # < 1
    assert not cal.found and cal.strength is None
    assert "no cell is within NLL ratio <= 0.5" in repr(cal)
    with pytest.raises(SpecError, match="no strength is within the budget"):
        _ = cal.steering
    assert not any(r["chosen"] or r["within_budget"] for r in cal.curve())
    assert len(cal.plot().data) >= 3  # still drawn: the curve shows how far it is


def test_layers_are_searched_too(tiny):
    v = torch.randn(64, generator=torch.Generator().manual_seed(5))
    cal = calibrate(
        tiny,
        v,
        PROMPTS,
        _varied,
        layers=[0, 1],
        max_kl=5.0,
        max_nll_ratio=None,
        **_args(),
        chat=False,
    )
    assert cal.grid.layers == (0, 1) and cal.layer in (0, 1)
    assert cal.budget == {"max_kl": 5.0}
    assert cal.steering.what is cal.grid.vectors[cal.layer]
    assert [r["layer"] for r in cal.curve(0)] == [0] * len(STRENGTHS)
    with pytest.raises(SpecError, match="layer 3 was not calibrated"):
        cal.curve(3)


def test_the_figure_shows_the_budget_line_and_the_chosen_point(cal):
    fig = cal.plot()
    names = [t.name for t in fig.data]
    assert names[:2] == ["behavior", "chosen"]
    assert "NLL ratio" in names and "side-effect KL" in names
    for limit in (1.5, 0.02):
        assert [s for s in fig.layout.shapes if s.y0 == limit == s.y1], f"budget {limit}"
    star = fig.data[1]
    assert list(star.x) == [cal.strength]


def test_plain_data(cal):
    data = json.loads(json.dumps(cal.to_dict()))
    assert data["point"]["strength"] == cal.strength
    assert len(data["curve"]) == len(STRENGTHS)
    # v / |v| * 0.19 in float32, measured again: 0.19 up to rescale_bound (tests/tolerances.py).
    assert math.isclose(data["vector_norms"]["1"], 0.19, rel_tol=rescale_bound(64), abs_tol=0)


def test_errors(tiny, vector):
    with pytest.raises(SpecError, match="layers="):
        calibrate(tiny, torch.ones(64), PROMPTS, _varied, **_args(), chat=False)
    with pytest.raises(SpecError, match="neutral_prompts"):
        calibrate(
            tiny, vector, PROMPTS, _varied, max_kl=1.0, **_args(neutral_prompts=None), chat=False
        )


def test_positions_restrict_every_cell_and_the_plan(tiny, vector):
    cal = calibrate(tiny, vector, PROMPTS, _varied, positions="opening:2", **_args(), chat=False)
    assert cal.grid.positions == Positions.opening(2)
    plan = cal.steering
    assert plan.positions == Positions.opening(2)
    for s in (4.0, 8.0):
        steered = generate(
            tiny,
            PROMPTS,
            Steering(vector, strength=s, positions="opening:2"),
            max_new_tokens=5,
            chat=False,
        )
        assert tuple(steered) == cal.grid.replies_at(1, s)
    assert cal.grid.frontier().steering.positions == Positions.opening(2)


@pytest.mark.parametrize(
    ("limit", "value"),
    [("max_nll_ratio", -1.0), ("max_nll_ratio", 0.0), ("max_kl", -0.5), ("min_distinct", 1.5)],
)
def test_a_budget_outside_its_domain_is_refused_before_any_generation(tiny, limit, value):
    from steerlens.evaluation import StringMatchJudge

    v = SteeringVector.from_tensor(torch.ones(64), layer=1, model=tiny)
    with pytest.raises(SpecError, match=rf"{limit} must be"):
        calibrate(tiny, v, ["never run"], StringMatchJudge(["x"]), **{limit: value}, chat=False)
