"""ROC-AUC, and the comparison of a one-shot vector with CAA.

Tolerances (tests/tolerances.py): ROC-AUCs are exact fractions; the comparison's CAA vector is
built in batches of another size than the direct one's (`means_bound`), and everything computed
from it is compared with the same computation on it, so equal exactly, but for the float64
cosine (`cosine_bound`).
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from tolerances import U64, cosine_bound, means_bound

from steerlens import Datapoint, NormCap, SteeringVector, evaluate_objective, optimize_vector
from steerlens.analysis.compare import compare_with_caa, roc_auc
from steerlens.analysis.plots import save_html
from steerlens.baselines import collect_activations, diff_of_means
from steerlens.errors import LayerError, NonFiniteError, SpecError, SteerlensError


def _brute_auc(pos, neg):
    pairs = list(itertools.product(pos, neg))
    return sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)


@pytest.mark.parametrize(
    ("pos", "neg", "expected"),
    [
        ([3.0, 4.0, 5.0], [0.0, 1.0, 2.0], 1.0),  # perfect separation
        ([0.0, 1.0], [2.0, 3.0], 0.0),  # perfectly reversed
        ([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], 0.5),  # identical sets
        ([1.0, 1.0], [1.0, 1.0, 1.0], 0.5),  # all tied
        ([1.0, 2.0, 3.0], [2.0, 2.0, 0.0], (2 + 0.5 + 0.5 + 3 + 0 + 0) / 9 + 0 / 9),
        ([0.5], [0.1, 0.5, 0.9], 0.5),  # one win, one tie, one loss
    ],
)
def test_roc_auc_known_values(pos, neg, expected):
    # Both are an exact count of half-wins over the number of pairs, divided once: equal.
    assert roc_auc(pos, neg) == expected
    assert roc_auc(pos, neg) == _brute_auc(pos, neg)


def test_roc_auc_matches_brute_force_with_many_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        pos = rng.integers(0, 5, size=rng.integers(1, 12)).astype(float)
        neg = rng.integers(0, 5, size=rng.integers(1, 12)).astype(float)
        assert roc_auc(pos, neg) == _brute_auc(pos, neg)
        # k / N + (N - k) / N: each quotient within u of its value, their sum one more u.
        assert roc_auc(pos, neg) + roc_auc(neg, pos) == pytest.approx(1.0, rel=0, abs=3 * U64)
    assert roc_auc(torch.tensor([2.0, 3.0]), torch.tensor([1.0])) == 1.0


def test_roc_auc_errors():
    with pytest.raises(SteerlensError, match="negative scores are empty"):
        roc_auc([1.0, 2.0], [])
    with pytest.raises(SteerlensError, match="positive scores are empty"):
        roc_auc([], [1.0])
    with pytest.raises(NonFiniteError, match="NaN"):
        roc_auc([float("nan")], [1.0])
    with pytest.raises(SteerlensError, match="1-D"):
        roc_auc([[1.0]], [1.0])


POS = ["the cat sat on the mat", "a cat", "the cat is here", "P cat"]
NEG = ["the dog sat on the mat", "a dog", "the dog is here", "P dog"]


@pytest.fixture(scope="module")
def compared(tiny):
    g = torch.Generator().manual_seed(0)
    one_shot = SteeringVector.from_tensor(torch.randn(64, generator=g) * 3, [0, 1], model=tiny)
    dp = Datapoint("the cat", promote=[" in the"], chat=False)
    res = compare_with_caa(
        tiny,
        one_shot,
        POS,
        NEG,
        datapoints=dp,
        generation_prompts=["hi", "the"],
        max_new_tokens=3,
        effect_norm=2.0,
        batch_size=3,
        chat=False,
    )
    return one_shot, dp, res


def test_comparison_numbers_match_direct_computations(tiny, compared):
    one_shot, dp, res = compared
    assert res.layers == [0, 1]
    caa = diff_of_means(tiny, POS, NEG, [0, 1], chat=False)
    last = collect_activations(tiny, POS + NEG, [0, 1], chat=False)  # what CAA averages
    # The comparison's own batches (batch_size=3), so its scores are the same numbers.
    kw = {"position": "mean", "batch_size": 3, "chat": False}
    acts_pos = collect_activations(tiny, POS, [0, 1], **kw)
    acts_neg = collect_activations(tiny, NEG, [0, 1], **kw)
    base = evaluate_objective(tiny, dp, 0, None).total
    assert res.unsteered_loss == base
    for i, layer in enumerate(res.layers):
        # Batches of 3 against 16: each mean within means_bound of the other order's.
        atol = 2 * means_bound(last[layer], len(POS))
        torch.testing.assert_close(
            res.caa.directions[layer], caa.directions[layer], rtol=0, atol=atol
        )
        a, c = one_shot.directions[layer].double(), res.caa.directions[layer].double()
        cos = float(a @ c / (a.norm() * c.norm()))
        assert res.cosine[i] == pytest.approx(cos, rel=0, abs=2 * cosine_bound(64, U64))
        for name, v in (("one_shot", a.float()), ("caa", c.float())):
            # The same activations times the same vector, the same objective calls: exact.
            assert res.auc[name][i] == roc_auc(acts_pos[layer] @ v, acts_neg[layer] @ v)
            loss = evaluate_objective(tiny, dp, layer, v / v.norm() * 2.0).total
            assert res.effect_per_unit_norm[name][i] == (loss - base) / 2.0
            assert res.norms[name][i] == float(v.norm())
    assert res.score_position == "mean" and res.auc_on == "in-sample"


def test_held_out_auc_scores_other_prompts_than_the_caa_ones(tiny, compared):
    one_shot, _, _ = compared
    held = (["the cat ran", "my cat"], ["the dog ran", "my dog", "P dog"])
    res = compare_with_caa(tiny, one_shot, POS, NEG, held_out=held, chat=False)
    caa = diff_of_means(tiny, POS, NEG, [0, 1], chat=False)
    acts_pos = collect_activations(tiny, held[0], [0, 1], position="mean", chat=False)
    acts_neg = collect_activations(tiny, held[1], [0, 1], position="mean", chat=False)
    for i, layer in enumerate(res.layers):
        v = caa.directions[layer]
        # The same batches and vector as the comparison's own: exact.
        assert res.auc["caa"][i] == roc_auc(acts_pos[layer] @ v, acts_neg[layer] @ v)
    assert res.auc_on == "held-out" and "held-out" in res.plot().layout.annotations[1].text
    with pytest.raises(SpecError, match="held_out"):
        compare_with_caa(tiny, one_shot, POS, NEG, held_out=(["a"], []), chat=False)


def test_generations_side_by_side(compared):
    _, _, res = compared
    assert sorted(res.generations) == [0, 1]
    rows = res.generations[1]
    assert [r["prompt"] for r in rows] == ["hi", "the"]
    assert set(rows[0]) == {"prompt", "unsteered", "one_shot", "caa"}
    assert res.generations[0][0]["unsteered"] == rows[0]["unsteered"]


def test_to_dict_is_plain_data(compared):
    _, _, res = compared
    d = res.to_dict()
    json.dumps(d)
    assert d["layers"] == [0, 1]
    assert set(d["auc"]) == {"one_shot", "caa"}
    assert d["caa"]["provenance"]["method"] == "diff_of_means"


def test_figures(compared, tmp_path):
    _, _, res = compared
    fig = res.plot()
    assert isinstance(fig, go.Figure)
    assert [t.name for t in fig.data] == [
        "cosine",
        "one-shot (AUC)",
        "CAA (AUC)",
        "one-shot (effect)",
        "CAA (effect)",
    ]
    assert fig.layout.title.text
    assert fig.layout.yaxis3.title.text == "Δ loss per unit norm (nats)"
    assert save_html(fig, tmp_path / "compare.html").stat().st_size > 1000
    table = res.plot_generations(1)
    assert [t.type for t in table.data] == ["table"]
    assert save_html(table, tmp_path / "gens.html").stat().st_size > 1000
    with pytest.raises(LayerError, match="no generations at layer 5"):
        res.plot_generations(5)


def test_without_datapoints_or_generations(tiny):
    v = SteeringVector.from_tensor(torch.ones(64), 1, model=tiny)
    res = compare_with_caa(tiny, v, POS[:2], NEG[:3], chat=False)
    assert res.effect_per_unit_norm == {} and res.unsteered_loss is None
    assert res.generations == {}
    assert len(res.plot().data) == 3


def test_bad_inputs(tiny):
    v = SteeringVector.from_tensor(torch.ones(64), 1, model=tiny)
    with pytest.raises(SteerlensError, match="negative set is empty"):
        compare_with_caa(tiny, v, POS, [], chat=False)
    with pytest.raises(LayerError, match="out of range"):
        compare_with_caa(tiny, v, POS, NEG, layers=[3], chat=False)


# -- the real model ------------------------------------------------------------------------

QUESTIONS = [
    "What is your favorite color?",
    "Describe your morning routine.",
    "What is the capital of Italy?",
    "Tell me about dogs.",
    "What do you like to do on weekends?",
    "How is the weather today?",
]
FRENCH = [
    "Ma couleur préférée est le bleu.",
    "Je me lève à sept heures et je bois un café.",
    "La capitale de l'Italie est Rome.",
    "Les chiens sont des animaux fidèles.",
    "Le week-end, j'aime lire et me promener.",
    "Il fait beau et chaud aujourd'hui.",
]
ENGLISH = [
    "My favorite color is blue.",
    "I get up at seven and drink a coffee.",
    "The capital of Italy is Rome.",
    "Dogs are loyal animals.",
    "On weekends, I like to read and go for walks.",
    "The weather is nice and warm today.",
]


@pytest.mark.slow
def test_one_shot_and_caa_both_steer_towards_french(smol, tmp_path):
    """Answering in French: the one-shot vector (one example) and the CAA vector (French vs
    English answers to the same questions, averaged over the answers' tokens) both lower the
    loss of a French answer and change the generations; compare_with_caa runs end to end."""
    layer = 8
    dp = Datapoint.from_message(
        smol,
        "What is your favorite food?",
        promote=["Ma nourriture préférée est la pizza. J'adore"],
    )
    one_shot = optimize_vector(
        smol, dp, layer, lr=0.1, max_steps=30, constraints=(NormCap(40.0),)
    ).vector
    res = compare_with_caa(
        smol,
        one_shot,
        list(zip(QUESTIONS, FRENCH, strict=True)),
        list(zip(QUESTIONS, ENGLISH, strict=True)),
        position="completion",
        chat=True,
        datapoints=dp,
        generation_prompts=["What is your favorite animal?", "What did you do yesterday?"],
        max_new_tokens=16,
        effect_norm=20.0,
    )
    base = res.unsteered_loss
    assert base is not None
    assert evaluate_objective(smol, dp, layer, one_shot).total < base - 20
    assert evaluate_objective(smol, dp, layer, res.caa).total < base - 2
    rows = res.generations[layer]
    assert any(r["one_shot"] != r["unsteered"] for r in rows)
    assert any(r["caa"] != r["unsteered"] for r in rows)
    assert res.auc["caa"][0] > 0.9  # CAA separates its own prompt sets
    assert 0.0 <= res.auc["one_shot"][0] <= 1.0
    assert -1.0 <= res.cosine[0] <= 1.0
    assert res.effect_per_unit_norm["one_shot"][0] < 0
    assert any(_looks_french(r["one_shot"]) for r in rows)
    assert any(_looks_french(r["caa"]) for r in rows)
    assert not any(_looks_french(r["unsteered"]) for r in rows)
    assert save_html(res.plot(), tmp_path / "compare.html").stat().st_size > 1000
    json.dumps(res.to_dict())


def _looks_french(text):
    words = set(text.lower().replace("'", " ").replace(",", " ").split())
    return len(words & {"je", "la", "le", "les", "de", "est", "un", "une", "l", "c"}) >= 2
