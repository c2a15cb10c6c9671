"""Geodesics between vectors and linear mode connectivity.

Tolerance: a geodesic's norms are closed forms, checked in float64 within `_radius_bound`.
"""

from __future__ import annotations

import plotly.graph_objects as go
import pytest
import torch
from tolerances import U32, U64, cosine_bound, rescale_bound

from steerlens import Datapoint, SteeringVector, evaluate_objective
from steerlens.analysis.connectivity import (
    all_pairs_connectivity,
    geodesic,
    is_connected,
    mode_connectivity,
)
from steerlens.analysis.plots import save_html
from steerlens.errors import SpecError, SteerlensError, VectorShapeError


def _pair(d=64, seed=0, norms=(3.0, 3.0), dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(d, generator=g, dtype=dtype), torch.randn(d, generator=g, dtype=dtype)
    return a / a.norm() * norms[0], b / b.norm() * norms[1]


def _radius_bound(u, d=64):
    """Relative error of a geodesic point's measured norm against the interpolated one: the
    endpoints' norms within `rescale_bound` of theirs (they were rescaled to them), so the
    interpolated radius too (it is linear in them), plus a rounding each for its difference,
    product and sum; the point rescaled to it and measured again, `rescale_bound` more; one u
    for second-order terms."""
    return 2 * rescale_bound(d, u) + 4 * u


def test_geodesic_endpoints_are_the_vectors_exactly():
    a, b = _pair(norms=(2.5, 7.0))
    path = geodesic(a, b, n=20)
    assert path.shape == (20, 64)
    assert torch.equal(path[0], a)
    assert torch.equal(path[-1], b)


def test_geodesic_norm_is_constant_for_equal_norm_endpoints():
    a, b = _pair(norms=(3.0, 3.0), dtype=torch.float64)
    norms = geodesic(a, b, n=20).norm(dim=1)
    want = torch.full((20,), 3.0, dtype=torch.float64)
    torch.testing.assert_close(norms, want, rtol=_radius_bound(U64), atol=0)


def test_geodesic_norm_is_the_linear_interpolation_of_the_endpoint_norms():
    a, b = _pair(norms=(1.0, 5.0), dtype=torch.float64)
    norms = geodesic(a, b, n=5).norm(dim=1)
    want = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=torch.float64)
    torch.testing.assert_close(norms, want, rtol=_radius_bound(U64), atol=0)
    # Directions follow the straight line between the endpoints: the midpoint is the line's
    # (a + b) / 2, each coordinate times one factor (two roundings, a second-order move of the
    # cosine), so its cosine with it is 1 up to the cosine's own rounding.
    mid = geodesic(a, b, n=3)[1]
    line = (a + b) / 2
    cos = float(mid @ line / (mid.norm() * line.norm()))
    assert cos == pytest.approx(1.0, rel=0, abs=cosine_bound(64, U64))


def test_geodesic_accepts_steering_vectors():
    a, b = _pair()
    va = SteeringVector.from_tensor(a, 1, model_id="m")
    assert torch.equal(geodesic(va, b, n=4)[0], a)


def test_geodesic_errors():
    a, _ = _pair()
    with pytest.raises(SteerlensError, match="passes through the origin"):
        geodesic(a, -a, n=3)
    with pytest.raises(VectorShapeError, match="size 64 but v1 has size 3"):
        geodesic(a, torch.ones(3))
    with pytest.raises(SpecError, match=r"n .* >= 2"):
        geodesic(a, a, n=1)


@pytest.mark.parametrize(
    ("losses", "connected"),
    [
        ([1.0, 2.0, 3.0, 1.5], True),  # a barrier: still connected by this definition
        ([1.0, 0.5, 1.5], False),  # lower than both endpoints
        ([1.0, 1.5, 1.2, 2.0], True),  # lower than one endpoint only
        ([1.0, 1.0, 1.0], True),  # ties are not lower
        ([2.0, 1.5, 1.0], True),  # monotone
    ],
)
def test_verdict_follows_the_method(losses, connected):
    assert is_connected(losses) is connected


def test_verdict_tolerance():
    assert is_connected([1.0, 0.999, 1.0], tol=0.01)
    assert not is_connected([1.0, 0.98, 1.0], tol=0.01)
    with pytest.raises(SpecError, match="interior"):
        is_connected([1.0, 2.0])


@pytest.fixture(scope="module")
def dp():
    return Datapoint("the cat", promote=[" in the"], chat=False)


def test_mode_connectivity_on_the_model(tiny, dp, tmp_path):
    a, b = _pair(norms=(2.0, 4.0))
    res = mode_connectivity(tiny, dp, 1, a, b, n=5, labels=("a", "b"))
    assert res.losses.shape == (5,)
    assert res.t.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert res.endpoint_losses[0] == evaluate_objective(tiny, dp, 1, a).total
    assert res.endpoint_losses[1] == evaluate_objective(tiny, dp, 1, b).total
    assert res.losses[2] == evaluate_objective(tiny, dp, 1, geodesic(a, b, 5)[2]).total
    assert res.connected is is_connected(res.losses)
    # A float32 path (the model's dtype), measured in float64.
    want = [2.0, 2.5, 3.0, 3.5, 4.0]
    assert res.norms.tolist() == pytest.approx(want, rel=_radius_bound(U32), abs=0)
    fig = res.plot()
    assert isinstance(fig, go.Figure)
    assert [t.name for t in fig.data] == ["path", "endpoints"]
    assert "nats" in fig.layout.yaxis.title.text
    assert save_html(fig, tmp_path / "conn.html").stat().st_size > 1000
    assert res.to_dict()["connected"] == res.connected


def test_all_pairs_with_shared_datapoints(tiny, dp):
    vs = dict(zip("abc", [_pair(seed=i)[0] for i in range(3)], strict=True))
    res = all_pairs_connectivity(tiny, dp, vs, layer=1, n=3)
    assert not res.ordered
    assert list(res.pairs) == [("a", "b"), ("a", "c"), ("b", "c")]
    assert res.n_connected == sum(r.connected for r in res.pairs.values())
    assert res.to_dict()["n_pairs"] == 3


def test_all_pairs_with_per_vector_datapoints(tiny):
    dps = [
        Datapoint("a", promote=[" b"], chat=False),
        Datapoint("the", promote=[" cat"], chat=False),
    ]
    va = SteeringVector.from_tensor(_pair(seed=1)[0], 1, model_id="steerlens/tiny-llama")
    vb = SteeringVector.from_tensor(_pair(seed=2)[0], 1, model_id="steerlens/tiny-llama")
    res = all_pairs_connectivity(tiny, [[dps[0]], [dps[1]]], [va, vb], n=3)
    assert res.ordered and list(res.pairs) == [("v0", "v1"), ("v1", "v0")]
    # (i, j) is scored on vector i's datapoints.
    assert (
        res.pairs[("v1", "v0")].endpoint_losses[0] == evaluate_objective(tiny, dps[1], 1, vb).total
    )
    by_name = all_pairs_connectivity(tiny, {"x": dps[0], "y": dps[1]}, {"x": va, "y": vb}, n=3)
    assert by_name.n_pairs == 2


def test_all_pairs_errors(tiny, dp):
    a, b = _pair()
    with pytest.raises(SteerlensError, match="at least 2 vectors"):
        all_pairs_connectivity(tiny, dp, [a], layer=1)
    with pytest.raises(SpecError, match="layer="):
        all_pairs_connectivity(tiny, dp, [a, b])
    with pytest.raises(SteerlensError, match="3 datapoint groups for 2 vectors"):
        all_pairs_connectivity(tiny, [[dp], [dp], [dp]], [a, b], layer=1)
    with pytest.raises(SpecError, match=">= 3"):
        mode_connectivity(tiny, dp, 1, a, b, n=2)


def test_all_pairs_refuses_an_unknown_option(tiny):
    import inspect

    from steerlens.analysis.connectivity import CONNECTIVITY_OPTIONS, mode_connectivity

    params = inspect.signature(mode_connectivity).parameters
    assert all(name in params for name in CONNECTIVITY_OPTIONS)
    vs = {"a": torch.ones(64), "b": -torch.ones(64)}
    with pytest.raises(SteerlensError, match=r"unknown keyword\(s\) 'steps'.*\bn\b"):
        all_pairs_connectivity(
            tiny, Datapoint("a", promote=[" b"], chat=False), vs, layer=1, steps=3
        )
