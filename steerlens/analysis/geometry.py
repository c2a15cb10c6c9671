"""The geometry of a set of steering vectors: pairwise cosine similarities (the paper reports
the maximum and median over pairs) and a 2-D PCA picture of the vectors with activations."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch
from jaxtyping import Float
from torch import Tensor

from steerlens.analysis.plots import style_figure
from steerlens.errors import LayerError, NonFiniteError, SteerlensError, VectorShapeError
from steerlens.io.plain import to_plain
from steerlens.steering.vector import SteeringVector

VectorLike = Tensor | SteeringVector
Vectors = Mapping[str, VectorLike] | Sequence[VectorLike]


# -- inputs --------------------------------------------------------------------------------


def as_direction(vector: VectorLike, *, layer: int | None = None, name: str = "vector") -> Tensor:
    """The ``[d_model]`` direction of a tensor or ``SteeringVector`` (at ``layer`` if given)."""
    if isinstance(vector, SteeringVector):
        if layer is not None:
            if layer not in vector.directions:
                raise LayerError(
                    f"{name} has no direction at layer {layer}; it has layers {vector.layers}. "
                    "Pass one of those as layer=."
                )
            return vector.directions[layer]
        if len(vector.layers) > 1:
            try:
                return vector.vector
            except SteerlensError:
                raise SteerlensError(
                    f"{name} has different directions at layers {vector.layers}; pass layer= "
                    "to choose one."
                ) from None
        return vector.directions[vector.layers[0]]
    if not isinstance(vector, Tensor):
        raise VectorShapeError(
            f"{name} is a {type(vector).__name__}; pass a torch.Tensor or a SteeringVector."
        )
    if vector.ndim != 1:
        raise VectorShapeError(
            f"{name} must be 1-D [d_model], got shape {tuple(vector.shape)}; pass one direction."
        )
    return vector


def labelled_matrix(
    vectors: Vectors, *, layer: int | None = None, minimum: int = 2
) -> tuple[list[str], Float[np.ndarray, "k d_model"]]:
    """Labels and the float64 matrix of the vectors (one row each), checked.

    A mapping keeps its keys as labels; a sequence is labelled ``v0, v1, ...``.
    """
    if isinstance(vectors, Mapping):
        items = [(str(k), v) for k, v in vectors.items()]
    elif isinstance(vectors, (Tensor, SteeringVector)):
        items = [("v0", vectors)]
    else:
        items = [(f"v{i}", v) for i, v in enumerate(vectors)]
    if len(items) < minimum:
        raise SteerlensError(
            f"need at least {minimum} vectors, got {len(items)}; pass a list or a dict of "
            f"{minimum} or more vectors."
        )
    rows = [as_direction(v, layer=layer, name=f"vector {k!r}") for k, v in items]
    sizes = {k: int(r.shape[0]) for (k, _), r in zip(items, rows, strict=True)}
    if len(set(sizes.values())) != 1:
        raise VectorShapeError(
            f"vectors have different sizes {sizes}; compare vectors of one model (one d_model)."
        )
    matrix = torch.stack([r.detach().to(device="cpu", dtype=torch.float64) for r in rows])
    if not bool(torch.isfinite(matrix).all()):
        raise NonFiniteError("some vectors have NaN/inf entries; their geometry is undefined.")
    return [k for k, _ in items], matrix.numpy()


# -- cosine similarities -------------------------------------------------------------------


@dataclass(frozen=True)
class CosineResult:
    """Pairwise cosine similarities.

    Attributes:
        labels: one label per vector.
        matrix: ``[k, k]`` cosine similarities: symmetric, with ones on the diagonal.
        layer: the layer the directions were taken at (``None``: single-layer vectors).
    """

    labels: list[str]
    matrix: Float[np.ndarray, "k k"]
    layer: int | None = None

    @property
    def off_diagonal(self) -> Float[np.ndarray, " pairs"]:
        """The similarity of each unordered pair ``i < j``."""
        i, j = np.triu_indices(len(self.labels), k=1)
        return self.matrix[i, j]

    @property
    def summary(self) -> dict[str, float]:
        """Max, median and min over the off-diagonal pairs (as the paper reports them)."""
        off = self.off_diagonal
        return {
            "max": float(off.max()),
            "median": float(np.median(off)),
            "min": float(off.min()),
            "max_abs": float(np.abs(off).max()),
            "n_pairs": float(off.size),
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready), with the summary statistics."""
        return to_plain(self, include=["summary"])

    def plot(self) -> go.Figure:
        """A heatmap of the matrix (cosine similarity, unitless, from -1 to 1)."""
        text = [[f"{x:.3f}" for x in row] for row in self.matrix]
        fig = go.Figure(
            go.Heatmap(
                z=self.matrix,
                x=self.labels,
                y=self.labels,
                zmin=-1.0,
                zmax=1.0,
                colorscale="RdBu",
                reversescale=True,
                text=text,
                texttemplate="%{text}",
                colorbar={"title": {"text": "cosine"}},
            )
        )
        s = self.summary
        where = "" if self.layer is None else f" at layer {self.layer}"
        title = (
            f"Cosine similarity between steering vectors{where} "
            f"(off-diagonal max {s['max']:.3f}, median {s['median']:.3f})"
        )
        fig = style_figure(fig, title, "vector", "vector")
        fig.update_yaxes(autorange="reversed")
        return fig


def cosine_matrix(vectors: Vectors, layer: int | None = None) -> CosineResult:
    """Cosine similarity of every pair of vectors.

    Args:
        vectors: a dict label -> vector, or a list (labelled ``v0, v1, ...``); each a
            ``[d_model]`` tensor or a ``SteeringVector``.
        layer: for multi-layer ``SteeringVector``\\ s, the layer whose directions to compare.

    Example:
        >>> import torch
        >>> res = cosine_matrix({"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([1.0, 1.0])})
        >>> res.matrix.round(3).tolist(), round(res.summary["max"], 3)
        ([[1.0, 0.707], [0.707, 1.0]], 0.707)
    """
    labels, m = labelled_matrix(vectors, layer=layer)
    norms = np.linalg.norm(m, axis=1)
    if np.any(norms == 0):
        zero = [lab for lab, n in zip(labels, norms, strict=True) if n == 0]
        raise SteerlensError(
            f"vectors {zero} have norm 0, so their cosine similarity is undefined; drop them."
        )
    unit = m / norms[:, None]
    gram = unit @ unit.T
    gram = np.clip((gram + gram.T) / 2.0, -1.0, 1.0)
    np.fill_diagonal(gram, 1.0)
    return CosineResult(labels, gram, layer)


# -- 2-D picture ---------------------------------------------------------------------------


def _plane(m: Float[np.ndarray, "k d"]) -> tuple[Float[np.ndarray, "2 d"], Float[np.ndarray, " 2"]]:
    """The two leading right singular vectors of ``m`` (uncentred: a plane through the origin,
    so vectors stay arrows from the origin) and the share of ``||m||^2`` each explains."""
    if m.shape[1] < 2:
        raise VectorShapeError(f"vectors of size {m.shape[1]} cannot be projected to 2-D.")
    _, s, vh = np.linalg.svd(m, full_matrices=False)
    total = float((s**2).sum())
    share = (s[:2] ** 2) / total if total > 0 else np.zeros(2)
    basis = vh[:2].copy()  # k >= 2 and d >= 2, so there are two rows
    for i in range(2):  # deterministic signs: the first vector projects non-negatively
        if float(m[0] @ basis[i]) < 0:
            basis[i] = -basis[i]
    return basis, share


def project_2d(
    vectors: Vectors,
    activations: Mapping[str, Float[Tensor, "n d_model"]] | None = None,
    *,
    layer: int | None = None,
    title: str = "Steering vectors in their top-2 principal plane",
) -> go.Figure:
    """Project vectors (arrows from the origin) and optional activation clouds to 2-D.

    The plane is spanned by the vectors' two leading principal directions (uncentred PCA, so
    the origin stays fixed); activations are projected onto the same plane.

    Args:
        vectors: a dict label -> vector, or a list; tensors or ``SteeringVector``\\ s.
        activations: optional label -> ``[n, d_model]`` activations (e.g. from
            `steerlens.baselines.collect_activations`), drawn as point clouds.
        layer: for multi-layer ``SteeringVector``\\ s, the layer to use.
        title: the figure title.

    Example:
        >>> import torch
        >>> fig = project_2d([torch.tensor([1.0, 0, 0]), torch.tensor([0, 2.0, 0])],
        ...                  {"acts": torch.randn(5, 3)})
        >>> [t.name for t in fig.data]
        ['v0', 'v1', 'acts']
    """
    labels, m = labelled_matrix(vectors, layer=layer)
    basis, share = _plane(m)
    coords = m @ basis.T
    fig = go.Figure()
    for lab, (x, y) in zip(labels, coords, strict=True):
        fig.add_trace(
            go.Scatter(
                x=[0.0, float(x)],
                y=[0.0, float(y)],
                mode="lines+markers",
                name=lab,
                marker={
                    "symbol": ["circle-open", "arrow"],
                    "size": [4, 14],
                    "angleref": "previous",
                },
                line={"width": 3},
            )
        )
    for group, acts in (activations or {}).items():
        points = _check_activations(acts, group, m.shape[1]) @ basis.T
        fig.add_trace(
            go.Scatter(
                x=points[:, 0].tolist(),
                y=points[:, 1].tolist(),
                mode="markers",
                name=str(group),
                marker={"size": 7, "opacity": 0.6},
            )
        )
    fig = style_figure(
        fig,
        title,
        f"PC1 ({share[0]:.0%} of the vectors' squared norm; residual-stream units)",
        f"PC2 ({share[1]:.0%}; residual-stream units)",
    )
    fig.update_yaxes(scaleanchor="x", scaleratio=1)
    return fig


def _check_activations(acts: Tensor, group: str, d: int) -> Float[np.ndarray, "n d"]:
    if not isinstance(acts, Tensor) or acts.ndim != 2 or acts.shape[1] != d:
        shape = tuple(acts.shape) if isinstance(acts, Tensor) else type(acts).__name__
        raise VectorShapeError(
            f"activations {group!r} must be an [n, {d}] tensor (the vectors' size), got {shape}."
        )
    out = acts.detach().to(device="cpu", dtype=torch.float64).numpy()
    if not np.isfinite(out).all():
        raise NonFiniteError(f"activations {group!r} contain NaN/inf.")
    return out


__all__ = ["CosineResult", "cosine_matrix", "project_2d"]
