"""Residual-stream norms per layer and position class, and a vector's scale against them.

Tolerance: `residual_norms` runs padded batches, the direct computation one prompt at a time, so
each activation is within `activation_bound` (tests/tolerances.py) of the other order's and each
norm, mean and median within `_norms_bound`.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tolerances import U32, activation_bound

from steerlens import runtime
from steerlens.analysis import ResidualNorms, residual_norms
from steerlens.errors import InputError, LayerError, ModelMismatchError
from steerlens.steering.vector import SteeringVector


def _norms_bound(acts, n):
    """How far two orders' norms of ``acts`` (``[..., d_model]``), or a mean or median of ``n``
    of them, may be: each component within `activation_bound` of its largest, so the norm within
    ``sqrt(d)`` times that; each norm's own float32 rounding ``(d / 2 + 1) u``, and a mean's sum
    and division ``(n + 1) u``, of the largest norm, in each order (a median moves no more than
    the values it picks from)."""
    d = acts.shape[-1]
    norm = float(acts.norm(dim=-1).max())
    return d**0.5 * activation_bound(float(acts.abs().max())) + 2 * (d / 2 + n + 2) * U32 * norm


def _acts(model, prompts, layer):
    """Every prompt's activations at ``layer``, one prompt at a time."""
    name = runtime.hook_name(layer)
    out = []
    for p in prompts:
        with torch.no_grad():
            _, cache = model.run_with_cache(torch.tensor([runtime.encode(model, p)]))
        out.append(cache[name][0])
    return torch.cat(out)


def test_matches_a_direct_computation(tiny):
    prompts = ["the cat sat on the mat", "a dog"]
    norms = residual_norms(tiny, prompts, chat=False)
    assert norms.layers == (0, 1) and norms.n_prompts == 2
    names = [runtime.hook_name(la) for la in (0, 1)]
    first, other = {0: [], 1: []}, {0: [], 1: []}
    for p in prompts:
        with torch.no_grad():
            _, cache = tiny.run_with_cache(torch.tensor([runtime.encode(tiny, p)]))
        for la, name in zip((0, 1), names, strict=True):
            n = cache[name][0].norm(dim=-1)
            first[la].append(float(n[0]))
            other[la] += n[1:].tolist()
    for i, la in enumerate(norms.layers):
        bound = _norms_bound(_acts(tiny, prompts, la), len(other[la]))
        assert abs(norms.first_token[i] - np.mean(first[la])) <= bound
        assert abs(norms.typical[i] - np.median(other[la])) <= bound
        assert abs(norms.other_mean[i] - np.mean(other[la])) <= bound
        # The norms of the next layer instead: a real error, far past the bound.
        assert abs(norms.typical[i] - np.median(other[1 - la])) > 10 * bound
    assert norms.n_other_tokens == len(other[0])


def test_padding_is_never_counted(tiny):
    prompts = ["the cat sat on the mat", "a dog", "x y z"]
    one = residual_norms(tiny, prompts, batch_size=1, chat=False)
    many = residual_norms(tiny, prompts, batch_size=3, chat=False)
    for i, la in enumerate(one.layers):
        bound = _norms_bound(_acts(tiny, prompts, la), one.n_other_tokens)
        assert abs(one.typical[i] - many.typical[i]) <= bound
        assert abs(one.first_token[i] - many.first_token[i]) <= bound


def test_fraction_and_summary(tiny):
    norms = residual_norms(tiny, ["the cat sat"], layers=[1], chat=False)
    v = SteeringVector.from_tensor(torch.ones(64), 1, model=tiny)
    expected = 8.0 / norms.at(1)
    # |ones(64)| is exactly 8 in float32, divided the same way: exact.
    assert norms.fraction(v) == expected
    assert norms.fraction(torch.ones(64), layer=1) == expected
    line = norms.describe(v)
    assert "typical residual norm at layer 1" in line and "first token" in line
    assert "\n" not in line


def test_table_figure_and_plain_data(tiny):
    norms = residual_norms(tiny, ["the cat sat"], chat=False)
    assert [r["layer"] for r in norms.to_rows()] == [0, 1]
    assert "first token" in repr(norms)
    fig = norms.plot(torch.ones(64), layer=0)
    assert [t.name for t in fig.data] == ["first token", "other tokens (median)", "vector"]
    assert fig.layout.yaxis.type == "log"
    # The hook points by name, not a template left unfilled; one prompt is not "1 prompts".
    title = fig.layout.title.text
    assert "blocks.L.hook_resid_pre, L = 0..1 (1 prompt)" in title and "{" not in title
    one = residual_norms(tiny, ["the cat sat", "a dog"], layers=[1], chat=False).plot()
    assert "blocks.1.hook_resid_pre (2 prompts)" in one.layout.title.text
    json.dumps(norms.to_dict())
    assert isinstance(norms, ResidualNorms)


def test_errors(tiny):
    with pytest.raises(InputError):
        residual_norms(tiny, [], chat=False)
    with pytest.raises(InputError):
        residual_norms(tiny, ["the cat", ""], chat=False)
    with pytest.raises(InputError, match="two tokens"):
        residual_norms(tiny, ["a", "b"], chat=False)
    with pytest.raises(LayerError, match="out of range"):
        residual_norms(tiny, ["the cat"], layers=[7], chat=False)
    norms = residual_norms(tiny, ["the cat"], layers=[0], chat=False)
    with pytest.raises(LayerError, match="measured at layers"):
        norms.at(1)
    with pytest.raises(LayerError, match="pass layer="):
        norms.fraction(torch.ones(64))
    with pytest.raises(ModelMismatchError):
        norms.fraction(SteeringVector.from_tensor(torch.ones(64), 0, model_id="someone/else"))


@pytest.mark.slow
def test_the_first_token_is_a_huge_norm_sink_on_smollm2(smol):
    norms = residual_norms(
        smol,
        [
            "The weather today is mild, with a light breeze.",
            "Please summarise the meeting in a few sentences.",
        ],
        chat=False,
    )
    ratios = norms.first_token / norms.typical
    # The sink grows over the first blocks and stays many times the typical norm after that.
    assert float(np.median(ratios)) > 10.0, ratios.round(1).tolist()
    assert float(ratios.max()) > 50.0, ratios.round(1).tolist()
