"""Cosine matrices and the 2-D projection of steering vectors."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from tolerances import U64, cosine_bound

from steerlens import SteeringVector
from steerlens.analysis.geometry import cosine_matrix, project_2d
from steerlens.analysis.plots import save_html
from steerlens.errors import LayerError, SteerlensError, VectorShapeError

MODEL = "steerlens/tiny-llama"


def _vectors(k=5, d=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {f"v{i}": torch.randn(d, generator=g) * (i + 1) for i in range(k)}


def test_cosine_matrix_is_symmetric_with_a_unit_diagonal():
    vs = _vectors()
    res = cosine_matrix(vs)
    m = res.matrix
    assert res.labels == list(vs)
    assert m.shape == (5, 5)
    assert np.array_equal(m, m.T)
    assert np.array_equal(np.diag(m), np.ones(5))
    a, b = vs["v1"].double(), vs["v3"].double()
    # Two float64 groupings of one cosine (unit vectors first, or over the norms' product).
    want = float(a @ b / (a.norm() * b.norm()))
    assert m[1, 3] == pytest.approx(want, rel=0, abs=2 * cosine_bound(64, U64))


def test_summary_is_over_the_off_diagonal_pairs():
    res = cosine_matrix(list(_vectors().values()))
    off = [res.matrix[i, j] for i in range(5) for j in range(i + 1, 5)]
    s = res.summary
    assert s["n_pairs"] == 10
    assert s["max"] == pytest.approx(max(off))
    assert s["median"] == pytest.approx(float(np.median(off)))
    assert s["max_abs"] == pytest.approx(max(abs(x) for x in off))
    assert res.to_dict()["summary"] == s


def test_steering_vectors_and_layers():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(64, generator=g), torch.randn(64, generator=g)
    two_layer = SteeringVector({0: a, 1: b}, model_id=MODEL)
    one = SteeringVector.from_tensor(a, [0, 1], model_id=MODEL)
    assert cosine_matrix([two_layer, one], layer=0).matrix[0, 1] == pytest.approx(1.0)
    assert cosine_matrix([two_layer, one], layer=1).matrix[0, 1] < 0.9
    same = SteeringVector.from_tensor(b, [0, 1], model_id=MODEL)
    assert cosine_matrix([same, b]).matrix[0, 1] == pytest.approx(1.0)
    with pytest.raises(SteerlensError, match="pass layer="):
        cosine_matrix([two_layer, one])
    only_1 = SteeringVector.from_tensor(a, 1, model_id=MODEL)
    with pytest.raises(LayerError, match="'v0' has no direction at layer 0"):
        cosine_matrix([only_1, two_layer], layer=0)


def test_bad_inputs():
    with pytest.raises(SteerlensError, match="at least 2 vectors, got 1"):
        cosine_matrix([torch.ones(4)])
    with pytest.raises(SteerlensError, match="at least 2 vectors, got 1"):
        project_2d({"a": torch.ones(4)})
    with pytest.raises(VectorShapeError, match="different sizes"):
        cosine_matrix({"a": torch.ones(4), "b": torch.ones(5)})
    with pytest.raises(VectorShapeError, match="different sizes"):
        project_2d([torch.ones(4), torch.ones(3)])
    with pytest.raises(SteerlensError, match="norm 0"):
        cosine_matrix([torch.ones(4), torch.zeros(4)])
    with pytest.raises(VectorShapeError, match="1-D"):
        cosine_matrix([torch.ones(2, 4), torch.ones(4)])
    with pytest.raises(VectorShapeError, match=r"\[n, 4\]"):
        project_2d([torch.ones(4), torch.ones(4)], {"acts": torch.ones(3, 5)})


def test_heatmap_figure(tmp_path):
    fig = cosine_matrix(_vectors(3)).plot()
    assert isinstance(fig, go.Figure)
    assert [t.type for t in fig.data] == ["heatmap"]
    assert "Cosine similarity" in fig.layout.title.text
    path = save_html(fig, tmp_path / "cos.html")
    assert path.stat().st_size > 1000


def test_project_2d_figure(tmp_path):
    a = torch.zeros(64)
    a[0] = 3.0
    b = torch.zeros(64)
    b[1] = 4.0
    acts = {"positive": torch.randn(10, 64), "negative": torch.randn(7, 64)}
    fig = project_2d({"a": a, "b": b}, acts)
    assert [t.name for t in fig.data] == ["a", "b", "positive", "negative"]
    assert all(t.type == "scatter" for t in fig.data)
    assert [len(t.x) for t in fig.data] == [2, 2, 10, 7]
    # The plane of two vectors is their span: arrows keep their lengths and start at 0.
    lengths = [float(np.hypot(t.x[1], t.y[1])) for t in fig.data[:2]]
    assert lengths == pytest.approx([3.0, 4.0])
    assert (fig.data[0].x[0], fig.data[0].y[0]) == (0.0, 0.0)
    assert "PC1" in fig.layout.xaxis.title.text
    path = save_html(fig, tmp_path / "proj.html")
    assert path.stat().st_size > 1000
