"""How strongly should I steer? `calibrate` finds the strength (and, optionally, the layer)
with the best judged behavior rate whose replies stay coherent, and returns the curve that
justifies it.

It is a `steerlens.studies.layer_strength_grid` over the strengths (and layers) followed by
`GridResult.frontier` under the coherence budget, plus the residual-stream norm at each
layer (`steerlens.analysis.scale.residual_norms`) as a sense of scale: "your vector is 40%
of the typical residual norm at layer 6".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import Tensor

from steerlens.errors import InputError, SpecError
from steerlens.evaluation.judges import Judge
from steerlens.steering.positions import PositionsLike
from steerlens.steering.steer import Steering
from steerlens.steering.vector import SteeringVector
from steerlens.studies.grid import (
    DEFAULT_MAX_NLL_RATIO,
    FrontierPoint,
    GridResult,
    GridSource,
    check_budget,
    describe_budget,
    layer_strength_grid,
)

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from steerlens.analysis.scale import ResidualNorms

# Multiples of the vector as given: 1 is the vector as trained.
DEFAULT_STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
# budget metric -> (frontier keyword, title, unit)
_COSTS = {
    "nll_ratio": ("max_nll_ratio", "NLL ratio", "steered / unsteered"),
    "kl": ("max_kl", "side-effect KL", "nats"),
    "distinct": ("min_distinct", "distinct-n", "fraction"),
}


@dataclass(frozen=True, eq=False)
class Calibration:
    """The calibrated strength (and layer), with the measurements that justify it.

    Attributes:
        point: the chosen cell (`steerlens.studies.FrontierPoint`): layer, strength, its
            behavior rate with a Wilson interval and its coherence; ``point.found`` is False
            (with a ``note`` saying how close the grid came) when no strength is within the
            budget.
        grid: every (layer, strength) measured (`steerlens.studies.GridResult`): behavior,
            NLL ratio, KL (with neutral prompts) and distinct-n, with intervals and replies.
        budget: the limits applied (``max_nll_ratio``, ``max_kl``, ``min_distinct``).
        norms: the residual-stream norms at the grid's layers (`ResidualNorms`), or ``None``
            when the prompts were too short to measure them.
        vector_norms: layer -> the norm of the vector applied there (strength 1).
        source: the vector calibrated, when it was a ``SteeringVector`` (`steering` then
            applies it, with its model check).
    """

    point: FrontierPoint
    grid: GridResult
    budget: dict[str, float]
    norms: ResidualNorms | None
    vector_norms: dict[int, float]
    source: SteeringVector | None = None

    @property
    def found(self) -> bool:
        """Whether some strength is within the budget."""
        return self.point.found

    @property
    def layer(self) -> int | None:
        """The chosen layer (``None`` when nothing is within the budget)."""
        return self.point.layer

    @property
    def strength(self) -> float | None:
        """The chosen strength (``None`` when nothing is within the budget)."""
        return self.point.strength

    @property
    def behavior(self) -> float:
        """The judged behavior rate at the chosen point."""
        return self.point.behavior

    @property
    def steering(self) -> Steering:
        """The chosen point as a `steerlens.Steering` plan, ready for ``steering=``."""
        if self.point.layer is None or self.point.strength is None:
            raise SpecError(
                f"no strength is within the budget, so there is no plan: {self.point.note}"
            )
        if self.source is not None:
            return Steering(
                self.source,
                layer=self.point.layer,
                strength=self.point.strength,
                positions=self.grid.positions,
            )
        return self.point.steering

    def fraction_of_residual(self, layer: int | None = None, strength: float = 1.0) -> float:
        """The norm of ``strength`` times the vector at ``layer`` (default: the chosen one)
        over the typical residual-stream norm there (NaN when the norms are unmeasured)."""
        la = self._layer(layer)
        if self.norms is None:
            return math.nan
        return abs(strength) * self.vector_norms[la] / self.norms.at(la)

    def guidance(self) -> str:
        """One line of scale: the vector's norm next to the typical residual norm at the
        chosen layer (or the grid's first), at strength 1 and at the chosen strength."""
        la = self._layer(None)
        norm = self.vector_norms[la]
        if self.norms is None:
            return f"vector norm {norm:.3g} at layer {la} (residual norms not measured)"
        typical = self.norms.at(la)
        line = (
            f"your vector (norm {norm:.3g}) is {norm / typical:.0%} of the typical residual "
            f"norm at layer {la} ({typical:.3g})"
        )
        if self.point.strength is not None:
            s = self.point.strength
            line += f"; at strength {s:g} it adds {abs(s) * norm / typical:.0%} of it"
        return line

    def curve(self, layer: int | None = None) -> list[dict[str, Any]]:
        """The strength curve at ``layer`` (default: the chosen one): one row per strength
        with behavior, its interval, each coherence metric, ``within_budget`` and the
        fraction of the residual norm it adds."""
        la = self._layer(layer)
        rows = [r for r in self.grid.to_rows() if r["layer"] == la]
        chosen = self.point.strength if la == self.point.layer else None
        for row in rows:
            row["within_budget"] = self._within(row)
            row["fraction_of_residual"] = self.fraction_of_residual(la, row["strength"])
            row["chosen"] = chosen is not None and math.isclose(row["strength"], chosen)
        return rows

    def _within(self, row: Mapping[str, Any]) -> bool:
        for metric, (name, _, _) in _COSTS.items():
            if name not in self.budget:
                continue
            value = row.get(metric, math.nan)
            if value is None or math.isnan(value):
                return False
            if (
                (value > self.budget[name])
                if name.startswith("max")
                else (value < self.budget[name])
            ):
                return False
        return True

    def _layer(self, layer: int | None) -> int:
        if layer is None:
            return self.point.layer if self.point.layer is not None else self.grid.layers[0]
        if layer not in self.grid.layers:
            raise SpecError(
                f"layer {layer} was not calibrated; the layers are {list(self.grid.layers)}."
            )
        return layer

    def plot(self, layer: int | None = None) -> go.Figure:
        """Behavior (with its interval) against strength at ``layer`` (default: the chosen
        one), and below it each budgeted coherence metric with its budget line; the chosen
        point is starred.

        Example:
            >>> import torch
            >>> from steerlens.testing import tiny_model
            >>> cal = calibrate(tiny_model(), torch.ones(64), ["the cat"], lambda t: "e" in t,
            ...                 layers=[1], strengths=[0, 4], max_new_tokens=3, progress=False)
            >>> [t.name for t in cal.plot().data][:2]
            ['behavior', 'chosen']
        """
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        from steerlens.analysis.plots import style_figure

        la = self._layer(layer)
        rows = self.curve(la)
        costs = [m for m, (name, _, _) in _COSTS.items() if name in self.budget] or ["nll_ratio"]
        titles = ["behavior rate (fraction judged yes)"] + [
            f"{_COSTS[m][1]} ({_COSTS[m][2]})" for m in costs
        ]
        fig = make_subplots(
            rows=1 + len(costs),
            cols=1,
            shared_xaxes=True,
            subplot_titles=titles,
            vertical_spacing=0.08,
        )
        x = [r["strength"] for r in rows]
        chosen = [r for r in rows if r["chosen"]]
        fig.add_trace(
            go.Scatter(
                x=x,
                y=[r["behavior"] for r in rows],
                mode="lines+markers",
                name="behavior",
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": [r["behavior_high"] - r["behavior"] for r in rows],
                    "arrayminus": [r["behavior"] - r["behavior_low"] for r in rows],
                },
                hovertemplate="strength %{x:g}: behavior %{y:.0%}<extra></extra>",
            ),
            row=1,
            col=1,
        )
        star = {"symbol": "star", "size": 16, "color": "gold", "line": {"width": 1}}
        fig.add_trace(
            go.Scatter(
                x=[r["strength"] for r in chosen],
                y=[r["behavior"] for r in chosen],
                mode="markers",
                marker=star,
                name="chosen",
            ),
            row=1,
            col=1,
        )
        fig.add_hline(
            y=self.grid.baseline["behavior"],
            line_dash="dot",
            annotation_text="unsteered",
            row=1,
            col=1,
        )
        for k, metric in enumerate(costs, start=2):
            name, title, _ = _COSTS[metric]
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=[r.get(metric, math.nan) for r in rows],
                    mode="lines+markers",
                    name=title,
                    hovertemplate=f"strength %{{x:g}}: {title} %{{y:.3g}}<extra></extra>",
                ),
                row=k,
                col=1,
            )
            if name in self.budget:
                side = "at most" if name.startswith("max") else "at least"
                fig.add_hline(
                    y=self.budget[name],
                    line_dash="dash",
                    line_color="firebrick",
                    annotation_text=f"budget: {side} {self.budget[name]:g}",
                    row=k,
                    col=1,
                )
            fig.add_trace(
                go.Scatter(
                    x=[r["strength"] for r in chosen],
                    y=[r.get(metric, math.nan) for r in chosen],
                    mode="markers",
                    marker=star,
                    showlegend=False,
                    name="chosen",
                ),
                row=k,
                col=1,
            )
        fig = style_figure(
            fig,
            f"Calibration at layer {la}: {self.point.summary()}",
            "",
            "behavior rate",
        )
        fig.update_xaxes(title_text="strength", row=1 + len(costs), col=1)
        fig.update_yaxes(range=[-0.02, 1.02], tickformat=".0%", row=1, col=1)
        fig.update_layout(height=300 + 220 * len(costs))
        return fig

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready): the point, the budget, the guidance, the curve at the
        chosen layer and the whole grid."""
        return {
            "point": self.point.to_dict(),
            "budget": dict(self.budget),
            "guidance": self.guidance(),
            "vector_norms": {str(k): v for k, v in self.vector_norms.items()},
            "norms": None if self.norms is None else self.norms.to_dict(),
            "curve": self.curve(),
            "grid": self.grid.to_dict(),
        }

    def __repr__(self) -> str:
        head = f"Calibration({describe_budget(self.budget)}: {self.point.summary()})"
        return f"{head}\n  {self.guidance()}"


def calibrate(
    model: Any,
    vector: GridSource,
    prompts: Sequence[str],
    judge: Judge,
    *,
    strengths: Sequence[float] = DEFAULT_STRENGTHS,
    layers: int | Sequence[int] | None = None,
    neutral_prompts: Sequence[str] | None = None,
    max_nll_ratio: float | None = DEFAULT_MAX_NLL_RATIO,
    max_kl: float | None = None,
    min_distinct: float | None = None,
    max_new_tokens: int = 32,
    chat: bool | None = None,
    batch_size: int = 16,
    n: int = 3,
    positions: PositionsLike = "all",
    progress: bool | None = None,
) -> Calibration:
    """The strength (and layer) with the best judged behavior rate whose replies stay within
    a coherence budget, with the curve that justifies it.

    Runs `steerlens.studies.layer_strength_grid` over ``strengths`` (and ``layers``), then
    takes `GridResult.frontier` under the budget: among the cells within it, the best
    behavior rate, then the lowest NLL ratio, then the smallest strength. Also measures the
    residual-stream norm at each layer on ``prompts`` (`steerlens.analysis.scale.residual_norms`)
    to put the vector's size in scale.

    Args:
        model: a TransformerLens model.
        vector: a ``SteeringVector`` (calibrated at its own layer(s) unless ``layers`` is
            given), a ``[d_model]`` tensor (needs ``layers``), a mapping layer -> vector or a
            callable layer -> vector (as in `layer_strength_grid`).
        prompts: held-out prompts to reply to (user messages with ``chat=True``).
        judge: ``text -> bool``, True where a reply shows the behavior.
        strengths: multiples of the vector to try (default 0 to 2; 0 is the unsteered model).
        layers: the layers to try; ``None`` uses the vector's own layers.
        neutral_prompts: prompts where the behavior should not change, for the side-effect
            KL (needed by ``max_kl``).
        max_nll_ratio: the most the unsteered model's per-token NLL of the steered replies
            may be, over that of its own replies (``None``: no limit).
        max_kl: the most side-effect KL (nats) on the neutral prompts (``None``: no limit).
        min_distinct: the least distinct-n of the replies (``None``: no limit).
        max_new_tokens, chat, batch_size, n, positions, progress: as in
            `layer_strength_grid` (``positions="opening:2"`` calibrates a vector that steers
            only the prompt and how the reply opens).

    Returns:
        A `Calibration`: ``.strength``/``.layer``, ``.steering`` (a ready plan), ``.curve()``,
        ``.plot()``, ``.guidance()`` and the whole ``.grid``.

    Example:
        >>> import torch
        >>> from steerlens.evaluation import StringMatchJudge
        >>> from steerlens.testing import tiny_model
        >>> model = tiny_model()
        >>> v = SteeringVector.from_tensor(torch.ones(64), layer=1, model=model)
        >>> cal = calibrate(model, v, ["the cat", "a dog"], StringMatchJudge(["e"]),
        ...                 strengths=[0, 2, 8], max_new_tokens=4, progress=False)
        >>> cal.layer, cal.strength in (0.0, 2.0, 8.0), len(cal.curve())
        (1, True, 3)
        >>> cal.steering.layer
        1
    """
    swept = _layers(vector, layers)
    check_budget(max_kl, max_nll_ratio, min_distinct)  # before any generation
    if max_kl is not None and neutral_prompts is None:
        raise SpecError(
            "max_kl limits the side-effect KL, which is measured on neutral prompts; pass "
            "neutral_prompts=[...] (prompts where the behavior should not change)."
        )
    grid = layer_strength_grid(
        model,
        vector,
        layers=swept,
        strengths=strengths,
        prompts=prompts,
        judge=judge,
        neutral_prompts=neutral_prompts,
        max_new_tokens=max_new_tokens,
        chat=chat,
        batch_size=batch_size,
        n=n,
        positions=positions,
        progress=progress,
    )
    point = grid.frontier(max_kl=max_kl, max_nll_ratio=max_nll_ratio, min_distinct=min_distinct)
    return Calibration(
        point=point,
        grid=grid,
        budget=dict(point.budget),
        norms=_norms(model, prompts, list(grid.layers), chat=chat, batch_size=batch_size),
        vector_norms={la: float(v.float().norm()) for la, v in grid.vectors.items()},
        source=vector if isinstance(vector, SteeringVector) else None,
    )


def _layers(vector: Any, layers: int | Sequence[int] | None) -> list[int]:
    if layers is not None:
        return [layers] if isinstance(layers, int) else list(layers)
    if isinstance(vector, SteeringVector):
        return vector.layers
    if isinstance(vector, Mapping):
        return sorted(vector)
    kind = "tensor" if isinstance(vector, Tensor) else type(vector).__name__
    raise SpecError(
        f"a {kind} has no layer of its own; pass layers=<int or list> to calibrate it at."
    )


def _norms(
    model: Any, prompts: Sequence[str], layers: list[int], *, chat: bool | None, batch_size: int
) -> ResidualNorms | None:
    from steerlens.analysis.scale import residual_norms

    try:
        return residual_norms(model, list(prompts), layers=layers, chat=chat, batch_size=batch_size)
    except InputError:  # every prompt a single token: no typical norm to compare with
        return None


__all__ = ["Calibration", "calibrate"]
