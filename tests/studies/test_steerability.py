"""Per-prompt steerability: effects per multiplier, slopes, and the anti-steerable fraction."""

import numpy as np
import pytest
import torch

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
    steered = completion_logprobs(model, dp.prompt, list(dp.promote), steering=plan, chat=False)
    base = completion_logprobs(model, dp.prompt, list(dp.promote), chat=False)
    return float(steered.totals.double().mean() - base.totals.double().mean())


def test_effects_and_slopes_match_one_at_a_time(tiny):
    vector = _vector(tiny)
    strengths = (-1.0, 0.0, 0.5, 2.0)
    res = steerability(tiny, vector, EXAMPLES, strengths=strengths, batch_size=5)
    assert res.effects.shape == (3, 4) and res.strengths.tolist() == list(strengths)
    assert torch.equal(res.effects[:, 1], torch.zeros(3, dtype=torch.float64))
    for p, dp in enumerate(EXAMPLES):
        for k, m in enumerate(strengths):
            expected = _reference(tiny, Steering(vector, strength=m), dp)
            assert float(res.effects[p, k]) == pytest.approx(expected, abs=1e-4)
        slope = np.polyfit(strengths, res.effects[p].numpy(), 1)[0]
        assert float(res.slopes[p]) == pytest.approx(slope, abs=1e-9)


def test_a_plan_is_scaled_as_given(tiny):
    plan = Steering(_vector(tiny), strength=2.0, positions="prompt")
    res = steerability(tiny, plan, EXAMPLES[:1], strengths=(0.0, 1.0))
    expected = _reference(tiny, plan, EXAMPLES[0])
    assert float(res.effects[0, 1]) == pytest.approx(expected, abs=1e-4)


def _synthetic():
    strengths = torch.tensor([-1.0, 0.0, 1.0, 2.0], dtype=torch.float64)
    slopes = torch.tensor([2.0, -1.0, 0.5, 3.0], dtype=torch.float64)
    effects = slopes[:, None] * strengths[None, :]
    return SteerabilityResult(
        prompts=("a", "b", "c", "d"),
        strengths=strengths,
        effects=effects,
        unsteered_logprob=torch.zeros(4, dtype=torch.float64),
        slopes=slopes,
    )


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
    }
    assert res.to_pandas().shape == (16, 5)
    assert res.to_dict()["anti_steerable"] == 0.25
    text = repr(res)
    assert "anti-steerable 25%" in text and text.splitlines()[2].startswith("'b'")


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
