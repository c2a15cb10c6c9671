"""Per-token views: projections and log-prob changes against a direct computation, several
vectors side by side, the HTML and the figure, and clear errors.

Tolerances (tests/tolerances.py): the projection is the same forward and the same product as the
direct computation's, so it is equal exactly; the log-prob changes come from the scoring engine
against plain forwards (another order), each within `change_bound`.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tolerances import change_bound, check_logits

from steerlens import runtime
from steerlens.analysis import TokenView, token_view
from steerlens.errors import InputError, LayerError, ModelMismatchError, SpecError
from steerlens.steering.steer import Steering, steer
from steerlens.steering.vector import SteeringVector


def _direct(model, ids, v, layer, strength=1.0):
    tokens = torch.tensor([ids])
    name = runtime.hook_name(layer)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=[name])
        projection = cache[name][0] @ (v / v.norm())
        base = model(tokens)[0]
        with steer(model, Steering(v, layer=layer, strength=strength)):
            steered = model(tokens)[0]
    check_logits(base)  # change_bound's premise
    check_logits(steered)
    base, steered = base.log_softmax(-1), steered.log_softmax(-1)
    target = torch.tensor(ids[1:])
    rows = torch.arange(len(ids) - 1)
    change = steered[rows, target] - base[rows, target]
    return projection, change


def test_matches_a_direct_computation(tiny):
    v = torch.randn(64) * 2
    view = token_view(tiny, v, "the cat sat on", layer=1, strength=1.5, chat=False)
    ids = runtime.encode(tiny, "the cat sat on")
    projection, change = _direct(tiny, ids, v, 1, strength=1.5)
    assert view.token_ids == tuple(ids)
    assert "".join(view.tokens) == "the cat sat on"
    assert np.array_equal(view.projection[0], projection.numpy())
    assert np.isnan(view.logprob_change[0, 0])
    assert np.allclose(view.logprob_change[0, 1:], change.numpy(), rtol=0, atol=change_bound())
    shifted = np.abs(view.logprob_change[0, 2:] - change.numpy()[:-1])  # a token off by one
    assert shifted.max() > 10 * change_bound()


def test_several_vectors_side_by_side(tiny):
    a = SteeringVector.from_tensor(torch.randn(64), 0, model=tiny)
    view = token_view(
        tiny, {"a": a, "minus a": -a, "t": torch.randn(64)}, "the cat", layer=0, chat=False
    )
    assert view.labels == ("a", "minus a", "t") and view.layers == (0, 0, 0)
    assert view.projection.shape == (3, len(view.tokens))
    # -a's unit vector is exactly minus a's, and a dot product negates exactly.
    assert np.array_equal(view.projection[0], -view.projection[1])
    listed = token_view(tiny, [a, a], "the cat", chat=False)
    assert listed.labels == ("v0", "v1") and listed.layers == (0, 0)


def test_strength_zero_changes_nothing(tiny):
    view = token_view(tiny, torch.randn(64), "the cat sat", layer=1, strength=0.0, chat=False)
    assert np.all(view.logprob_change[0, 1:] == 0.0)


def test_a_reply_is_teacher_forced_after_the_prompt(tiny):
    v = torch.randn(64)
    view = token_view(tiny, v, "the cat", reply=" sat down", layer=1, chat=False)
    prompt_ids = runtime.encode(tiny, "the cat")
    assert view.n_prompt == len(prompt_ids)
    assert "".join(view.tokens) == "the cat sat down"
    ids = list(view.token_ids)
    _, change = _direct(tiny, ids, v, 1)
    assert np.allclose(view.logprob_change[0, 1:], change.numpy(), rtol=0, atol=change_bound())
    rows = view.to_rows()
    assert {r["part"] for r in rows} == {"prompt", "reply"}
    assert rows[0]["logprob_change"] is None


def test_chat_formatting_shows_the_template_tokens(tiny):
    view = token_view(tiny, torch.randn(64), "Hi", layer=0, chat=True)
    assert "".join(view.tokens).startswith("<|im_start|>user")


def test_html_heatmap(tiny):
    view = token_view(
        tiny, {"a": torch.randn(64), "b": torch.randn(64)}, "a <b> & c", layer=1, chat=False
    )
    page = view.html()
    assert page == view._repr_html_()
    assert page.count("<span title=") == 2 * 2 * len(view.tokens)
    assert "&lt;" in page and "<b>" not in page
    assert "first token" in page  # the log-prob change of the first token has no value
    assert "border-bottom" not in page  # no reply
    with_reply = token_view(tiny, torch.randn(64), "the", reply=" cat", layer=1, chat=False)
    assert "border-bottom" in with_reply.html(measures=["projection"])
    assert with_reply.html(measures=["projection"]).count("<span title=") == len(with_reply.tokens)


def test_figure_and_plain_data(tiny):
    view = token_view(tiny, {"a": torch.randn(64)}, "the cat", reply=" sat", layer=1, chat=False)
    fig = view.plot("logprob_change")
    assert list(fig.data[0].y) == ["a"] and len(fig.data[0].x) == len(view.tokens)
    assert any(s.type == "line" for s in fig.layout.shapes)  # the reply marker
    assert view.plot().data[0].zmax > 0
    json.dumps(view.to_dict())
    assert "peak token" in repr(view)
    assert isinstance(view, TokenView)
    with pytest.raises(SpecError, match="unknown measure"):
        view.values("cosine")  # type: ignore[arg-type]


def test_errors(tiny):
    v = torch.randn(64)
    with pytest.raises(InputError):
        token_view(tiny, v, "", layer=1, chat=False)
    with pytest.raises(InputError, match="one token"):
        token_view(tiny, v, "a", layer=1, chat=False)
    with pytest.raises(InputError, match="reply"):
        token_view(tiny, v, "the cat", reply="", layer=1, chat=False)
    with pytest.raises(LayerError, match="pass layer="):
        token_view(tiny, v, "the cat", chat=False)
    with pytest.raises(LayerError, match="out of range"):
        token_view(tiny, v, "the cat", layer=9, chat=False)
    other = SteeringVector.from_tensor(v, 1, model_id="someone/else")
    with pytest.raises(ModelMismatchError):
        token_view(tiny, other, "the cat", chat=False)
    with pytest.raises(SpecError, match="no vectors"):
        token_view(tiny, {}, "the cat", layer=1, chat=False)


def test_a_page_of_its_own(tiny, tmp_path):
    view = token_view(tiny, {"a": torch.randn(64)}, "the <cat>", reply=" sat", layer=1, chat=False)
    path = view.save_html(tmp_path / "sub" / "view.html", title="<mine>")
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!doctype html>") and "&lt;mine&gt;" in text
    assert view.html() in text and "<script" not in text
    only = view.save_html(tmp_path / "p.html", measures=["projection"]).read_text(encoding="utf-8")
    assert only.count("<span title=") == len(view.tokens)
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["view.html"]
    with pytest.raises(SpecError, match="unknown measure"):
        view.save_html(tmp_path / "x.html", measures=["cosine"])  # type: ignore[list-item]
