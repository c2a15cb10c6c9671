"""The benchmark on the tiny model: methods, the letter-order control, equal cost, rows."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from tolerances import U64

from steerlens import Steering
from steerlens.datasets import ABItem, Behaviour
from steerlens.errors import SpecError
from steerlens.evaluation.many import propensities
from steerlens.studies.bench import (
    CAA,
    BenchSettings,
    EnsembleOfOneShot,
    OneShotEach,
    OneShotK,
    RandomDirection,
    benchmark,
)
from steerlens.studies.bench.methods import ABPrompts, answer_positions, answer_tokens
from steerlens.training import OptimizeConfig

SMALL = BenchSettings(
    test_items=4,
    examples=2,
    validation_items=2,
    entanglement_items=2,
    rollout_tokens=2,
    bootstrap=20,
    neutral_prompts=("Hi", "Tell me a story."),
    optimizer=OptimizeConfig(lr=0.1, max_steps=3),
)


def _items(n: int, tag: str) -> tuple[ABItem, ...]:
    return tuple(
        ABItem(f"{tag} question {i}?", f"good {i}", f"bad {i}", "AB"[i % 2], f"{tag}#{i}")
        for i in range(n)
    )


@pytest.fixture(scope="module")
def behaviours():
    return [
        Behaviour("toy", train=_items(8, "train"), test=_items(4, "test")),
        Behaviour("other", train=_items(6, "o-train"), test=_items(4, "o-test")),
    ]


def test_both_letter_orders_swap_the_matching_token(tiny):
    item = ABItem("Which?", "yes", "no", "A")
    prompts = ABPrompts.of(tiny, [item])
    a, b = answer_tokens(tiny)
    assert prompts.matching == (a, b) and prompts.other == (b, a)
    assert "(A) yes" in prompts.prompts[0] and "(A) no" in prompts.prompts[1]
    assert all(p.endswith("(") for p in prompts.prompts)


def test_a_letter_bias_scores_zero_on_both_order_items(tiny):
    """A steering that only moves the letter A up (the unembedding row of A minus B, pushed in
    at the last position) changes each order's propensity by opposite amounts, so the item's
    propensity (the mean of both orders) is unchanged: slope ~0."""
    items = [ABItem(f"q{i}?", "x", "y", "AB"[i % 2]) for i in range(3)]
    prompts = ABPrompts.of(tiny, items)
    a, b = answer_tokens(tiny)
    w_u = tiny.W_U if hasattr(tiny, "W_U") else tiny.unembed.W_U
    bias = (w_u[:, a] - w_u[:, b]).detach().float()
    layer = tiny.cfg.n_layers - 1
    plans = [None] + [
        Steering(bias, layer=layer, strength=s, positions=answer_positions(tiny))
        for s in (1.0, 4.0)
    ]
    scores = propensities(
        tiny, list(prompts.prompts), plans, list(prompts.matching), list(prompts.other)
    ).double()
    per_order = scores.reshape(3, 3, 2)
    item_level = per_order.mean(-1)
    # The bias moves single orders a lot ...
    assert (per_order[2] - per_order[0]).abs().max() > 0.05
    # ... but the both-order propensity far less (exactly 0 only if the letters' other
    # effects cancel too; the bound is relative to the per-order change).
    moved = (per_order[2] - per_order[0]).abs().mean()
    assert (item_level[2] - item_level[0]).abs().max() < 0.5 * moved


def test_benchmark_rows_metrics_and_best_of(tiny, behaviours):
    methods = [OneShotEach(), EnsembleOfOneShot(), CAA(n=4), RandomDirection()]
    result = benchmark(tiny, behaviours, methods, [1], SMALL)
    names = [r["method"] for r in result.rows if r["behaviour"] == "toy"]
    assert names.count("one-shot") == 2 and names.count("best of E") == 1
    assert {"ensemble", "CAA", "random"} <= set(names)
    for row in result.rows:
        key = (row["behaviour"], row["layer"], row["vector"])
        if row["method"] != "best of E":
            slopes = np.asarray(result.slopes[key])
            # the same slopes averaged by the same numpy mean
            assert row["mean_slope"] == float(slopes.mean())
            assert row["anti_steerable"] == float((slopes < 0).mean())
        assert row["multiplier"] > 0
        assert set(row) >= {"change_other", "change_mmlu"} or row["behaviour"] == "other"
        changes = [v for k, v in row.items() if k.startswith("change_")]
        # float64 squares, their sum in some order, a division and a root: each side within
        # (n + 2) u of the exact RMS of n changes
        rms = math.sqrt(np.mean(np.square(changes)))
        assert row["entanglement"] == pytest.approx(rms, rel=2 * (len(changes) + 2) * U64, abs=0)
    assert set(result.times) >= {"vectors: CAA", "calibration", "steerability", "entanglement"}
    board = result.leaderboard()
    assert set(board.index) == set(names)
    figs = result.figures()
    assert set(figs) == {"slopes", "tradeoff", "examples"}


def test_every_one_shot_vector_is_trained_once_in_one_batched_call(tiny, behaviours, monkeypatch):
    from steerlens.studies.bench import methods as methods_module

    calls = []
    real = methods_module.optimize_many
    monkeypatch.setattr(
        methods_module,
        "optimize_many",
        lambda model, jobs: calls.append(len(jobs)) or real(model, jobs),
    )
    chosen = [OneShotEach(), OneShotK(k=2, name="k=2"), EnsembleOfOneShot()]
    benchmark(tiny, behaviours[:1], chosen, [1], SMALL)
    assert calls == [SMALL.examples + 1]  # E singles (shared with the ensemble) and one k-group


def test_the_equal_cost_multiplier_meets_the_budget(tiny, behaviours):
    """Re-measure the p95 rollout KL at the reported multiplier: it equals the budget up to
    the calibration's interpolation (linear in log multiplier between grid points)."""
    from steerlens import runtime
    from steerlens.evaluation.many import rollout_kl

    settings = dataclasses.replace(SMALL, budget=0.01)
    result = benchmark(tiny, behaviours[:1], [RandomDirection()], [1], settings)
    row = result.rows[0]
    assert row["budget_reached"]
    gen = torch.Generator().manual_seed(10_000 + SMALL.seed + 1)
    v = torch.randn(tiny.cfg.d_model, generator=gen)
    plan = Steering(
        v / v.norm(), layer=1, strength=row["multiplier"], positions=answer_positions(tiny)
    )
    neutral = runtime.format_prompts(tiny, list(SMALL.neutral_prompts), chat=True)
    kl = rollout_kl(tiny, neutral, [plan], n_tokens=SMALL.rollout_tokens)
    p95 = float(torch.quantile(kl.double(), 0.95))
    assert 0.3 * settings.budget < p95 < 3 * settings.budget


def test_bad_settings_are_refused():
    with pytest.raises(SpecError, match="grid"):
        BenchSettings(grid=(0.0, 1.0))
    with pytest.raises(SpecError, match="budget"):
        BenchSettings(budget=0)


def test_duplicate_method_names_are_refused(tiny, behaviours):
    with pytest.raises(SpecError, match="names must differ"):
        benchmark(tiny, behaviours, [RandomDirection(), RandomDirection()], [1], SMALL)


def test_a_folder_resumes_and_refuses_other_settings(tiny, behaviours, tmp_path, monkeypatch):
    from steerlens.errors import StudyFolderError
    from steerlens.studies.bench import cells as run_mod

    folder = tmp_path / "bench"
    methods = [CAA(n=4), RandomDirection()]
    first = benchmark(tiny, behaviours, methods, [1], SMALL, folder=folder)

    def no_work(*args, **kwargs):
        raise AssertionError("a finished cell was run again")

    monkeypatch.setattr(run_mod.CellRun, "run", no_work)
    again = benchmark(tiny, behaviours, methods, [1], SMALL, folder=folder)
    # NaN != NaN, so compare the JSON text (the folder stores JSON; floats round-trip exactly).
    assert json.dumps(again.rows, sort_keys=True) == json.dumps(first.rows, sort_keys=True)
    assert again.slopes == first.slopes
    with pytest.raises(StudyFolderError, match="other settings"):
        benchmark(
            tiny, behaviours, methods, [1], dataclasses.replace(SMALL, budget=2.0), folder=folder
        )


def test_an_interrupted_run_keeps_finished_cells(tiny, behaviours, tmp_path, monkeypatch):
    from steerlens.studies.bench import cells as run_mod

    folder = tmp_path / "bench"
    methods = [RandomDirection()]
    real = run_mod.CellRun.run
    calls = []

    def second_fails(self, *args, **kwargs):
        calls.append(self.behaviour.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    with monkeypatch.context() as mp:
        mp.setattr(run_mod.CellRun, "run", second_fails)
        with pytest.raises(KeyboardInterrupt):
            benchmark(tiny, behaviours, methods, [1], SMALL, folder=folder)
    calls.clear()
    monkeypatch.setattr(
        run_mod.CellRun,
        "run",
        lambda self, *a, **k: (calls.append(self.behaviour.name), real(self, *a, **k))[1],
    )
    result = benchmark(tiny, behaviours, methods, [1], SMALL, folder=folder)
    assert calls == ["other"]  # only the unfinished cell ran
    assert {r["behaviour"] for r in result.rows} == {"toy", "other"}


def test_the_report_is_one_offline_page(tiny, behaviours, tmp_path):
    from steerlens.studies.bench.report import write_bench_report

    folder = tmp_path / "bench"
    benchmark(tiny, behaviours, [OneShotEach(), CAA(n=4)], [1], SMALL, folder=folder)
    page = write_bench_report(folder).read_text()
    assert page.count("Plotly.newPlot(") == 3 and page.count("<script") >= 3
    assert "Leaderboard" in page and "nrimsky/CAA" in page and "best of E" in page


def test_bench_cli_runs_resumes_and_reports(tiny, tmp_path, monkeypatch, capsys):
    from steerlens import cli
    from steerlens.loading import model as model_mod

    monkeypatch.setattr(model_mod, "load_model", lambda *a, **k: tiny)
    items = [
        {
            "question": f"Q{i}?\n\nChoices:\n(A) yes\n(B) no",
            "answer_matching_behavior": "(A)" if i % 2 else "(B)",
            "answer_not_matching_behavior": "(B)" if i % 2 else "(A)",
        }
        for i in range(20)
    ]
    data = tmp_path / "mine.json"
    data.write_text(json.dumps(items))
    out = tmp_path / "bench"
    argv = [
        "bench",
        "run",
        "--out",
        str(out),
        "--file",
        str(data),
        "--layers",
        "1",
        "--examples",
        "2",
        "--test-items",
        "3",
        "--entanglement-items",
        "2",
    ]
    assert cli.main(argv) == 0
    assert "one-shot" in capsys.readouterr().out
    assert cli.main(["bench", "report", str(out)]) == 0
    assert (out / "report.html").is_file()
    assert cli.main(["bench", "run", "--out", str(out), "--behaviour", "nope"]) == 2
    assert "not a bundled behaviour" in capsys.readouterr().err


def test_a_folder_records_settings_that_rebuild_exactly(tiny, behaviours):
    from steerlens.studies.bench.run import bench_spec

    spec = bench_spec(tiny, behaviours, [CAA(n=4)], [1], SMALL)
    assert BenchSettings.from_dict(spec["settings"], spec["optimizer"]) == SMALL


def test_contrasts_collected_for_all_layers_at_once_equal_one_layer_at_a_time(tiny, behaviours):
    both = benchmark(tiny, behaviours[:1], [CAA(n=4)], [0, 1], SMALL)
    for layer in (0, 1):
        alone = benchmark(tiny, behaviours[:1], [CAA(n=4)], [layer], SMALL)
        got = both.vectors[("toy", layer, "CAA")].directions[layer]
        want = alone.vectors[("toy", layer, "CAA")].directions[layer]
        assert torch.equal(got, want)  # the same forward, in the same order, up to the layer
