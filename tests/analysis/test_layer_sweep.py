"""Layer sweeps: per-layer numbers, their independence from the other layers, and figures."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from steerlens import Datapoint, OptimizeConfig, SteeringVector, evaluate_objective, runtime, steer
from steerlens.analysis.layer_sweep import layer_sweep
from steerlens.analysis.plots import save_html
from steerlens.errors import LayerError, SpecError
from steerlens.steering.steer import Steering
from steerlens.training.objectives import Objective


@pytest.fixture(scope="module")
def data():
    return [
        Datapoint("the cat", promote=[" in the", " a"], chat=False),
        Datapoint("a dog", promote=[" the"], suppress=[" cat"], chat=False),
    ]


def _fraction_with_the(texts):
    return sum("the" in t for t in texts) / len(texts)


def _vector():
    return torch.randn(64, generator=torch.Generator().manual_seed(3)) * 4


def test_per_layer_numbers_equal_single_layer_runs(tiny, data):
    kw = {
        "vector": _vector(),
        "prompts": ["x", "the long one"],
        "metric": _fraction_with_the,
        "max_new_tokens": 3,
    }
    sweep = layer_sweep(tiny, data, layers=[0, 1], **kw)
    assert sweep.layers == [0, 1]
    assert sweep.metrics == ["loss", "logprob_change", "kl", "behavior_rate"]
    for i, layer in enumerate([1, 0]):
        alone = layer_sweep(tiny, data, layers=[layer], **kw)
        j = sweep.layers.index(layer)
        for m in sweep.metrics:
            assert np.array_equal(sweep.values[m][j], alone.values[m][0]), (m, layer, i)
        assert sweep.generations[layer] == alone.generations[layer]


def test_optimized_sweep_equals_single_layer_runs(tiny, data):
    config = OptimizeConfig(lr=0.1, max_steps=3, seed=1)
    sweep = layer_sweep(tiny, data, optimize=True, config=config)
    alone = layer_sweep(tiny, data, optimize=True, config=config, layers=[1])
    assert sweep.optimized
    assert sweep.vectors[1].provenance["method"] == "one_shot_optimization"
    assert torch.equal(sweep.vectors[1].directions[1], alone.vectors[1].directions[1])
    for m in sweep.metrics:
        assert np.array_equal(sweep.values[m][1], alone.values[m][0])


def test_values_match_direct_measurements(tiny, data):
    v = _vector()
    res = layer_sweep(tiny, data, vector=v, layers=[1])
    ev = list(evaluate_objective(tiny, data, 1, v).losses.values())
    assert res.values["loss"][0].tolist() == pytest.approx([ev[0] + ev[1], ev[2] + ev[3]])
    base = list(evaluate_objective(tiny, data, 0, None).losses.values())
    assert res.baseline["loss"].tolist() == pytest.approx([base[0] + base[1], base[2] + base[3]])
    # Log-probabilities use the model's own probabilities (coldness 1), promoted only.
    lp = evaluate_objective(
        tiny,
        [Datapoint(d.prompt, promote=d.promote, chat=False) for d in data],
        1,
        v,
        objective=Objective(coldness=1.0),
    )
    lp0 = evaluate_objective(
        tiny,
        [Datapoint(d.prompt, promote=d.promote, chat=False) for d in data],
        1,
        None,
        objective=Objective(coldness=1.0),
    )
    expected = [-a + b for a, b in zip(lp.losses.values(), lp0.losses.values(), strict=True)]
    assert res.values["logprob_change"][0].tolist() == pytest.approx(expected, abs=1e-5)
    assert len(res.item_labels["logprob_change"]) == 3
    # KL of the last position, one prompt at a time, without padding.
    for i, prompt in enumerate(["the cat", "a dog"]):
        ids = torch.tensor([tiny.tokenizer(prompt, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            p0 = torch.log_softmax(tiny(ids)[0, -1].float(), -1)
            with steer(tiny, Steering(v, layer=1)):
                p1 = torch.log_softmax(tiny(ids)[0, -1].float(), -1)
        kl = float((p1.exp() * (p1 - p0)).sum())
        assert res.values["kl"][0, i] == pytest.approx(kl, rel=1e-4, abs=1e-6)


def test_zero_vector_changes_nothing(tiny, data):
    res = layer_sweep(tiny, data, vector=torch.zeros(64), layers=[0, 1])
    assert np.allclose(res.values["kl"], 0.0, atol=1e-6)
    assert np.allclose(res.values["logprob_change"], 0.0, atol=1e-5)
    assert np.allclose(res.values["loss"], res.baseline["loss"][None], atol=1e-5)


def test_steering_vector_input_and_units(tiny, data):
    sv = SteeringVector.from_tensor(_vector(), 0, model=tiny)
    nats = layer_sweep(tiny, data, vector=sv, layers=[1])
    bits = layer_sweep(tiny, data, vector=sv, layers=[1], unit="bits")
    assert bits.units["kl"] == "bits"
    assert bits.values["kl"] == pytest.approx(nats.values["kl"] / np.log(2), rel=1e-6)
    assert bits.values["loss"] == pytest.approx(nats.values["loss"] / np.log(2), rel=1e-6)
    assert nats.vectors[1].layers == [1]


def test_kl_divergence():
    p = torch.log_softmax(torch.randn(3, 10), -1)
    assert torch.allclose(runtime.kl_divergence(p, p), torch.zeros(3), atol=1e-6)
    q = torch.log_softmax(torch.randn(3, 10), -1)
    assert bool((runtime.kl_divergence(p, q) > 0).all())


def test_last_logits_batched_equals_single_under_steering(tiny):
    texts = ["a", "the cat sat on the mat", "in"]
    rows = [runtime.encode(tiny, t) for t in texts]
    with steer(tiny, Steering(_vector(), layer=1, positions="last:1")):
        batched = runtime.last_logits(tiny, rows)
        single = torch.cat([runtime.last_logits(tiny, [r]) for r in rows])
    torch.testing.assert_close(batched, single, rtol=0, atol=1e-5)


def test_figures(tiny, data, tmp_path):
    res = layer_sweep(
        tiny,
        data,
        vector=_vector(),
        prompts=["x", "yz", "w"],
        metric=_fraction_with_the,
        max_new_tokens=2,
    )
    for metric in res.metrics:
        fig = res.plot(metric)
        assert isinstance(fig, go.Figure)
        names = [t.name for t in fig.data]
        assert names == (["mean"] if metric == "behavior_rate" else ["max", "min", "mean"])
        assert fig.layout.title.text and fig.layout.xaxis.title.text.startswith("layer")
        assert "(" in fig.layout.yaxis.title.text  # the unit
        assert save_html(fig, tmp_path / f"{metric}.html").stat().st_size > 1000
    std = res.plot("kl", band="std")
    assert [t.name for t in std.data] == ["+1 std", "-1 std", "mean"]
    assert res.to_dict()["layers"] == [0, 1]
    assert res.best_layer("loss") in (0, 1)


def test_bad_inputs(tiny, data):
    with pytest.raises(SpecError, match="exactly one of vector"):
        layer_sweep(tiny, data)
    with pytest.raises(SpecError, match="exactly one of vector"):
        layer_sweep(tiny, data, vector=_vector(), optimize=True)
    with pytest.raises(LayerError, match="out of range"):
        layer_sweep(tiny, data, vector=_vector(), layers=[0, 2])
    res = layer_sweep(tiny, data, vector=_vector(), layers=[0])
    with pytest.raises(SpecError, match="no metric 'behavior_rate'"):
        res.plot("behavior_rate")
    with pytest.raises(SpecError, match="unknown band"):
        res.plot("kl", band="iqr")  # type: ignore[arg-type]
