"""The layer x strength grid: each cell against a one-cell-at-a-time computation, the unsteered
baseline, every kind of vector source, the frontier on hand-made grids, figures, tables and
errors."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from tolerances import TINY32, kl_bound

from steerlens import Steering, SteeringVector, generate
from steerlens.baselines import diff_of_means
from steerlens.errors import (
    InputError,
    LayerError,
    SpecError,
    SteerlensError,
    VectorShapeError,
)
from steerlens.evaluation import StringMatchJudge, distinct_n, reply_nll, side_effect_kl
from steerlens.studies.grid import FrontierPoint, GridResult, layer_strength_grid

PROMPTS = ["the cat", "a dog", "in the"]
NEUTRAL = ["the sun", "once"]


def _vector(seed: int = 1) -> torch.Tensor:
    return torch.randn(64, generator=torch.Generator().manual_seed(seed))


def _varied(text: str) -> bool:
    """A judge whose verdict differs between cells of the tiny model."""
    return len(set(text)) > 2


def _grid(model, source=None, **kw):
    args = {
        "layers": [0, 1],
        "strengths": [-6.0, 0.0, 6.0],
        "prompts": PROMPTS,
        "judge": _varied,
        "neutral_prompts": NEUTRAL,
        "max_new_tokens": 6,
        "progress": False,
    }
    args.update(kw)
    return layer_strength_grid(model, _vector() if source is None else source, **args)


# -- measurements --------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [1, 4, 64])
def test_every_cell_matches_a_one_cell_at_a_time_computation(tiny, batch_size):
    res = _grid(tiny, batch_size=batch_size)
    v = _vector()
    assert res.layers == (0, 1) and res.strengths == (-6.0, 0.0, 6.0)
    for i, layer in enumerate(res.layers):
        for j, strength in enumerate(res.strengths):
            plan = Steering(v, layer=layer, strength=strength)
            replies = generate(tiny, PROMPTS, plan, max_new_tokens=6)
            assert list(res.replies_at(layer, strength)) == replies
            verdicts = [_varied(r) for r in replies]
            assert res.successes[i, j] == sum(verdicts)
            # Exact: the same count over the same n; distinct n-grams count tokens, the
            # same call on the same replies.
            assert res.behavior[i, j] == sum(verdicts) / len(PROMPTS)
            assert res.distinct[i, j] == distinct_n(tiny, replies, 3).mean
            # The grid packs batch_size rows per pass, reply_nll 32: a mean of per-token
            # log-probabilities, each within TINY32 in any order (tests/tolerances.py).
            nll = reply_nll(tiny, PROMPTS, replies).mean
            assert abs(res.nll[i, j] - nll) <= TINY32, (layer, strength)
            # The KL likewise, packed otherwise: its bound is derived in kl_bound.
            kl = side_effect_kl(tiny, NEUTRAL, plan).mean
            assert abs(res.kl[i, j] - kl) <= kl_bound(tiny, NEUTRAL, plan), (layer, strength)
    assert res.behavior.shape == res.kl.shape == res.nll_ratio.shape == (2, 3)
    assert (res.low["behavior"] <= res.behavior).all()
    assert (res.behavior <= res.high["behavior"]).all()


def test_strength_zero_is_the_unsteered_model(tiny):
    res = _grid(tiny)
    unsteered = generate(tiny, PROMPTS, max_new_tokens=6)
    assert list(res.baseline_replies) == unsteered
    for i in range(len(res.layers)):
        assert list(res.replies[i][1]) == unsteered
        assert res.kl[i, 1] == 0.0
        assert res.nll_ratio[i, 1] == 1.0  # exact: strength 0 is the unsteered cell, x / x
        assert res.behavior[i, 1] == res.baseline["behavior"]
        assert res.distinct[i, 1] == res.baseline["distinct"]
    assert (res.kl[:, [0, 2]] > 0).all()


def test_every_source_kind_gives_the_same_grid(tiny):
    v = _vector()
    calls = []

    def per_layer(layer):
        calls.append(layer)
        return v

    sources = [
        v,
        SteeringVector.from_tensor(v, 1, model=tiny),
        {0: v, 1: v, 5: torch.zeros(3)},  # layers not swept are never read
        per_layer,
    ]
    grids = [_grid(tiny, s, layers=[1, 0, 1]) for s in sources]
    assert calls == [0, 1]  # once per layer, sorted, duplicates dropped
    for other in grids[1:]:
        assert other.replies == grids[0].replies
        np.testing.assert_array_equal(other.kl, grids[0].kl)


def test_a_caa_callable_uses_each_layers_own_direction(tiny):
    pos, neg = ["the cat", "the dog"], ["a cat", "a dog"]
    res = _grid(tiny, lambda layer: diff_of_means(tiny, pos, neg, layer), strengths=[4.0])
    for layer in (0, 1):
        expected = diff_of_means(tiny, pos, neg, layer).directions[layer]
        assert torch.equal(res.vectors[layer], expected)


def test_the_judge_runs_once_per_measured_cell(tiny):
    class Batched:
        def __init__(self):
            self.calls = 0

        def __call__(self, text):
            raise AssertionError("judge_all should be used")

        def judge_all(self, texts):
            self.calls += 1
            return [False] * len(texts)

    judge = Batched()
    _grid(tiny, judge=judge, neutral_prompts=None)
    assert judge.calls == 1 + 2 * 2  # unsteered, then the cells with strength != 0


def test_without_neutral_prompts_there_is_no_kl(tiny):
    res = _grid(tiny, neutral_prompts=None, strengths=[2.0])
    assert "kl" not in res.metrics
    with pytest.raises(SpecError, match="neutral_prompts"):
        _ = res.kl
    with pytest.raises(SpecError, match="neutral_prompts"):
        res.frontier(max_kl=1.0)
    assert res.frontier(max_nll_ratio=10.0).found


def test_frontier_steering_reproduces_its_cell(tiny):
    res = _grid(tiny)
    best = res.frontier()
    assert best.found and best.layer is not None and best.strength is not None
    replies = generate(tiny, PROMPTS, best.steering, max_new_tokens=6)
    assert tuple(replies) == res.replies_at(best.layer, best.strength)


def test_progress_bar_over_cells(tiny, capsys):
    _grid(tiny, strengths=[1.0], progress=True)
    assert "layer x strength grid" in capsys.readouterr().err


# -- tables, figures, repr -------------------------------------------------------------------


def test_rows_pandas_and_dict(tiny):
    res = _grid(tiny)
    rows = res.to_rows()
    assert len(rows) == 6
    assert rows[1]["layer"] == 0 and rows[1]["strength"] == 0.0
    # Exact: the rows are read off the same float64 arrays.
    assert rows[5]["kl"] == res.kl[1, 2]
    assert rows[5]["nll_ratio"] == res.nll_ratio[1, 2]
    assert {"behavior_low", "behavior_high", "successes", "n_prompts", "distinct"} <= set(rows[0])
    frame = res.to_pandas()
    assert frame.shape[0] == 6 and list(frame["layer"]) == [0, 0, 0, 1, 1, 1]
    plain = json.loads(json.dumps(res.to_dict()))
    assert plain["layers"] == [0, 1] and set(plain["vectors"]) == {"0", "1"}


def test_figures(tiny):
    res = _grid(tiny)
    heat = res.plot("behavior").data[0]
    assert heat.type == "heatmap" and np.asarray(heat.z).shape == (2, 3)
    assert list(heat.x) == ["-6", "0", "6"] and list(heat.y) == ["0", "1"]
    every = res.plot_all()
    assert [t.type for t in every.data] == ["heatmap"] * 4
    assert len(res.plot_all(["kl", "nll"]).data) == 2
    with pytest.raises(SpecError, match="no metric 'loss'"):
        res.plot("loss")


def test_repr_names_the_best_cell_and_the_default_frontier(tiny):
    text = repr(_grid(tiny))
    assert text.startswith("GridResult: 2 layers x 3 strengths, 3 prompts")
    assert "best cell, coherent or not: " in text and "NLL ratio <= 1.5: " in text
    assert "strength 0 (unsteered) -> behavior" in repr(
        _made(BEHAVIOR, RATIO).frontier(max_nll_ratio=1.0)
    )


# -- the frontier on hand-made grids ---------------------------------------------------------


def _made(behavior, nll_ratio, kl=None, distinct=None):
    beh = np.asarray(behavior, dtype=np.float64)
    shape = beh.shape
    nll = 2.0 * np.asarray(nll_ratio, dtype=np.float64)
    values = {
        "behavior": beh,
        "nll": nll,
        "distinct": np.full(shape, 0.9) if distinct is None else np.asarray(distinct, float),
    }
    if kl is not None:
        values["kl"] = np.asarray(kl, dtype=np.float64)
    return GridResult(
        layers=tuple(range(shape[0])),
        strengths=tuple(float(s) for s in range(shape[1])),
        prompts=("a", "b", "c", "d"),
        neutral_prompts=("n",) if kl is not None else (),
        values=values,
        low={k: v - 0.1 for k, v in values.items()},
        high={k: v + 0.1 for k, v in values.items()},
        successes=np.rint(beh * 4).astype(np.int64),
        replies=tuple(tuple(("",) * 4 for _ in range(shape[1])) for _ in range(shape[0])),
        baseline={"behavior": 0.25, "nll": 2.0, "distinct": 0.9},
        baseline_replies=("",) * 4,
        vectors={la: torch.ones(64) * la for la in range(shape[0])},
    )


BEHAVIOR = [[0.25, 0.5, 1.0], [0.25, 1.0, 1.0]]
RATIO = [[1.0, 1.3, 3.0], [1.0, 1.6, 1.2]]
KL = [[0.0, 0.2, 2.0], [0.0, 0.9, 0.5]]


def test_frontier_picks_the_best_rate_within_the_budget():
    res = _made(BEHAVIOR, RATIO, kl=KL)
    # Unlimited: three cells reach 1.0; the lowest NLL ratio (1.2) wins.
    assert (res.frontier().layer, res.frontier().strength) == (1, 2.0)
    within = res.frontier(max_nll_ratio=1.3)
    assert (within.layer, within.strength, within.behavior) == (1, 2.0, 1.0)
    tight = res.frontier(max_nll_ratio=1.3, max_kl=0.3)
    assert (tight.layer, tight.strength, tight.behavior) == (0, 1.0, 0.5)
    assert tight.within_budget == 3 and tight.successes == 2 and tight.n == 4
    assert tight.coherence == {"kl": 0.2, "nll_ratio": pytest.approx(1.3), "distinct": 0.9}
    assert tight.budget == {"max_kl": 0.3, "max_nll_ratio": 1.3}
    assert torch.equal(tight.steering.what, torch.zeros(64))
    assert "KL <= 0.3, NLL ratio <= 1.3: layer 0, strength 1" in repr(tight)
    plain = json.loads(json.dumps(tight.to_dict()))
    assert plain["layer"] == 0 and "vector" not in plain


def test_frontier_ties_go_to_the_gentlest_strength():
    res = _made([[1.0, 1.0], [1.0, 1.0]], [[1.1, 1.1], [1.1, 1.1]])
    best = res.frontier()
    assert (best.layer, best.strength) == (0, 0.0)


def test_undefined_values_are_outside_every_budget_they_are_tested_on():
    ratio = [[1.0, math.nan, 1.2], [1.0, 1.1, 1.2]]
    res = _made(BEHAVIOR, ratio, distinct=[[0.9, 0.2, 0.9], [0.9, math.nan, 0.8]])
    assert (res.frontier(max_nll_ratio=5.0).layer, res.frontier(max_nll_ratio=5.0).strength) == (
        1,
        1.0,
    )
    by_distinct = res.frontier(min_distinct=0.85)
    assert (by_distinct.layer, by_distinct.strength) == (0, 2.0)


def test_no_cell_within_budget_says_how_close_the_grid_came():
    res = _made(BEHAVIOR, RATIO, kl=KL)
    none = res.frontier(max_nll_ratio=0.5)
    assert isinstance(none, FrontierPoint) and not none.found
    assert math.isnan(none.behavior) and none.within_budget == 0
    assert "smallest NLL ratio is 1 (layer 0, strength 0)" in none.note
    assert repr(none).startswith("FrontierPoint(NLL ratio <= 0.5: no cell is within NLL")
    with pytest.raises(SpecError, match="no plan"):
        _ = none.steering


def test_a_looser_budget_never_lowers_the_best_behavior():
    rng = np.random.default_rng(0)
    res = _made(rng.random((3, 4)), 1 + rng.random((3, 4)), kl=rng.random((3, 4)))
    for metric, name in (("nll_ratio", "max_nll_ratio"), ("kl", "max_kl")):
        limits = np.sort(res.get(metric).flatten())
        best = [res.frontier(**{name: float(t)}).behavior for t in limits]
        assert best == sorted(best)
        assert best[-1] == res.behavior.max()


def test_plot_frontier_is_a_step_curve_of_frontier():
    res = _made(BEHAVIOR, RATIO, kl=KL)
    trace = res.plot_frontier("nll_ratio").data[0]
    assert trace.line.shape == "hv"
    assert list(trace.x) == [1.0, 1.2, 1.3, 1.6, 3.0]
    assert list(trace.y) == [0.25, 1.0, 1.0, 1.0, 1.0]
    distinct = _made(BEHAVIOR, RATIO, distinct=[[0.9, 0.8, 0.5], [0.9, 0.7, 0.6]])
    fig = distinct.plot_frontier("distinct")
    assert list(fig.data[0].x) == [0.9, 0.8, 0.7, 0.6, 0.5]  # loosening = lowering a minimum
    assert fig.layout.xaxis.autorange == "reversed"
    assert list(fig.data[0].y) == [0.25, 0.5, 1.0, 1.0, 1.0]
    with pytest.raises(SpecError, match="budget_metric"):
        res.plot_frontier("loss")


# -- errors --------------------------------------------------------------------------------


def _fails(*_args):
    raise RuntimeError("judge service down")


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"layers": []}, LayerError, "no layers given"),
        ({"layers": [0, 7]}, LayerError, "layers 7 is out of range"),
        ({"strengths": []}, SpecError, "no strengths"),
        ({"strengths": [1.0, math.inf]}, SpecError, "must be finite"),
        ({"strengths": [True]}, SpecError, "must be numbers"),
        ({"strengths": "big"}, SpecError, "must be numbers"),
        ({"prompts": []}, InputError, "prompt"),
        ({"neutral_prompts": []}, InputError, "neutral_prompts"),
        ({"judge": None}, SpecError, "needs a judge"),
        ({"judge": "yes"}, SpecError, "judge must be a callable"),
        ({"judge": _fails}, SpecError, "unsteered model: RuntimeError: judge service down"),
        ({"n": 0}, SpecError, "distinct-n"),
        ({"source": lambda layer: torch.ones(32)}, VectorShapeError, "vector for layer 0"),
        ({"source": lambda layer: [1.0] * 64}, SpecError, "layer 0 is a list"),
        ({"source": {0: torch.ones(64)}}, InputError, r"no vector for layer\(s\) \[1\]"),
        ({"source": "refusal"}, SpecError, "cannot steer with a str"),
        ({"source": torch.full((64,), math.nan)}, SteerlensError, "NaN"),
    ],
)
def test_bad_input_is_refused_with_the_fix(tiny, change, error, match):
    source = change.pop("source", None)
    with pytest.raises(error, match=match):
        _grid(tiny, source, **change)


def test_a_failing_judge_is_named_with_its_cell(tiny):
    def late(text):
        if late.calls >= len(PROMPTS):  # the unsteered replies pass
            raise KeyError("no verdict")
        late.calls += 1
        return False

    late.calls = 0
    with pytest.raises(SpecError, match="at layer 0, strength -6: KeyError") as info:
        _grid(tiny, judge=late)
    assert isinstance(info.value.__cause__, KeyError)


def test_bad_frontier_budgets_and_cells_are_refused():
    res = _made(BEHAVIOR, RATIO, kl=KL)
    with pytest.raises(SpecError, match="max_kl must be a number"):
        res.frontier(max_kl=math.nan)
    with pytest.raises(SpecError, match="layer 4 is not in the grid"):
        res.replies_at(4, 0.0)
    with pytest.raises(SpecError, match="strength 9 is not in the grid"):
        res.replies_at(0, 9.0)


# -- the real model ------------------------------------------------------------------------


@pytest.mark.slow
def test_stronger_caa_steering_moves_the_real_model_further(smol):
    pos = ["I love this, it is wonderful", "What a great and happy day"]
    neg = ["I hate this, it is awful", "What a terrible and sad day"]
    res = layer_strength_grid(
        smol,
        lambda layer: diff_of_means(smol, pos, neg, layer),
        layers=[3, 9],
        strengths=[1.0, 8.0],
        prompts=["My day was", "The movie was"],
        judge=StringMatchJudge([" love", " great", " happy", " wonderful"]),
        neutral_prompts=["The capital of France is", "2 + 2 ="],
        max_new_tokens=8,
        progress=False,
    )
    assert (res.kl[:, 1] > res.kl[:, 0]).all(), res.kl
    assert np.isfinite(res.nll).all()


def test_a_budget_whose_cells_never_show_the_behavior_says_so():
    # Only strength 0 and a 0%-behavior cell are coherent; the model shows the behavior only
    # where it has collapsed (NLL ratio 4).
    res = _made([[0.0, 0.0, 1.0]], [[1.0, 1.2, 4.0]])
    res = dataclasses.replace(res, baseline=res.baseline | {"behavior": 0.0})
    point = res.frontier(max_nll_ratio=1.5)
    assert point.found and not point.shows_behavior
    assert point.summary() == (
        "no setting within NLL ratio <= 1.5 shows the behavior: 0 of 4 replies judged yes at "
        "every one of the 2 cells within NLL ratio <= 1.5 (unsteered 0%)."
    )
    assert "frontier" not in repr(res).splitlines()[2]
    assert res.frontier().shows_behavior and res.frontier().strength == 2.0


def test_a_budget_that_only_matches_the_unsteered_rate_says_so():
    res = _made([[0.25, 0.25, 1.0]], [[1.0, 1.2, 4.0]])
    point = res.frontier(max_nll_ratio=1.5)
    assert point.successes == 1 and not point.shows_behavior
    assert point.summary().startswith(
        "no setting within NLL ratio <= 1.5 shows the behavior more often than the unsteered "
        "model; the best of the 2 cells within NLL ratio <= 1.5: layer 0, strength 0"
    )


def test_cells_scored_together_keep_their_own_values_and_empty_replies(tiny, monkeypatch):
    from steerlens.studies import grid

    base = [" sat on", " ran far", " in"]
    cells = [[" sat on", "", " ran far"], ["", "", " in"], ["", "", ""]]
    monkeypatch.setattr(grid, "generate", lambda *a, **k: base)
    monkeypatch.setattr(grid, "generate_each", lambda model, items, plans, **k: cells[: len(plans)])
    res = layer_strength_grid(
        tiny,
        torch.ones(64),
        layers=[1],
        strengths=[1.0, 2.0, 3.0],
        prompts=PROMPTS,
        judge=StringMatchJudge(["sat"]),
        chat=False,
        batch_size=9,  # all three cells in one group, scored together
    )
    for j, replies in enumerate(cells):
        assert res.successes[0, j] == sum("sat" in r for r in replies)
        if not any(replies):
            assert math.isnan(res.nll[0, j])
            continue
        # Other batches, other padding: a per-token mean within TINY32 (tests/tolerances.py).
        assert abs(res.nll[0, j] - reply_nll(tiny, PROMPTS, replies, chat=False).mean) <= TINY32
