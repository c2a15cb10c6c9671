"""The optimization report: the vector's scale and interpretation views on the page."""

from __future__ import annotations

import pytest
import torch

from steerlens import Datapoint, optimize_vector
from steerlens.analysis import logit_lens, residual_norms, token_view, write_optimization_report
from steerlens.errors import InputError, SpecError


@pytest.fixture(scope="module")
def result(tiny):
    return optimize_vector(tiny, Datapoint("the cat", promote=[" sat"], chat=False), 1, max_steps=2)


def test_the_vectors_scale_and_views_are_on_the_page(tiny, result, tmp_path):
    norms = residual_norms(tiny, ["the cat sat on the mat"])
    view = token_view(tiny, result.vector, "the cat", reply=" sat")
    lens = logit_lens(tiny, result.vector, k=3)
    path = write_optimization_report(
        tmp_path / "r.html", result, [("the cat", "x", "y")], scale=norms, views=[view, lens]
    )
    text = path.read_text(encoding="utf-8")
    assert norms.describe(result.vector) in text
    assert "What the vector is" in text and view.html() in text and lens.html() in text


def test_without_scale_or_views_the_page_has_neither(result, tmp_path):
    text = write_optimization_report(tmp_path / "r.html", result, []).read_text(encoding="utf-8")
    assert "typical residual norm" not in text and "What the vector is" not in text


def test_scale_of_a_multi_layer_vector_per_measured_layer(tiny, tmp_path):
    res = optimize_vector(
        tiny, Datapoint("the cat", promote=[" sat"], chat=False), [0, 1], max_steps=1
    )
    norms = residual_norms(tiny, ["the cat sat"], layers=[1])
    text = write_optimization_report(tmp_path / "r.html", res, [], scale=norms).read_text(
        encoding="utf-8"
    )
    assert "at layer 1" in text and "at layer 0" not in text


def test_errors(result, tmp_path):
    with pytest.raises(SpecError, match="html"):
        write_optimization_report(tmp_path / "r.html", result, [], views=[torch.ones(3)])  # type: ignore[list-item]
    with pytest.raises(InputError, match="one label per row"):
        write_optimization_report(tmp_path / "r.html", result, [("a", "b", "c")], row_labels=[])


def test_replies_are_marked_with_the_judges_verdict(tmp_path, result):
    rows = [("a", "Sure, here it is.", "I'm sorry, I can't."), ("b", "Fine.", "Fine.")]
    text = write_optimization_report(
        tmp_path / "r.html",
        result,
        rows,
        judge=lambda t: t.startswith("I'm sorry"),
        judged_as="refusal",
    ).read_text(encoding="utf-8")
    assert "judge: <b>[refusal]</b> or <b>[not refusal]</b>" in text
    assert text.count("[refusal]</b> I&#x27;m sorry") == 1
    assert text.count("[not refusal]</b>") == 1 + 3  # the note, then three replies
