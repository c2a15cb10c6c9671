"""The logit lens of a vector: exact against the unembedding, linear in the vector, the final
norm applied as documented, the steered view against a direct computation, and clear errors.

Tolerances (tests/tolerances.py): a logit view is a float32 ``v @ W_U``, compared with the exact
product of the same float32 inputs within `product_bound`; the steered view batches prompts that
the direct computation runs one at a time, so each mean change is within `change_bound`, and a
vector at the wrong layer moves it by more (`test_a_wrong_layer_exceeds_the_steered_bound`).
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from tolerances import U32, change_bound, check_logits, product_bound, rescale_bound
from torch import nn

from steerlens import runtime
from steerlens.analysis import LogitLensResult, logit_lens, logit_lens_difference
from steerlens.errors import (
    InputError,
    LayerError,
    ModelError,
    ModelMismatchError,
    SpecError,
    SteerlensError,
    VectorShapeError,
)
from steerlens.steering.steer import Steering, steer
from steerlens.steering.vector import SteeringVector
from steerlens.testing import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def normed():
    """A tiny model whose final RMSNorm has a non-trivial weight (so the views differ)."""
    model = tiny_model(seed=3)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        model.ln_final.w.copy_(torch.rand(64, generator=g) * 2 + 0.1)
    return model


def _assert_product(got, a, b):
    """``got`` is ``a @ b`` (float32 inputs) up to the product's own rounding."""
    gap = (got.double() - a.double() @ b.double()).abs()
    assert bool((gap <= product_bound(a, b)).all()), float(gap.max())


def _difference_bound(model, a, b):
    """Per view, how far the lens of ``a - b`` may be from ``lens(a) - lens(b)``: ``a - b``
    rounded once, times the view's weight, then a dot product of n terms, against two such
    products and a subtraction; each within ``(n + 2) u`` of its exact terms, and
    ``|a - b| <= |a| + |b|``: ``2 (n + 3) u (|a w| + |b w|) @ |W_U|``."""
    w_u = runtime.unembed_matrix(model).detach().double().abs()
    _, weight = runtime.final_norm(model)
    rows = []
    for w in (torch.ones_like(a), torch.ones_like(a) if weight is None else weight.detach()):
        terms = (a * w).double().abs() + (b * w).double().abs()
        rows.append(2 * (a.shape[-1] + 3) * U32 * (terms @ w_u))
    return torch.stack(rows)


def _direct_changes(model, v, layer, prompts, last=False, strength=1.0):
    """Each prompt alone, unpadded: steered minus unsteered next-token log-probs at every
    position (or the last), float32 logits below `TINY_LOGITS` (`change_bound`'s premise)."""
    changes = []
    for p in prompts:
        tokens = torch.tensor([runtime.encode(model, p)])
        with torch.no_grad():
            base = model(tokens)[0]
            with steer(model, Steering(v, layer=layer, strength=strength)):
                steered = model(tokens)[0]
        check_logits(base)
        check_logits(steered)
        if last:
            base, steered = base[-1:], steered[-1:]
        changes.append(steered.log_softmax(-1) - base.log_softmax(-1))
    return torch.cat(changes)


def test_unembed_view_is_the_vector_times_w_u(tiny):
    v = torch.randn(64)
    lens = logit_lens(tiny, v, k=5, chat=False)
    expected = v @ tiny.W_U.detach()
    assert lens.views == ("unembed", "final_norm")
    _assert_product(lens.scores[0], v, tiny.W_U.detach())
    assert lens.top_ids[0].tolist() == expected.topk(5).indices.tolist()
    assert lens.bottom_ids[0].tolist() == (-expected).topk(5).indices.tolist()
    scores = [s for _, s in lens.promoted("unembed")]
    assert scores == sorted(scores, reverse=True)
    low = [s for _, s in lens.suppressed("unembed")]
    assert low == sorted(low)


def test_final_norm_view_applies_the_norm_weight(normed):
    v = torch.randn(64)
    lens = logit_lens(normed, v, k=3, chat=False)
    kind, weight = runtime.final_norm(normed)
    assert kind == "RMS" and lens.norm == "RMS"
    _assert_product(lens.scores[1], v * weight.detach(), normed.W_U.detach())
    assert not torch.allclose(lens.scores[0], lens.scores[1])
    assert lens.main_view == "final_norm"


def test_a_planted_unembedding_direction_promotes_its_token(tiny):
    w_u = tiny.W_U.detach()
    t = int(w_u.norm(dim=0).argmax())  # w_j . w_t <= |w_j||w_t| <= |w_t|^2
    lens = logit_lens(tiny, w_u[:, t].clone(), k=1, chat=False)
    assert lens.top_ids[0].tolist() == [t]
    assert lens.bottom_ids[0].tolist() != [t]
    assert logit_lens(tiny, -w_u[:, t].clone(), k=1, chat=False).bottom_ids[0].tolist() == [t]


def test_the_lens_of_a_difference_is_the_difference_of_lenses(normed):
    a = SteeringVector.from_tensor(torch.randn(64), 1, model=normed)
    b = SteeringVector.from_tensor(torch.randn(64), 1, model=normed)
    diff = logit_lens(normed, a - b, label="a - b", chat=False)
    assert diff.label == "a - b" and diff.layer == 1
    la, lb = logit_lens(normed, a, chat=False), logit_lens(normed, b, chat=False)
    gap = (diff.scores - (la.scores - lb.scores)).abs()
    assert bool((gap <= _difference_bound(normed, a.vector, b.vector)).all()), float(gap.max())


def test_steered_view_matches_a_direct_computation(tiny):
    v = torch.randn(64) * 3
    prompts = ["the cat sat", "a dog"]
    lens = logit_lens(tiny, v, layer=1, prompts=prompts, k=4, chat=False)
    assert lens.views == ("unembed", "final_norm", "steered")
    assert lens.units == ("logit", "logit", "nats")
    changes = _direct_changes(tiny, v, 1, prompts)
    # Padded batches against one prompt at a time: another order (change_bound).
    gap = float((lens.scores[2] - changes.mean(0)).abs().max())
    assert gap <= change_bound(changes.shape[0]), gap


def test_a_wrong_layer_exceeds_the_steered_bound(tiny):
    """The steered view's bound is no blanket: the vector at layer 0 instead of 1 moves the
    mean change far past it."""
    v = torch.randn(64) * 3
    prompts = ["the cat sat", "a dog"]
    lens = logit_lens(tiny, v, layer=1, prompts=prompts, chat=False)
    wrong = _direct_changes(tiny, v, 0, prompts)
    gap = float((lens.scores[2] - wrong.mean(0)).abs().max())
    assert gap > 10 * change_bound(wrong.shape[0]), gap


def test_steered_view_at_the_last_position_only(tiny):
    v = torch.randn(64) * 3
    prompts = ["the cat sat on the mat", "a dog"]  # different lengths: padding must not count
    lens = logit_lens(tiny, v, layer=1, prompts=prompts, position="last", batch_size=2, chat=False)
    changes = _direct_changes(tiny, v, 1, prompts, last=True)
    gap = float((lens.scores[2] - changes.mean(0)).abs().max())
    assert gap <= change_bound(len(prompts)), gap
    every = logit_lens(tiny, v, layer=1, prompts=prompts, chat=False)
    assert not torch.allclose(lens.scores[2], every.scores[2])
    with pytest.raises(SpecError, match="position must be"):
        logit_lens(tiny, v, layer=1, prompts=prompts, position="first", chat=False)  # type: ignore[arg-type]


def test_steered_view_at_strength_zero_is_zero(tiny):
    lens = logit_lens(tiny, torch.randn(64), layer=0, prompts="the cat", strength=0.0, chat=False)
    assert torch.count_nonzero(lens.scores[2]) == 0


def test_table_figure_and_plain_data(tiny):
    lens = logit_lens(tiny, torch.randn(64), k=3, label="mine", chat=False)
    rows = lens.to_rows()
    assert len(rows) == 2 * 2 * 3
    assert {r["direction"] for r in rows} == {"promoted", "suppressed"}
    assert rows[0]["rank"] == 1 and rows[0]["token_id"] == int(lens.top_ids[0, 0])
    text = repr(lens)
    assert "LogitLensResult('mine'" in text and "suppressed" in text
    fig = lens.plot()
    assert len(fig.data) == 4 and "mine" in fig.layout.title.text
    json.dumps(lens.to_dict())
    assert isinstance(lens, LogitLensResult)
    with pytest.raises(SpecError, match="no view 'steered'"):
        lens.promoted("steered")


def test_byte_tokens_show_their_raw_token(tiny):
    lens = logit_lens(tiny, torch.randn(64), k=50, chat=False)
    assert all("\ufffd" not in t for row in lens.top_tokens for t in row)


def test_a_multi_layer_vector_needs_a_layer(tiny):
    v = SteeringVector({0: torch.randn(64), 1: torch.randn(64)}, model_id=runtime.model_id(tiny))
    with pytest.raises(LayerError, match="pass layer="):
        logit_lens(tiny, v, chat=False)
    assert logit_lens(tiny, v, layer=0, chat=False).layer == 0
    _assert_product(
        logit_lens(tiny, v, layer=0, chat=False).scores[0], v.directions[0], tiny.W_U.detach()
    )


def test_errors(tiny):
    other = SteeringVector.from_tensor(torch.randn(64), 1, model_id="someone/else")
    with pytest.raises(ModelMismatchError, match="someone/else"):
        logit_lens(tiny, other, chat=False)
    with pytest.raises(LayerError, match="out of range"):
        logit_lens(tiny, torch.randn(64), layer=5, chat=False)
    with pytest.raises(LayerError, match="pass layer="):
        logit_lens(tiny, torch.randn(64), prompts=["the cat"], chat=False)
    with pytest.raises(InputError):
        logit_lens(tiny, torch.randn(64), layer=1, prompts=[""], chat=False)
    with pytest.raises(InputError):
        logit_lens(tiny, torch.randn(64), layer=1, prompts=[], chat=False)
    with pytest.raises(VectorShapeError, match="d_model"):
        logit_lens(tiny, torch.randn(32), chat=False)
    with pytest.raises(SteerlensError, match="norm 0"):
        logit_lens(tiny, torch.zeros(64), chat=False)
    with pytest.raises(SpecError, match="k must be"):
        logit_lens(tiny, torch.randn(64), k=0, chat=False)


# -- duck-typed models (TL 3 HookedTransformer-like) ---------------------------------------


def _fake(normalization_type, w=None, offset=False, unembed=None):
    tok = tiny_tokenizer()
    d = 8
    g = torch.Generator().manual_seed(0)
    model = SimpleNamespace(
        cfg=SimpleNamespace(
            d_model=d,
            n_layers=2,
            model_name="fake",
            normalization_type=normalization_type,
            rmsnorm_uses_offset=offset,
        ),
        tokenizer=tok,
    )
    if unembed is None:
        model.W_U = torch.randn(d, len(tok), generator=g)
    else:
        model.unembed = unembed
    if w is not None:
        model.ln_final = SimpleNamespace(w=w)
    return model


def test_layer_norm_centres_the_direction_first():
    w = torch.linspace(0.5, 2.0, 8)
    model = _fake("LN", w=w)
    v = torch.randn(8)
    lens = logit_lens(model, v, k=2, chat=False)
    assert lens.norm == "LN"
    v64, w64 = v.double(), w.double()
    centred = v64 - v64.mean()
    exact = (centred * w64) @ model.W_U.double()
    # The float32 centring and weighting: the mean of 8 within 9 u max |v|, the difference and
    # the product a rounding each; then the product with W_U.
    terms = (9 * v64.abs().max() + 3 * centred.abs()) * U32 * w64.abs()
    bound = terms @ model.W_U.double().abs() + product_bound((v - v.mean()) * w, model.W_U)
    assert bool(((lens.scores[1].double() - exact).abs() <= bound).all())


def test_offset_rms_weight_and_missing_norm():
    w = torch.linspace(-0.5, 0.5, 8)
    assert torch.equal(runtime.final_norm(_fake("RMS", w=w, offset=True))[1], 1 + w)
    plain = _fake(None)
    assert runtime.final_norm(plain) == (None, None)
    assert logit_lens(plain, torch.randn(8), k=2, chat=False).views == ("unembed",)


def test_unembed_matrix_of_a_plain_linear_and_of_nothing():
    linear = nn.Linear(8, len(tiny_tokenizer()))
    model = _fake(None, unembed=linear)
    assert torch.equal(runtime.unembed_matrix(model), linear.weight.T)
    del model.unembed
    with pytest.raises(ModelError, match="unembedding"):
        runtime.unembed_matrix(model)


# -- the difference of two vectors ---------------------------------------------------------


def _assert_unit_difference(got, a, b, w_u):
    """``got`` is ``(a / |a| - b / |b|) @ w_u``: against the exact value of the float32 inputs,
    each unit vector's coordinates within `rescale_bound` of theirs, the difference one rounding,
    and the product with ``w_u`` within `product_bound`."""
    ua, ub = a.double() / a.double().norm(), b.double() / b.double().norm()
    exact = (ua - ub) @ w_u.double()
    unit = a / a.norm() - b / b.norm()
    slack = (rescale_bound(a.shape[-1]) + U32) * ((ua.abs() + ub.abs()) @ w_u.double().abs())
    gap = (got.double() - exact).abs()
    assert bool((gap <= slack + product_bound(unit, w_u)).all()), float(gap.max())


def test_difference_compares_directions_whatever_their_norms(tiny):
    w_u = tiny.W_U.detach()
    common = torch.randn(64) * 4
    t1, t2 = 3, 11
    a = SteeringVector.from_tensor(common + 2 * w_u[:, t1], 1, model=tiny)
    b = SteeringVector.from_tensor(10 * (common + 2 * w_u[:, t2]), 1, model=tiny)
    diff = logit_lens_difference(tiny, a, b, labels=("one-shot", "caa"), k=3, chat=False)
    assert diff.label == "one-shot - caa" and diff.layer == 1
    _assert_unit_difference(diff.scores[0], a.vector, b.vector, w_u)
    # At unit norm the common part cancels, leaving each planted token on its side.
    assert float(diff.scores[0, t1]) > 0 > float(diff.scores[0, t2])
    raw = logit_lens_difference(tiny, a, b, normalize=False, k=3, chat=False)
    la, lb = logit_lens(tiny, a, chat=False), logit_lens(tiny, b, chat=False)
    gap = (raw.scores - (la.scores - lb.scores)).abs()
    assert bool((gap <= _difference_bound(tiny, a.vector, b.vector)).all()), float(gap.max())


def test_planted_difference_promotes_and_suppresses_its_tokens(tiny):
    w_u = tiny.W_U.detach()
    t = int(w_u.norm(dim=0).argmax())
    others = w_u.norm(dim=0).argsort(descending=True).tolist()
    s = others[1]
    common = torch.randn(64)
    a, b = common + 5 * w_u[:, t], common + 5 * w_u[:, s]
    diff = logit_lens_difference(tiny, a, b, normalize=False, k=1, chat=False)
    assert diff.top_ids[0].tolist() == [t] and diff.bottom_ids[0].tolist() == [s]
    assert diff.promoted("unembed")[0][1] > 0 > diff.suppressed("unembed")[0][1]


def test_difference_at_two_layers_and_its_steered_view(tiny):
    a = SteeringVector.from_tensor(torch.randn(64) * 2, 0, model=tiny)
    b = SteeringVector.from_tensor(torch.randn(64) * 3, 1, model=tiny)
    prompts = ["the cat sat", "a dog"]
    diff = logit_lens_difference(tiny, a, b, prompts=prompts, k=2, strength=1.5, chat=False)
    last = logit_lens_difference(tiny, a, b, prompts=prompts, position="last", chat=False)
    la_last = logit_lens(tiny, a, prompts=prompts, position="last", chat=False)
    lb_last = logit_lens(tiny, b, prompts=prompts, position="last", chat=False)
    # The same two measurements, subtracted the same way: exactly equal.
    assert torch.equal(last.scores[2], la_last.scores[2] - lb_last.scores[2])
    assert diff.layer is None and diff.views == ("unembed", "final_norm", "steered")
    assert diff.units[2] == "nats"
    la = logit_lens(tiny, a, prompts=prompts, strength=1.5, chat=False)
    lb = logit_lens(tiny, b, prompts=prompts, strength=1.5, chat=False)
    assert torch.equal(diff.scores[2], la.scores[2] - lb.scores[2])
    _assert_unit_difference(diff.scores[0], a.vector, b.vector, tiny.W_U.detach())
    diff.plot()
    json.dumps(diff.to_dict())


def test_difference_errors(tiny):
    v = torch.randn(64)
    with pytest.raises(SteerlensError, match="equal at unit norm"):
        logit_lens_difference(tiny, v, 3 * v, chat=False)
    with pytest.raises(SteerlensError, match="norm 0"):
        logit_lens_difference(tiny, v, torch.zeros(64), chat=False)
    with pytest.raises(LayerError, match="pass layer="):
        logit_lens_difference(tiny, v, torch.randn(64), prompts=["the cat"], chat=False)
    with pytest.raises(SpecError, match="pair of names"):
        logit_lens_difference(tiny, v, -v, labels=("a",), chat=False)  # type: ignore[arg-type]
    other = SteeringVector.from_tensor(v, 1, model_id="someone/else")
    with pytest.raises(ModelMismatchError):
        logit_lens_difference(tiny, v, other, chat=False)


def test_lens_html_lists_every_view(tiny):
    lens = logit_lens(tiny, torch.randn(64), k=2, label="<v>", chat=False)
    page = lens.html()
    assert "&lt;v&gt;" in page and "<script" not in page
    assert page.count("<table") == len(lens.views)
    assert all(f"<b>{view}</b>" in page for view in lens.views)
