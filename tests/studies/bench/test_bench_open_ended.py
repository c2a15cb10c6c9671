"""Open-ended behaviours in the benchmark, on the tiny model: each number equals a direct
computation with the public functions (generate, judge, reply NLL, contrasts)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tolerances import TINY32, U32, activation_bound

from steerlens import Steering, generate
from steerlens.baselines import collect_activations
from steerlens.datasets import OpenEndedBehaviour, OpenItem, load_open_ended
from steerlens.evaluation import RateResult, named_judge, reply_nll
from steerlens.evaluation.scorer import PromptScorer
from steerlens.runtime import chat_prompt, completion_tokens, encode
from steerlens.studies.bench import CAA, BenchSettings, OneShotEach, RandomDirection, benchmark
from steerlens.studies.bench.report import write_bench_report
from steerlens.training import OptimizeConfig

SMALL = BenchSettings(
    test_items=3,
    examples=2,
    validation_items=2,
    entanglement_items=2,
    rollout_tokens=2,
    reply_tokens=4,
    bootstrap=10,
    neutral_prompts=("Hi", "Tell me a story."),
    optimizer=OptimizeConfig(lr=0.1, max_steps=3),
)


@pytest.fixture(scope="module")
def toy():
    train = tuple(OpenItem(f"Question number {i}?", f"Oui {i}, bien sûr.") for i in range(6))
    return OpenEndedBehaviour("toy-open", train, ("Test a?", "Test b?", "Test c?"), "french")


@pytest.fixture(scope="module")
def result(tiny, toy):
    methods = [OneShotEach(), CAA(n=6), RandomDirection()]
    return benchmark(tiny, [toy], methods, [1], SMALL)


def _plan(result, label, row):
    v = result.vectors[("toy-open", 1, label)].directions[1].float()
    return Steering(v / v.norm(), layer=1, strength=row["multiplier"], positions="opening:2")


def test_open_rows_equal_generate_judge_and_reply_nll(tiny, toy, result):
    rows = {r["vector"]: r for r in result.rows if r["method"] != "best of E"}
    assert set(rows) == {"one-shot #0", "one-shot #1", "CAA", "random"}
    judge = named_judge("french")
    requests = list(toy.test)
    base = generate(tiny, requests, chat=True, max_new_tokens=SMALL.reply_tokens)
    base_nll = np.mean(reply_nll(tiny, requests, base, chat=True).values)
    for label, row in rows.items():
        assert row["kind"] == "open-ended" and row["budget_reached"] in (True, False)
        plan = _plan(result, label, row)
        replies = generate(tiny, requests, plan, chat=True, max_new_tokens=SMALL.reply_tokens)
        rate = RateResult.from_outcomes([judge(t) for t in replies])
        assert row["rate_steered"] == rate.rate
        assert (row["rate_ci_low"], row["rate_ci_high"]) == (rate.ci_low, rate.ci_high)
        assert row["rate_base"] == RateResult.from_outcomes([judge(t) for t in base]).rate
        nll = np.mean(reply_nll(tiny, requests, replies, chat=True).values)
        # each mean NLL within TINY32 of the benchmark's (other batches): so is their ratio,
        # relatively, within the sum of both's relative bounds
        ratio = nll / base_nll
        bound = ratio * (TINY32 / nll + TINY32 / base_nll)
        assert row["nll_ratio"] == pytest.approx(ratio, abs=bound)
        assert row["sample_reply"] == replies[0]


def test_open_caa_is_target_minus_own_reply_over_completion_tokens(tiny, toy, result):
    """CAA's direction: mean activation over the target reply's tokens minus that over the
    unsteered model's own reply, averaged over the training requests."""
    requests = [i.request for i in toy.train]
    length = max(len(encode(tiny, i.target)) for i in toy.train)
    own = generate(tiny, requests, chat=True, max_new_tokens=length)
    pos = collect_activations(
        tiny, [(i.request, i.target) for i in toy.train], 1, position="completion", chat=True
    )[1]
    neg = collect_activations(
        tiny,
        [(r, o if o.strip() else ".") for r, o in zip(requests, own, strict=True)],
        1,
        position="completion",
        chat=True,
    )[1]
    expected = (pos - neg).mean(0)
    got = result.vectors[("toy-open", 1, "CAA")].directions[1].float()
    # The same activations in other batches and summed in another order (the seeded order of
    # the requests): each side's activations within `activation_bound`, and its means (over a
    # reply's tokens, then over requests) within (n + 2) u of the largest, n their terms.
    largest = float(torch.cat([pos, neg]).abs().max())
    n = length + len(requests)
    bound = 2 * (activation_bound(largest) + 2 * (n + 2) * U32 * largest)
    torch.testing.assert_close(got, expected, rtol=0, atol=bound)


def test_best_of_e_picks_the_highest_validation_target_logprob(tiny, toy, result):
    best = [r for r in result.rows if r["method"] == "best of E"]
    assert len(best) == 1
    singles = {r["vector"]: r for r in result.rows if r["method"] == "one-shot"}
    # Validation requests: training items after the E single examples, in the seeded order.
    order = torch.randperm(len(toy.train), generator=torch.Generator().manual_seed(0)).tolist()
    items = [toy.train[i] for i in order[SMALL.examples : SMALL.examples + SMALL.validation_items]]
    rows, completions = [], []
    for item in items:
        prompt = chat_prompt(tiny, item.request)
        ids = encode(tiny, prompt)
        rows.append(ids)
        completions.append(completion_tokens(tiny, ids, prompt, item.target, label="t")[0])
    scorer = PromptScorer(tiny, rows, "opening:2", [1], completions=completions)
    scores = {}
    for label, row in singles.items():
        total = scorer.completion_logprobs([_plan(result, label, row)])[0].double().numpy()
        scores[label] = float(np.mean(total / np.array([len(c) for c in completions])))
    assert best[0]["vector"] == f"best of E ({max(scores, key=scores.get)})"


def test_scorer_completion_logprobs_equal_completion_logprobs(tiny):
    from steerlens.evaluation import completion_logprobs

    prompts = ["the cat sat", "a dog ran far"]
    texts = [" on the mat", " away"]
    rows, completions = [], []
    for p, t in zip(prompts, texts, strict=True):
        ids = encode(tiny, p)
        rows.append(ids)
        completions.append(completion_tokens(tiny, ids, p, t, label="c")[0])
    plan = Steering(torch.ones(64), layer=1, strength=3.0, positions="opening:1")
    got = PromptScorer(tiny, rows, "opening:1", [1], completions=completions)
    got_totals = got.completion_logprobs([None, plan])
    for s, steering in enumerate([None, plan]):
        for p in range(2):
            ref = completion_logprobs(tiny, prompts[p], texts[p], steering=steering, chat=False)
            # Two groupings of the same float32 forward: k tokens' log-probabilities each
            # within TINY32 (tests/tolerances.py).
            bound = len(completions[p]) * TINY32
            assert float(got_totals[s, p]) == pytest.approx(ref.total(), abs=bound)


def test_open_ended_and_ab_rows_share_one_report(tiny, toy, tmp_path):
    folder = tmp_path / "bench"
    benchmark(tiny, [toy], [OneShotEach(), RandomDirection()], [1], SMALL, folder=folder)
    page = write_bench_report(folder).read_text(encoding="utf-8")
    assert "judged rate steered" in page and "reply NLL ratio" in page
    assert "toy-open, layer 1" in page


def test_bundled_open_ended_behaviours_load():
    refusal = load_open_ended("benign-refusal")
    french = load_open_ended("french")
    assert (len(refusal.train), len(refusal.test)) == (16, 20)
    assert not {i.request for i in french.train} & set(french.test)
    assert named_judge(french.judge)(french.train[0].target)
    assert not named_judge(french.judge)(refusal.train[0].target)
    assert named_judge(refusal.judge)(refusal.train[0].target)


def test_bench_cli_runs_an_open_ended_file(tiny, tmp_path, monkeypatch, capsys):
    import json

    from steerlens import cli
    from steerlens.loading import model as model_mod

    monkeypatch.setattr(model_mod, "load_model", lambda *a, **k: tiny)
    data = {
        "judge": {"contains": ["oui"]},
        "train": [{"request": f"Q{i}?", "target": f"Oui {i}."} for i in range(8)],
        "test": ["T1?", "T2?"],
    }
    path = tmp_path / "polite.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    out = tmp_path / "bench"
    argv = ["bench", "run", "--out", str(out), "--open-file", str(path), "--layers", "1"]
    argv += ["--examples", "2", "--test-items", "2", "--entanglement-items", "2"]
    assert cli.main(argv) == 0
    assert "nll_ratio" in capsys.readouterr().out
    assert cli.main(["bench", "report", str(out)]) == 0
    assert "polite, layer 1" in (out / "report.html").read_text(encoding="utf-8")
