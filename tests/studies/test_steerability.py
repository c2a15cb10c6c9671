"""Per-prompt steerability: effects per multiplier, slopes, and the anti-steerable fraction."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from tolerances import REAL, TINY32, U32, kl_bound

from steerlens import Datapoint, Steering, SteeringVector
from steerlens.errors import InputError, ModelMismatchError, SpecError
from steerlens.evaluation import completion_logprobs
from steerlens.studies.steerability import SteerabilityResult, steerability

EXAMPLES = [
    Datapoint("the cat", promote=" sat", chat=False),
    Datapoint("a dog in", promote=[" the", " a"], chat=False),
    Datapoint("Pat", promote=" ran", chat=False),
]


def _vector(model):
    v = torch.randn(64, generator=torch.Generator().manual_seed(4)) * 2
    return SteeringVector.from_tensor(v, layer=1, model=model)


def _reference(model, plan, dp):
    """The effect computed one completion at a time, and how far steerability's batched rows
    may be from it. Batching adds the same float32 terms in another order: each token's
    log-probability moves by at most TINY32 (tests/tolerances.py), so a k-token total by
    k TINY32, and completion_logprobs sums its k terms in float32 (at most k u |total|, the
    terms all negative). An effect, steered minus unsteered, gets both totals' bounds; the
    mean over completions, the mean of theirs."""
    steered = completion_logprobs(model, dp.prompt, list(dp.promote), steering=plan, chat=False)
    base = completion_logprobs(model, dp.prompt, list(dp.promote), chat=False)
    k = torch.tensor([len(t) for t in base.tokens[0]], dtype=torch.float64)
    bound = sum(k * (TINY32 + U32 * r.totals[0].double().abs()) for r in (steered, base))
    effect = float(steered.totals.double().mean() - base.totals.double().mean())
    return effect, float(bound.mean())


def test_effects_and_slopes_match_one_at_a_time(tiny):
    vector = _vector(tiny)
    strengths = (-1.0, 0.0, 0.5, 2.0)
    res = steerability(tiny, vector, EXAMPLES, strengths=strengths, batch_size=5)
    assert res.effects.shape == (3, 4) and res.strengths.tolist() == list(strengths)
    assert torch.equal(res.effects[:, 1], torch.zeros(3, dtype=torch.float64))
    for p, dp in enumerate(EXAMPLES):
        for k, m in enumerate(strengths):
            expected, bound = _reference(tiny, Steering(vector, strength=m), dp)
            assert abs(float(res.effects[p, k]) - expected) <= bound, (p, k)
        # The same float64 effects fitted two ways (closed form, numpy's lstsq): float64
        # rounding of a 4-point fit, far below 1e-9 for effects of a few nats.
        slope = np.polyfit(strengths, res.effects[p].numpy(), 1)[0]
        assert float(res.slopes[p]) == pytest.approx(slope, abs=1e-9)
    # Every steered effect further than a real error from zero: the bound separates.
    assert (res.effects[:, [0, 2, 3]].abs() > REAL).all()


def test_a_plan_is_scaled_as_given(tiny):
    plan = Steering(_vector(tiny), strength=2.0, positions="prompt")
    res = steerability(tiny, plan, EXAMPLES[:1], strengths=(0.0, 1.0))
    expected, bound = _reference(tiny, plan, EXAMPLES[0])  # the bound: derived there
    assert abs(float(res.effects[0, 1]) - expected) <= bound
    # The plan's strength or its positions dropped moves the effect further: the check can fail.
    for wrong in (
        dataclasses.replace(plan, strength=1.0),
        dataclasses.replace(plan, positions="all"),
    ):
        assert abs(_reference(tiny, wrong, EXAMPLES[0])[0] - expected) > bound


def _synthetic(kl=(0.1, 0.0, 0.1, 0.2)):
    strengths = torch.tensor([-1.0, 0.0, 1.0, 2.0], dtype=torch.float64)
    slopes = torch.tensor([2.0, -1.0, 0.5, 3.0], dtype=torch.float64)
    effects = slopes[:, None] * strengths[None, :]
    return SteerabilityResult(
        prompts=("a", "b", "c", "d"),
        strengths=strengths,
        effects=effects,
        unsteered_logprob=torch.zeros(4, dtype=torch.float64),
        slopes=slopes,
        kl=None if kl is None else torch.tensor(kl, dtype=torch.float64),
    )


def _collapsed_rows():
    """The issue's case: a vector lifting its target by 29 nats at 1x, a model that breaks
    at 2x (every target log-prob falls, the KL on neutral prompts is 6 nats)."""
    effects = {"a": (-12.0, 0.0, 29.0, -60.0), "b": (-8.0, 0.0, 17.0, -45.0)}
    kl = (0.3, 0.0, 0.4, 6.0)
    return [
        {"prompt": p, "strength": s, "effect": e, "kl": k}
        for p, row in effects.items()
        for s, e, k in zip((-1.0, 0.0, 1.0, 2.0), row, kl, strict=True)
    ]


def test_summary_statistics():
    res = _synthetic()
    assert res.anti_steerable == 0.25 and res.anti_steerable_prompts == ("b",)
    assert res.mean_slope == pytest.approx(1.125)
    assert res.slope_std == pytest.approx(float(np.std([2.0, -1.0, 0.5, 3.0])))
    q1, q3 = np.percentile([2.0, -1.0, 0.5, 3.0], [25, 75])
    assert res.slope_iqr == pytest.approx(q3 - q1)
    rows = res.to_rows()
    assert len(rows) == 16 and rows[4] == {
        "prompt": "b",
        "strength": -1.0,
        "effect": 1.0,
        "slope": -1.0,
        "anti_steerable": True,
        "kl": 0.1,
        "coherent": True,
    }
    assert res.to_pandas().shape == (16, 7)
    assert res.to_dict()["anti_steerable"] == 0.25
    assert res.to_dict()["verdict"].startswith("Over multipliers -1 to 2 (side-effect KL <= 1")
    text = repr(res)
    assert "anti-steerable 25%" in text and text.splitlines()[3].startswith("'b'")


def test_collapsed_multipliers_give_no_anti_steerable_verdict():
    res = SteerabilityResult.from_rows(_collapsed_rows())
    assert res.coherent_strengths == (-1.0, 0.0, 1.0)
    assert res.anti_steerable == 0.0 and res.anti_steerable_prompts == ()
    assert res.slopes.tolist() == pytest.approx([20.5, 12.5])
    verdict = res.verdict()
    assert "0 of 2 prompts anti-steerable" in verdict and "Left out: 2 (KL 6)" in verdict
    # Every multiplier counted, as before, the collapse at 2x reads as anti-steerable.
    everything = SteerabilityResult.from_rows(_collapsed_rows(), max_kl=10.0)
    assert everything.anti_steerable == 1.0
    fig = res.plot()
    assert "0 of 2 prompts anti-steerable over multipliers -1 to 1" in fig.layout.title.text
    assert [s.x0 for s in fig.layout.shapes] == [1.75]


def test_a_budget_that_keeps_one_multiplier_gives_no_verdict():
    rows = [r | {"kl": 0.0 if r["strength"] == 0 else 5.0} for r in _collapsed_rows()]
    res = SteerabilityResult.from_rows(rows)
    assert res.coherent_strengths == (0.0,) and not res.has_verdict
    assert math.isnan(res.anti_steerable) and res.anti_steerable_prompts == ()
    assert res.verdict().startswith("No verdict: only multiplier(s) 0 keep the side-effect KL")


def test_without_a_coherence_measure_no_prompt_is_anti_steerable(tiny):
    res = _synthetic(kl=None)
    assert math.isnan(res.anti_steerable) and res.anti_steerable_prompts == ()
    assert "1 of 4 prompts have a negative slope" in res.verdict()
    measured = steerability(tiny, _vector(tiny), EXAMPLES, strengths=(0, 1), neutral_prompts=None)
    assert measured.kl is None and "not measured" in measured.verdict()


def test_the_kl_is_measured_on_the_neutral_prompts(tiny):
    from steerlens.evaluation import side_effect_kl

    vector = _vector(tiny)
    res = steerability(tiny, vector, EXAMPLES[:1], strengths=(0, 3), neutral_prompts=["in the"])
    expected = side_effect_kl(tiny, ["in the"], Steering(vector, strength=3), chat=False).mean
    assert res.kl is not None and float(res.kl[0]) == 0.0
    # steerability scores every multiplier's KL in shared batches (evaluation.next_token_kl),
    # so its rows are packed otherwise than side_effect_kl's: within kl_bound, and not zero.
    plan = Steering(vector, strength=3)
    assert abs(float(res.kl[1]) - expected) <= kl_bound(tiny, ["in the"], plan)
    assert expected > 10 * kl_bound(tiny, ["in the"], plan)
    tight = steerability(tiny, vector, EXAMPLES[:1], strengths=(0, 3), max_kl=0.0)
    assert tight.coherent.tolist() == [True, False]
    with pytest.raises(SpecError, match="max_kl"):
        steerability(tiny, vector, EXAMPLES, max_kl=-1.0)


def test_plot_draws_every_prompt_and_the_mean():
    fig = _synthetic().plot()
    assert len(fig.data) == 5
    colours = [t.line.color for t in fig.data[:4]]
    assert colours[1] != colours[0] == colours[2] == colours[3]
    assert fig.data[-1].name == "mean" and fig.data[-1].line.width > fig.data[0].line.width
    assert sum(bool(t.showlegend) for t in fig.data[:4]) == 2


@pytest.mark.parametrize(
    ("strengths", "match"),
    [
        ((), "two different"),
        ((1.0,), "two different"),
        ((0.0, float("inf")), "finite"),
        ("12", "list"),
        ((1, True), "finite"),
    ],
)
def test_bad_strengths_are_refused(tiny, strengths, match):
    with pytest.raises(SpecError, match=match):
        steerability(tiny, _vector(tiny), EXAMPLES, strengths=strengths)


def test_bad_examples_and_vectors_are_refused(tiny):
    with pytest.raises(InputError, match="no promote completions"):
        steerability(tiny, _vector(tiny), [Datapoint("the cat", suppress=" sat", chat=False)])
    with pytest.raises(InputError, match="empty"):
        steerability(tiny, _vector(tiny), [])
    with pytest.raises(SpecError, match="None"):
        steerability(tiny, None, EXAMPLES)
    other = SteeringVector.from_tensor(torch.ones(64), layer=1, model_id="someone/else")
    with pytest.raises(ModelMismatchError):
        steerability(tiny, other, EXAMPLES)
