"""Linear mode connectivity of steering vectors (METHOD.md, "Mode connectivity").

The path between two vectors ``v0`` and ``v1`` is the *geodesic* of `geodesic`: the
straight line ``w(t) = (1 - t) v0 + t v1``, each point rescaled to the norm
``r(t) = (1 - t) ||v0|| + t ||v1||`` (the linear interpolation of the endpoints' norms), at
``n`` evenly spaced ``t`` in ``[0, 1]`` (``n = 20`` as in the paper; the endpoints are ``v0``
and ``v1`` exactly).

Verdict (METHOD.md's definition, followed exactly): the pair is **not** linearly mode connected
iff some *interior* point (``0 < t < 1``) has a loss strictly lower than *both* endpoints' losses,
i.e. lower than ``min(L(v0), L(v1))`` (by more than ``tol``, default 0). Otherwise it is
connected. Note this is not the "loss barrier" reading common elsewhere (an interior loss
*higher* than the endpoints); `ConnectivityResult.barrier` reports that quantity too.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch
from jaxtyping import Float
from torch import Tensor

from steerlens.analysis.geometry import VectorLike, as_direction
from steerlens.analysis.plots import style_figure
from steerlens.errors import (
    NonFiniteError,
    SpecError,
    SteerlensError,
    VectorShapeError,
    check_keywords,
)
from steerlens.io.plain import to_plain
from steerlens.steering.positions import PositionsLike
from steerlens.steering.vector import SteeringVector
from steerlens.training.data import Datapoint
from steerlens.training.objectives import Objective
from steerlens.training.optimize import ObjectiveScorer


def _check_n(n: int, minimum: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < minimum:
        raise SpecError(f"n (points on the path) must be an int >= {minimum}, got {n!r}.")


def geodesic(v0: VectorLike, v1: VectorLike, n: int = 20) -> Float[Tensor, "n d_model"]:
    """``n`` points from ``v0`` to ``v1``: linear interpolation rescaled to the linearly
    interpolated norm. The first row is ``v0`` and the last is ``v1``, exactly; if the norms
    are equal, every point has that norm.

    Example:
        >>> import torch
        >>> path = geodesic(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), n=3)
        >>> [round(x, 4) for x in path.norm(dim=1).tolist() + path[1].tolist()]
        [1.0, 1.0, 1.0, 0.7071, 0.7071]
    """
    _check_n(n, 2)
    a = as_direction(v0, name="v0")
    b = as_direction(v1, name="v1")
    if a.shape != b.shape:
        raise VectorShapeError(
            f"v0 has size {a.shape[0]} but v1 has size {b.shape[0]}; both must have one d_model."
        )
    for name, v in (("v0", a), ("v1", b)):
        if not bool(torch.isfinite(v).all()):
            raise NonFiniteError(f"{name} has NaN/inf entries; the geodesic is undefined.")
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    a, b = a.detach().to(dtype), b.detach().to(device=a.device, dtype=dtype)
    t = torch.linspace(0.0, 1.0, n, dtype=dtype, device=a.device)[:, None]
    line = (1 - t) * a + t * b
    r0, r1 = a.norm(), b.norm()
    radius = r0 + t * (r1 - r0)  # exactly r0 everywhere when r1 == r0
    length = line.norm(dim=1, keepdim=True)
    if bool((length[1:-1] == 0).any()):
        where = float(t[1:-1][length[1:-1] == 0][0])
        raise SteerlensError(
            f"the straight line from v0 to v1 passes through the origin at t={where:.3g} "
            "(v1 is a negative multiple of v0), so the rescaled path is undefined there."
        )
    path = line / length.clamp_min(torch.finfo(dtype).tiny) * radius
    path[0], path[-1] = a, b
    return path


@dataclass(frozen=True)
class ConnectivityResult:
    """The objective's loss along the geodesic between two vectors.

    Attributes:
        t: ``[n]`` path parameters in ``[0, 1]``.
        losses: ``[n]`` total objective loss (summed over completions) at each point, in ``unit``.
        norms: ``[n]`` norm of each point.
        layer: the layer the vectors are applied at.
        unit: the loss unit (``"nats"``, ``"bits"`` or ``"hartleys"``).
        connected: no interior point has a loss lower than both endpoints (see module doc).
        labels: the names of the two endpoints.
        tol: the tolerance the verdict used.
    """

    t: Float[np.ndarray, " n"]
    losses: Float[np.ndarray, " n"]
    norms: Float[np.ndarray, " n"]
    layer: int
    unit: str
    connected: bool
    labels: tuple[str, str] = ("v0", "v1")
    tol: float = 0.0

    @property
    def endpoint_losses(self) -> tuple[float, float]:
        return float(self.losses[0]), float(self.losses[-1])

    @property
    def lowest_interior(self) -> tuple[float, float]:
        """``(t, loss)`` of the interior point with the lowest loss."""
        i = 1 + int(np.argmin(self.losses[1:-1]))
        return float(self.t[i]), float(self.losses[i])

    @property
    def barrier(self) -> float:
        """Highest interior loss minus the higher endpoint loss (> 0: a loss barrier)."""
        return float(self.losses[1:-1].max() - max(self.endpoint_losses))

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready), with the endpoint losses and the barrier."""
        return to_plain(self, include=["endpoint_losses", "barrier"])

    def plot(self) -> go.Figure:
        """Loss against position on the path, with the lower endpoint's loss marked."""
        fig = go.Figure()
        fig.add_trace(
            go.Scatter(x=self.t.tolist(), y=self.losses.tolist(), mode="lines+markers", name="path")
        )
        fig.add_trace(
            go.Scatter(
                x=[0.0, 1.0],
                y=list(self.endpoint_losses),
                mode="markers+text",
                text=list(self.labels),
                textposition="top center",
                marker={"size": 12, "symbol": "diamond"},
                name="endpoints",
            )
        )
        fig.add_hline(
            y=min(self.endpoint_losses),
            line_dash="dash",
            annotation_text="lower endpoint",
            annotation_position="bottom right",
        )
        verdict = "connected" if self.connected else "NOT linearly mode connected"
        title = f"Loss along the geodesic {self.labels[0]} → {self.labels[1]} ({verdict})"
        return style_figure(
            fig,
            title,
            f"position t on the path (0 = {self.labels[0]}, 1 = {self.labels[1]})",
            f"objective loss ({self.unit})",
        )


def is_connected(losses: Sequence[float] | np.ndarray, tol: float = 0.0) -> bool:
    """METHOD.md's verdict on a loss profile: ``False`` iff some interior loss is lower than
    both endpoints' losses by more than ``tol``.

    Example:
        >>> is_connected([1.0, 2.0, 1.5]), is_connected([1.0, 0.5, 1.5])
        (True, False)
    """
    x = np.asarray(losses, dtype=np.float64)
    if x.ndim != 1 or x.size < 3:
        raise SpecError(f"need a 1-D loss profile with an interior point, got shape {x.shape}.")
    return not bool(np.any(x[1:-1] < min(x[0], x[-1]) - tol))


def mode_connectivity(
    model: Any,
    datapoints: Datapoint | Sequence[Datapoint],
    layer: int,
    v0: VectorLike,
    v1: VectorLike,
    n: int = 20,
    *,
    objective: Objective | None = None,
    positions: PositionsLike = None,
    unit: str = "nats",
    fast: bool = True,
    tol: float = 0.0,
    labels: tuple[str, str] = ("v0", "v1"),
) -> ConnectivityResult:
    """The objective's loss at ``n`` points of the geodesic from ``v0`` to ``v1`` (each point
    scored like `steerlens.evaluate_objective` at ``layer``), and the verdict.

    Args:
        model: a TransformerLens model.
        datapoints: the datapoints whose objective is measured.
        layer: the layer where each point is added.
        v0, v1: the endpoints (``[d_model]`` tensors or single-direction ``SteeringVector``\\ s).
        n: points on the path, endpoints included (paper: 20).
        objective, positions, unit, fast: as in `steerlens.evaluate_objective`.
        tol: an interior loss must be lower than both endpoints by more than this.
        labels: names of the endpoints (for plots).

    Example:
        >>> import torch
        >>> from steerlens.testing import tiny_model
        >>> from steerlens import Datapoint
        >>> m, dp = tiny_model(), Datapoint("a", promote=[" b"])
        >>> res = mode_connectivity(m, dp, 1, torch.ones(64), -torch.ones(64) + 0.5, n=3)
        >>> res.losses.shape, type(res.connected)
        ((3,), <class 'bool'>)
    """
    _check_n(n, 3)
    for v in (v0, v1):
        if isinstance(v, SteeringVector):
            v.check_compatible(model)
    path = geodesic(v0, v1, n)
    scorer = ObjectiveScorer(
        model, datapoints, layer, objective=objective, positions=positions, unit=unit, fast=fast
    )
    losses = np.array([scorer(p).total for p in path])
    return ConnectivityResult(
        t=np.linspace(0.0, 1.0, n),
        losses=losses,
        norms=path.double().norm(dim=1).cpu().numpy(),
        layer=layer,
        unit=unit,
        connected=is_connected(losses, tol),
        labels=(str(labels[0]), str(labels[1])),
        tol=tol,
    )


@dataclass(frozen=True)
class AllPairsConnectivity:
    """Connectivity of every pair of a set of vectors.

    Attributes:
        labels: the vectors' labels.
        pairs: ``(label_i, label_j)`` -> its `ConnectivityResult`.
        ordered: ``True`` when each vector had its own datapoints (pairs are ordered and
            ``(i, j)`` is scored on vector ``i``'s datapoints); ``False`` for shared datapoints
            (unordered pairs ``i < j``).
    """

    labels: list[str]
    pairs: dict[tuple[str, str], ConnectivityResult]
    ordered: bool

    @property
    def n_pairs(self) -> int:
        return len(self.pairs)

    @property
    def n_connected(self) -> int:
        return sum(r.connected for r in self.pairs.values())

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready); ``pairs`` is a list of ``{"from", "to", ...}`` rows."""
        pairs = [{"from": a, "to": b} | r.to_dict() for (a, b), r in self.pairs.items()]
        return to_plain(self, include=["n_pairs", "n_connected"]) | {"pairs": pairs}

    def __repr__(self) -> str:
        kind = "ordered" if self.ordered else "unordered"
        return (
            f"AllPairsConnectivity({self.n_connected}/{self.n_pairs} {kind} pairs linearly "
            "mode connected)"
        )


def _labelled(vectors: Mapping[str, VectorLike] | Sequence[VectorLike]) -> list[tuple[str, Any]]:
    if isinstance(vectors, Mapping):
        items = [(str(k), v) for k, v in vectors.items()]
    else:
        items = [(f"v{i}", v) for i, v in enumerate(vectors)]
    if len(items) < 2:
        raise SteerlensError(f"need at least 2 vectors to form pairs, got {len(items)}.")
    return items


def _infer_layer(items: list[tuple[str, Any]], layer: int | None) -> int:
    if layer is not None:
        return layer
    layers = {tuple(v.layers) for _, v in items if isinstance(v, SteeringVector)}
    if (
        len(layers) == 1
        and len(next(iter(layers))) == 1
        and all(isinstance(v, SteeringVector) for _, v in items)
    ):
        return next(iter(layers))[0]
    raise SpecError(
        "cannot tell which layer to apply the vectors at; pass layer=<int> (needed for bare "
        "tensors, and for SteeringVectors with several or differing layers)."
    )


def _per_vector_data(datapoints: Any, labels: list[str]) -> list[list[Datapoint]] | None:
    """Per-vector datapoints (a list of lists, or a dict label -> datapoints), else None."""
    if isinstance(datapoints, Datapoint):
        return None
    if isinstance(datapoints, Mapping):
        missing = [lab for lab in labels if lab not in datapoints]
        if missing:
            raise SteerlensError(
                f"datapoints has no entry for vectors {missing}; give each vector's datapoints."
            )
        groups = [datapoints[lab] for lab in labels]
    elif all(isinstance(d, Datapoint) for d in datapoints):
        return None
    else:
        groups = list(datapoints)
        if len(groups) != len(labels):
            raise SteerlensError(
                f"got {len(groups)} datapoint groups for {len(labels)} vectors; pass one group "
                "per vector, or a flat list of Datapoints shared by all."
            )
    return [[g] if isinstance(g, Datapoint) else list(g) for g in groups]


# The keywords of mode_connectivity that all_pairs_connectivity passes on.
CONNECTIVITY_OPTIONS = ("n", "objective", "positions", "unit", "fast", "tol")


def all_pairs_connectivity(
    model: Any,
    datapoints: Any,
    vectors: Mapping[str, VectorLike] | Sequence[VectorLike],
    *,
    layer: int | None = None,
    **options: Any,
) -> AllPairsConnectivity:
    """`mode_connectivity` for every pair of ``vectors``; ``.n_connected`` counts the
    connected ones (the paper: 529 of 552 ordered pairs of 24 vectors).

    Args:
        model: a TransformerLens model.
        datapoints: either shared datapoints (a ``Datapoint`` or a flat list of them: every
            unordered pair ``i < j`` is scored on them), or per-vector datapoints (a list with
            one ``Datapoint`` or list per vector, or a dict label -> datapoints: every ordered
            pair ``(i, j)``, ``i != j``, is scored on vector ``i``'s datapoints, the example it
            was trained on).
        vectors: a dict label -> vector, or a list (labelled ``v0, v1, ...``).
        layer: the layer to apply at (inferred from single-layer ``SteeringVector``\\ s).
        **options: keywords of `mode_connectivity` (``n``, ``objective``,
            ``positions``, ``unit``, ``fast``, ``tol``); others are refused.

    Example:
        >>> import torch
        >>> from steerlens.testing import tiny_model
        >>> from steerlens import Datapoint
        >>> vs = {"a": torch.ones(64), "b": -torch.ones(64) * 0.2 + torch.arange(64) / 64}
        >>> res = all_pairs_connectivity(tiny_model(), Datapoint("a", promote=[" b"]), vs,
        ...                              layer=1, n=3)
        >>> res.n_pairs, res.ordered, list(res.pairs)
        (1, False, [('a', 'b')])
    """
    items = _labelled(vectors)
    labels = [k for k, _ in items]
    la = _infer_layer(items, layer)
    per_vector = _per_vector_data(datapoints, labels)
    check_keywords(
        options,
        ("n", "objective", "positions", "unit", "fast", "tol"),
        where="all_pairs_connectivity",
    )
    kw = options
    pairs: dict[tuple[str, str], ConnectivityResult] = {}
    vecs = dict(items)
    if per_vector is None:
        for a, b in itertools.combinations(labels, 2):
            pairs[(a, b)] = mode_connectivity(
                model, datapoints, la, vecs[a], vecs[b], labels=(a, b), **kw
            )
    else:
        data = dict(zip(labels, per_vector, strict=True))
        for a, b in itertools.permutations(labels, 2):
            pairs[(a, b)] = mode_connectivity(
                model, data[a], la, vecs[a], vecs[b], labels=(a, b), **kw
            )
    return AllPairsConnectivity(labels, pairs, ordered=per_vector is not None)


__all__ = [
    "AllPairsConnectivity",
    "ConnectivityResult",
    "all_pairs_connectivity",
    "geodesic",
    "is_connected",
    "mode_connectivity",
]
