"""The vector card: what it summarises, its HTML, and clear errors."""

from __future__ import annotations

import html as _html
import json
import math

import pytest
import torch

from steerlens import Datapoint, diff_of_means, optimize_vector
from steerlens.analysis import VectorCard, layer_sweep, token_view, vector_card
from steerlens.analysis.card import DEFAULT_PROMPTS
from steerlens.errors import (
    LayerError,
    ModelMismatchError,
    OutputPathError,
    SpecError,
)
from steerlens.steering.vector import SteeringVector


@pytest.fixture(scope="module")
def trained(tiny):
    return optimize_vector(
        tiny, Datapoint("the cat", promote=[" sat"], chat=False), 1, max_steps=2
    ).vector


def test_card_of_an_optimized_vector(tiny, trained):
    caa = diff_of_means(tiny, ["the cat", "the dog"], ["a cat", "a dog"], 1)
    card = vector_card(tiny, trained, compare_to={"self": trained, "minus": -trained}, caa=caa, k=4)
    fields = dict(card.provenance)
    assert fields["method"] == "one_shot_optimization"
    assert fields["steps"].startswith("2")
    assert "' sat'" in fields["datapoints"]
    assert any(k.startswith("final losses") for k in fields)
    assert card.prompts == ("the cat",)  # the vector's own prompt
    assert card.layer == 1 and card.norms == {1: pytest.approx(trained.norm())}
    cos = {label: c for label, c, _ in card.cosines}
    assert cos["self"] == pytest.approx(1.0) and cos["minus"] == pytest.approx(-1.0)
    assert -1.0 <= cos["CAA"] <= 1.0
    assert card.lens.k == 4 and card.lens.layer == 1
    assert card.scale_summary == card.scale.describe(trained)
    assert "promotes:" in repr(card)
    json.dumps(card.to_dict())
    assert isinstance(card, VectorCard)


def test_card_shows_the_user_message_of_a_chat_datapoint_and_the_real_hook(tiny):
    dp = Datapoint.from_message(
        tiny, "How do I bake a cake?", system="You are terse.", promote=[" no"]
    )
    vector = optimize_vector(tiny, dp, 1, max_steps=1).vector
    card = vector_card(tiny, vector, k=2)
    shown = dict(card.provenance)["datapoints"]
    assert "'How do I bake a cake?'" in shown
    assert "terse" not in shown and "<|im_start|>" not in shown
    page = card.html()
    assert "blocks.1.hook_resid_pre" in page and "{layer}" not in page


def test_the_saved_page_says_what_was_run_and_what_it_shows(tiny, tmp_path):
    dp = Datapoint.from_message(
        tiny, "How do I bake a cake?", system="You are terse.", promote=[" no"]
    )
    vector = optimize_vector(tiny, dp, 1, max_steps=1).vector
    caa = diff_of_means(tiny, ["the cat", "the dog"], ["a cat", "a dog"], 1)
    card = vector_card(tiny, vector, caa=caa, k=3)
    page = card.save_html(tmp_path / "card.html").read_text(encoding="utf-8")
    # The words come first, above every table and figure.
    head = page[: page.index("<h3>Provenance</h3>")]
    run = head[head.index("What was run") : head.index("What it shows")]
    norm = f"norm {vector.norm():.3g}"
    for said in (
        f"Model {card.model_id}",
        "layer 1",
        "hook blocks.1.hook_resid_pre",
        norm,
        "made by one_shot_optimization",
        "trained on 1 datapoint, the prompt &#x27;How do I bake a cake?&#x27;",
        "promoting &#x27; no&#x27;",
        "strength 1",
        "the vector&#x27;s own 1 prompt",
    ):
        assert said in run, said
    assert "terse" not in head
    shows = head[head.index("What it shows") :]
    ratio = card.scale.fraction(vector, 1)
    assert f"Its norm is {ratio:.2f}x the typical residual norm at layer 1" in shows
    top = card.lens.promoted()[0][0]
    assert f"most promotes {_html.escape(repr(top))}" in shows
    ((_, cosine, _),) = card.cosines
    assert f"Cosine with CAA: {cosine:+.2f}" in shows
    assert card.what_was_run in repr(card).replace("\n  ", " ")

    made = vector_card(tiny, caa)
    assert "built from 2 positive and 2 negative prompts (first: 'the cat' vs 'a cat')" in (
        made.what_was_run
    )
    bare = vector_card(tiny, SteeringVector.from_tensor(torch.ones(64), 0, model=tiny))
    assert "no record of the prompts" in bare.what_was_run
    assert f"{len(DEFAULT_PROMPTS)} neutral sentences" in bare.what_was_run
    given = vector_card(tiny, vector, prompts=["x y", "z"])
    assert "measured on the 2 prompts given" in given.what_was_run


def test_prompts_come_from_the_vector_or_the_defaults(tiny):
    caa = diff_of_means(tiny, ["the cat", "the dog"], ["a cat", "a dog"], 1)
    assert set(vector_card(tiny, caa).prompts) == {"the cat", "the dog", "a cat", "a dog"}
    bare = SteeringVector.from_tensor(torch.ones(64), 0, model=tiny)
    assert vector_card(tiny, bare).prompts == DEFAULT_PROMPTS
    assert vector_card(tiny, bare, prompts="x y z").prompts == ("x y z",)


def test_cosine_with_a_vector_at_another_layer_is_noted(tiny):
    v = SteeringVector.from_tensor(torch.ones(64), 1, model=tiny)
    other = SteeringVector.from_tensor(torch.ones(64), 0, model=tiny)
    zero = torch.zeros(64)
    card = vector_card(tiny, v, prompts=["the cat"], compare_to={"other": other, "zero": zero})
    (_, c, note), (_, cz, zero_note) = card.cosines
    assert c == pytest.approx(1.0) and "layer 0" in note
    assert math.isnan(cz) and "norm 0" in zero_note


def test_layer_effect_from_a_sweep_or_the_provenance(tiny, trained):
    data = Datapoint("the cat", promote=[" sat"], chat=False)
    sweep = layer_sweep(tiny, data, vector=trained.vector, prompts=["x y"])
    card = vector_card(tiny, trained, sweep=sweep)
    assert sorted(card.layer_effect) == [0, 1] and "logprob_change" in card.layer_effect_label
    assert "Layer effect" in card.html()
    recorded = SteeringVector.from_tensor(
        torch.ones(64), 1, model=tiny, provenance={"layer_effect": {"1": 0.5, "0": 0.25}}
    )
    card = vector_card(tiny, recorded, prompts=["the cat"])
    assert card.layer_effect == {0: 0.25, 1: 0.5}
    with pytest.raises(SpecError, match="LayerSweepResult"):
        vector_card(tiny, recorded, prompts=["the cat"], sweep={1: 0.5})  # type: ignore[arg-type]


def test_html_page(tiny, trained, tmp_path):
    card = vector_card(tiny, trained, title="<mine>")
    fragment = card._repr_html_()
    assert fragment == card.html() and "&lt;mine&gt;" in fragment and "<script" not in fragment
    for section in ("Provenance", "Scale", "Logit lens"):
        assert section in fragment
    path = card.save_html(tmp_path / "sub" / "card.html")
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!doctype html>") and "Logit lens" in text
    assert [p.name for p in path.parent.iterdir()] == ["card.html"]  # no temporary left
    with_figures = card.save_html(tmp_path / "fig.html", figures=True).read_text(encoding="utf-8")
    assert "plotly" in with_figures and len(with_figures) > len(text)
    with pytest.raises(OutputPathError):
        card.save_html(tmp_path)


def test_errors(tiny, trained):
    with pytest.raises(SpecError, match="SteeringVector"):
        vector_card(tiny, torch.ones(64))  # type: ignore[arg-type]
    other = SteeringVector.from_tensor(torch.ones(64), 1, model_id="someone/else")
    with pytest.raises(ModelMismatchError):
        vector_card(tiny, other, prompts=["the cat"])
    with pytest.raises(ModelMismatchError):
        vector_card(tiny, trained, prompts=["the cat"], compare_to={"x": other})
    two = SteeringVector({0: torch.ones(64), 1: -torch.ones(64)}, model_id=trained.model_id)
    with pytest.raises(LayerError, match="pass layer="):
        vector_card(tiny, two, prompts=["the cat"])
    assert vector_card(tiny, two, prompts=["the cat"], layer=0).layer == 0


def test_per_token_views_on_the_card(tiny, trained, tmp_path):
    view = token_view(tiny, {"mine": trained, "minus": -trained}, "the cat", reply=" sat")
    card = vector_card(tiny, trained, token_views=view)
    assert card.token_views == (view,)
    page = card.html()
    assert "Per-token view" in page and view.html() in page
    assert "per-token view: " in repr(card)
    plain = card.to_dict()
    assert plain["token_views"][0]["logprob_change"][0][0] is None
    json.dumps(plain, allow_nan=False)
    assert view.html() in card.save_html(tmp_path / "c.html").read_text(encoding="utf-8")
    assert "Per-token view" not in vector_card(tiny, trained).html()
    with pytest.raises(SpecError, match="TokenView"):
        vector_card(tiny, trained, token_views=[card])  # type: ignore[list-item]
