"""The generalization matrix, checked against one-at-a-time evaluation functions."""

import math

import pytest
import torch
from tolerances import REAL, TINY32, U32, kl_bound

import steerlens
from steerlens import Datapoint, Steering, SteeringVector
from steerlens.errors import InputError, ModelMismatchError, SpecError
from steerlens.evaluation import completion_logprobs
from steerlens.evaluation.coherence import side_effect_kl
from steerlens.studies.matrix import (
    GeneralizationMatrix,
    MatrixRow,
    generalization_matrix,
    target_logprobs,
)

EXAMPLES = [
    Datapoint("the cat", promote=[" sat", " is"], chat=False),
    Datapoint("a dog in", promote=" the", chat=False),
    Datapoint("Pat", promote=" ran", chat=False),
]


def _vector(model, seed, prompt=None, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    provenance = {"datapoints": [{"prompt": prompt, "promote": []}]} if prompt else {}
    return SteeringVector.from_tensor(
        torch.randn(64, generator=g) * scale, layer=1, model=model, provenance=provenance
    )


@pytest.fixture(scope="module")
def vectors(tiny):
    return {f"v{i}": _vector(tiny, i, dp.prompt) for i, dp in enumerate(EXAMPLES)}


def _reference_change(model, plan, dp):
    """Mean over promote completions of total log-prob, steered minus unsteered, one call each,
    and how far the batched matrix may be from it. Batching adds the same float32 terms in
    another order: each token's log-probability moves by at most TINY32 (tests/tolerances.py),
    so a k-token total by k TINY32, and completion_logprobs sums its k terms in float32 (at most
    k u |total|, the terms all negative; the matrix sums in float64). A change, steered minus
    unsteered, gets both totals' bounds; the mean over completions, the mean of theirs."""
    steered = completion_logprobs(model, dp.prompt, list(dp.promote), steering=plan, chat=False)
    base = completion_logprobs(model, dp.prompt, list(dp.promote), chat=False)
    k = torch.tensor([len(t) for t in base.tokens[0]], dtype=torch.float64)
    bound = sum(k * (TINY32 + U32 * r.totals[0].double().abs()) for r in (steered, base))
    change = float(steered.totals.double().mean() - base.totals.double().mean())
    return change, float(bound.mean())


@pytest.mark.parametrize("positions", ["all", "prompt", "generated", "last:1"])
def test_target_logprobs_match_completion_logprobs(tiny, positions):
    v = torch.randn(64, generator=torch.Generator().manual_seed(5)) * 2
    plans = [Steering(v, layer=1, positions=positions), None, Steering(v, layer=0, strength=-2)]
    res = target_logprobs(tiny, plans, EXAMPLES, batch_size=4)
    assert res.changes.shape == (3, len(EXAMPLES))
    assert torch.equal(res.changes[1], torch.zeros(len(EXAMPLES), dtype=torch.float64))
    for s, plan in enumerate(plans):
        for e, dp in enumerate(EXAMPLES):
            expected, bound = _reference_change(tiny, plan, dp)  # the bound: derived there
            assert abs(float(res.changes[s, e]) - expected) <= bound, (s, e)
    # The bound separates: another steering's change is further away than a real error.
    assert (res.changes[0] - res.changes[2]).abs().min() > REAL


def test_matrix_cells_and_own_examples(tiny, vectors):
    m = generalization_matrix(tiny, vectors, EXAMPLES, strength=0.5, batch_size=5)
    assert isinstance(m, GeneralizationMatrix)
    assert m.vectors == ("v0", "v1", "v2") and m.kinds == ("example",) * 3
    assert m.own.tolist() == [[True, False, False], [False, True, False], [False, False, True]]
    for v, vec in enumerate(vectors.values()):
        for p, dp in enumerate(EXAMPLES):
            expected, bound = _reference_change(tiny, Steering(vec, strength=0.5), dp)
            assert abs(float(m.logprob_change[v, p]) - expected) <= bound, (v, p)
    # Every cell further than a real error from the other vectors' cells: a mix-up fails.
    for v in range(3):
        others = torch.cat([m.logprob_change[:v], m.logprob_change[v + 1 :]])
        assert (others - m.logprob_change[v]).abs().min() > REAL
    rows = m.rows
    assert len(rows) == 9 and all(isinstance(r, MatrixRow) for r in rows)
    assert rows[4] == MatrixRow(
        vector="v1",
        prompt="a dog in",
        kind="example",
        own=True,
        logprob_change=float(m.logprob_change[1, 1]),
        judged=None,
        reply=None,
        side_effect_kl=None,
    )
    assert set(m.to_rows()[0]) == {
        "vector",
        "prompt",
        "kind",
        "own",
        "logprob_change",
        "judged",
        "reply",
        "side_effect_kl",
    }
    assert m.to_pandas().shape == (9, 8)


def test_ranking_orders_by_transfer_to_the_other_examples(tiny, vectors):
    m = generalization_matrix(tiny, vectors, EXAMPLES)
    changes = m.logprob_change.tolist()
    transfer = {
        name: sum(changes[v][p] for p in range(3) if p != v) / 2 for v, name in enumerate(m.vectors)
    }
    ranking = m.ranking()
    assert [n for n, _ in ranking] == sorted(transfer, key=lambda n: -transfer[n])
    for name, score in ranking:
        # Exact: the same two float64 cells added (once rounded, in either order; the own
        # cell enters as an exact 0) and halved (exact).
        assert score == transfer[name]
    text = repr(m)
    assert text.startswith("GeneralizationMatrix(3 vectors x 3 prompts") and "transfer" in text


def test_strength_zero_changes_nothing(tiny, vectors):
    m = generalization_matrix(tiny, vectors, EXAMPLES, strength=0.0)
    assert torch.equal(m.logprob_change, torch.zeros(3, 3, dtype=torch.float64))


def test_trained_on_overrides_provenance_and_accepts_plans(tiny):
    plans = {"a": Steering(torch.ones(64), layer=1), "b": _vector(tiny, 1)}
    m = generalization_matrix(tiny, plans, EXAMPLES[:2], trained_on={"a": "a dog in"})
    assert m.own.tolist() == [[False, True], [False, False]]
    assert math.isnan(m.ranking()[-1][1]) is False  # every vector has other prompts here
    with pytest.raises(SpecError, match="not in vectors"):
        generalization_matrix(tiny, plans, EXAMPLES[:2], trained_on={"c": "x"})


def test_judged_replies_held_out_and_side_effects(tiny, vectors):
    def judge(text):
        return len(text) % 2 == 0

    held_out = ["in the", Datapoint("Pat ran", promote=" in", chat=False)]
    neutral = ["the", "a cat"]
    m = generalization_matrix(
        tiny,
        vectors,
        EXAMPLES,
        held_out=held_out,
        judge=judge,
        neutral_prompts=neutral,
        max_new_tokens=4,
        batch_size=7,
    )
    prompts = [dp.prompt for dp in EXAMPLES] + ["in the", "Pat ran"]
    assert m.prompts == tuple(prompts)
    assert m.kinds == ("example",) * 3 + ("held_out",) * 2
    assert m.baseline_replies == tuple(
        steerlens.generate(tiny, prompts, max_new_tokens=4, chat=False)
    )
    for v, vec in enumerate(vectors.values()):
        replies = steerlens.generate(tiny, prompts, vec, max_new_tokens=4, chat=False)
        assert m.replies is not None and m.replies[v] == tuple(replies)
        assert m.judged is not None and m.judged[v].tolist() == [judge(r) for r in replies]
        kl = side_effect_kl(tiny, neutral, vec, chat=False).mean
        assert m.side_effect_kl is not None
        bound = kl_bound(tiny, neutral, vec)  # the matrix packs the rows otherwise
        assert abs(float(m.side_effect_kl[v]) - kl) <= bound, v
        # Another vector's KL is outside the bound: a mix-up fails.
        assert (m.side_effect_kl - kl).abs().sort().values[1] > bound
    # A held-out string has no target; a held-out datapoint does.
    assert math.isnan(float(m.logprob_change[0, 3]))
    expected, bound = _reference_change(tiny, vectors["v0"], held_out[1])
    assert abs(float(m.logprob_change[0, 4]) - expected) <= bound
    row = m.rows[3]
    assert row.kind == "held_out" and row.logprob_change is None and row.reply == m.replies[0][3]
    assert len(m.ranking("judged")) == 3
    assert "side-effect KL" in repr(m)


def test_plot_is_a_heatmap_marking_own_cells(tiny, vectors):
    m = generalization_matrix(tiny, vectors, EXAMPLES)
    fig = m.plot()
    (heatmap,) = fig.data
    assert heatmap.type == "heatmap" and len(heatmap.z) == 3 and len(heatmap.x) == 3
    assert heatmap.text[1][1] == "own" and heatmap.text[0][1] == ""
    with pytest.raises(SpecError, match="judge"):
        m.plot("judged")
    with pytest.raises(SpecError, match="unknown metric"):
        m.plot("accuracy")


def test_bad_inputs_are_refused_with_the_fix(tiny, vectors):
    with pytest.raises(SpecError, match="vectors is empty"):
        generalization_matrix(tiny, {}, EXAMPLES)
    with pytest.raises(SpecError, match="mapping"):
        generalization_matrix(tiny, [vectors["v0"]], EXAMPLES)
    with pytest.raises(InputError, match="examples is empty"):
        generalization_matrix(tiny, vectors, [])
    with pytest.raises(InputError, match="no promote completions"):
        generalization_matrix(tiny, vectors, [Datapoint("the cat", suppress=" sat", chat=False)])
    with pytest.raises(InputError, match=r"not a steerlens\.Datapoint"):
        generalization_matrix(tiny, vectors, ["the cat"])
    with pytest.raises(SpecError, match="finite"):
        generalization_matrix(tiny, vectors, EXAMPLES, strength=float("nan"))
    with pytest.raises(SpecError, match="judge"):
        generalization_matrix(tiny, vectors, EXAMPLES, held_out=["in the"])
    other = SteeringVector.from_tensor(torch.ones(64), layer=1, model_id="someone/else")
    with pytest.raises(ModelMismatchError):
        generalization_matrix(tiny, {"other": other}, EXAMPLES)


@pytest.mark.slow
def test_matrix_on_the_embedded_model(smol):
    from steerlens.evaluation import StringMatchJudge

    examples = [
        Datapoint("The capital of France is", promote=" Paris", chat=False),
        Datapoint("My favourite colour is", promote=" blue", chat=False),
    ]
    d = steerlens.runtime.d_model(smol)
    vectors = {
        dp.promote[0].strip(): SteeringVector.from_tensor(
            torch.randn(d, generator=torch.Generator().manual_seed(i)), layer=3, model=smol
        )
        for i, dp in enumerate(examples)
    }
    m = generalization_matrix(
        smol,
        vectors,
        examples,
        held_out=["The weather today is"],
        judge=StringMatchJudge([" the"]),
        neutral_prompts=["Hello"],
        trained_on={"Paris": examples[0].prompt, "blue": examples[1].prompt},
        max_new_tokens=4,
    )
    assert len(m.rows) == 6
    assert torch.isfinite(m.logprob_change[:, :2]).all()
    assert m.replies is not None and m.replies[0][2] == steerlens.generate(
        smol, "The weather today is", vectors["Paris"], max_new_tokens=4, chat=False
    )


def test_a_failing_judge_is_named_with_the_place_and_a_reply(tiny, vectors):
    def judge(text):
        raise RuntimeError("judge offline")

    with pytest.raises(
        SpecError,
        match=r"judge failed on the replies of the generalization.*"
        r"RuntimeError: judge offline.*first reply",
    ):
        generalization_matrix(tiny, vectors, EXAMPLES, judge=judge, max_new_tokens=2)
