"""Layer sweeps: per-layer numbers, their independence from the other layers, and figures.

Tolerances (tests/tolerances.py): the sweep's losses and log-probabilities are the very calls
the tests repeat, so they are equal exactly; its KLs batch the prompts that the direct
computation runs one at a time (another order: `kl_mean_bound`).
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from tolerances import TINY32, U32, U64, check_logits, kl_mean_bound, logprob_bound

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
    # The sweep's own evaluate_objective calls, summed per datapoint in the same order: exact.
    ev = list(evaluate_objective(tiny, data, 1, v).losses.values())
    assert res.values["loss"][0].tolist() == [ev[0] + ev[1], ev[2] + ev[3]]
    base = list(evaluate_objective(tiny, data, 0, None).losses.values())
    assert res.baseline["loss"].tolist() == [base[0] + base[1], base[2] + base[3]]
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
    assert res.values["logprob_change"][0].tolist() == expected
    assert len(res.item_labels["logprob_change"]) == 3
    # KL of the last position, one prompt at a time, without padding: another order.
    for i, prompt in enumerate(["the cat", "a dog"]):
        ids = torch.tensor([tiny.tokenizer(prompt, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            l0 = tiny(ids)[0, -1:].float()
            with steer(tiny, Steering(v, layer=1)):
                l1 = tiny(ids)[0, -1:].float()
        check_logits(l0)
        check_logits(l1)
        p0, p1 = l0.log_softmax(-1), l1.log_softmax(-1)
        kl = float((p1.exp() * (p1 - p0)).sum())
        bound = kl_mean_bound(p1, p0)
        assert abs(res.values["kl"][0, i] - kl) <= bound, (res.values["kl"][0, i], kl, bound)
        assert kl > 10 * bound  # the vector's effect: a sweep that dropped it would fail


def test_zero_vector_changes_nothing(tiny, data):
    # Adding zero leaves every activation as it was, and the steered forwards run the same
    # operations as the unsteered ones: equal exactly.
    res = layer_sweep(tiny, data, vector=torch.zeros(64), layers=[0, 1])
    assert np.all(res.values["kl"] == 0.0)
    assert np.all(res.values["logprob_change"] == 0.0)
    assert np.array_equal(res.values["loss"], np.repeat(res.baseline["loss"][None], 2, axis=0))


def test_steering_vector_input_and_units(tiny, data):
    sv = SteeringVector.from_tensor(_vector(), 0, model=tiny)
    nats = layer_sweep(tiny, data, vector=sv, layers=[1])
    bits = layer_sweep(tiny, data, vector=sv, layers=[1], unit="bits")
    assert bits.units["kl"] == "bits"
    # The same KLs, divided by log 2 once: exact.
    assert np.array_equal(bits.values["kl"], nats.values["kl"] / np.log(2))
    # Each completion's loss divided, then summed per datapoint, against the sum divided: a
    # float64 rounding each for the sum and the division, of positive losses, either way.
    want = nats.values["loss"] / np.log(2)
    np.testing.assert_allclose(bits.values["loss"], want, rtol=4 * U64, atol=0)
    assert nats.vectors[1].layers == [1]


def test_kl_divergence():
    logits = torch.randn(3, 10)
    p = torch.log_softmax(logits, -1)
    # kl_divergence takes log_softmax(p) again: two float32 computations of the same
    # log-probabilities, each term within logprob_bound, weights summing to 1 within 12 u.
    d = logprob_bound(10, float(logits.abs().max()))
    bound = d * (1 + 12 * U32)
    assert bool((runtime.kl_divergence(p, p).abs() <= bound).all())
    q = torch.log_softmax(torch.randn(3, 10), -1)
    assert bool((runtime.kl_divergence(p, q) > 10 * bound).all())


def test_last_logits_batched_equals_single_under_steering(tiny):
    texts = ["a", "the cat sat on the mat", "in"]
    rows = [runtime.encode(tiny, t) for t in texts]
    with torch.no_grad(), steer(tiny, Steering(_vector(), layer=1, positions="last:1")):
        batched = runtime.last_logits(tiny, rows)
        single = torch.cat([runtime.last_logits(tiny, [r]) for r in rows])
    check_logits(batched)
    # Padded or alone: logits in two orders, half of TINY32 (no log-softmax doubles it).
    torch.testing.assert_close(batched, single, rtol=0, atol=TINY32 / 2)
    # A padded row steered at its pad instead of its last token would read as unsteered.
    with torch.no_grad():
        unsteered = runtime.last_logits(tiny, rows)
    assert float((batched - unsteered).abs().max()) > 10 * TINY32


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
