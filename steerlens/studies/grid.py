"""Where does a vector work? A layer x strength grid with behavior and coherence side by side.

`layer_strength_grid` applies one vector source at every (layer, strength) cell, generates
greedy steered replies and measures, per cell:

- ``"behavior"``: the fraction of replies a judge accepts (a Wilson interval);
- ``"kl"``: the side-effect ``KL(unsteered || steered)`` of the next-token distribution after
  neutral prompts, mean over prompts (`steerlens.evaluation.side_effect_kl`'s, every cell's
  scored in shared batches by `steerlens.evaluation.next_token_kl`; needs ``neutral_prompts``);
- ``"nll"``: the unsteered model's per-token NLL of the steered replies
  (`steerlens.evaluation.reply_nll`), and ``"nll_ratio"``: that over the unsteered replies' NLL;
- ``"distinct"``: distinct-n of the replies (`steerlens.evaluation.distinct_n`).

`GridResult.frontier` answers "what is the best behavior I can get while the model stays
coherent?": the best cell within a coherence budget, and `GridResult.plot_frontier` draws that
best behavior as the budget loosens.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from jaxtyping import Float, Int
from torch import Tensor

from steerlens import runtime
from steerlens.errors import InputError, SpecError, SteerlensError
from steerlens.evaluation.coherence import MetricResult, distinct_n, reply_nll
from steerlens.evaluation.judges import Judge, judge_texts
from steerlens.evaluation.many import next_token_kl
from steerlens.evaluation.rates import RateResult
from steerlens.io.plain import to_plain
from steerlens.steering.generate import generate, generate_each
from steerlens.steering.interventions import check_vector
from steerlens.steering.positions import Positions, PositionsLike, as_positions
from steerlens.steering.steer import Steering
from steerlens.steering.vector import SteeringVector

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

VectorLike = SteeringVector | Tensor
GridSource = VectorLike | Mapping[int, VectorLike] | Callable[[int], VectorLike]

METRICS = ("behavior", "kl", "nll", "nll_ratio", "distinct")
# metric -> (title, unit, colour scale); a cost metric is drawn dark where it is high.
_INFO = {
    "behavior": ("behavior rate", "fraction judged yes", "Viridis"),
    "kl": ("side-effect KL", "nats", "Reds"),
    "nll": ("reply NLL", "nats/token", "Reds"),
    "nll_ratio": ("NLL ratio", "steered / unsteered", "Reds"),
    "distinct": ("distinct-n", "fraction", "Blues"),
}
# budget metric -> (frontier keyword, "at most"/"at least")
_BUDGETS = {
    "kl": ("max_kl", "at most"),
    "nll_ratio": ("max_nll_ratio", "at most"),
    "distinct": ("min_distinct", "at least"),
}
# The widest figure (px) that fits a steerlens HTML page beside its margins.
_MAX_WIDTH = 1100
# The budget shown by repr: steered replies at most 1.5x as surprising to the unsteered model.
DEFAULT_MAX_NLL_RATIO = 1.5


@dataclass(frozen=True)
class FrontierPoint:
    """The best behavior reachable within a coherence budget, and the cell that reaches it.

    Attributes:
        budget: the limits applied (``max_kl``, ``max_nll_ratio``, ``min_distinct``).
        layer, strength: the cell (``None`` when no cell is within the budget).
        behavior: its behavior rate (NaN when none), with ``ci_low``/``ci_high`` (Wilson).
        successes, n: the judge's count at that cell.
        unsteered_behavior: the rate without steering, to compare with.
        coherence: the cell's ``"kl"``, ``"nll_ratio"`` and ``"distinct"`` values.
        within_budget: how many cells are within the budget.
        note: why no cell is within the budget, and what to change.
        vector: the vector applied at ``layer`` (see `steering`).
    """

    budget: dict[str, float]
    layer: int | None
    strength: float | None
    behavior: float
    ci_low: float
    ci_high: float
    successes: int
    n: int
    unsteered_behavior: float
    coherence: dict[str, float]
    within_budget: int
    note: str = ""
    vector: Tensor | None = field(default=None, repr=False, compare=False)
    positions: Positions = field(default_factory=Positions.all)

    @property
    def found(self) -> bool:
        """Whether some cell is within the budget."""
        return self.layer is not None

    @property
    def shows_behavior(self) -> bool:
        """Whether the cell found shows the behavior, and more often than the unsteered model:
        only then is it a setting worth reporting as the frontier."""
        return self.found and self.successes > 0 and self.behavior > self.unsteered_behavior

    @property
    def steering(self) -> Steering:
        """The cell as a `steerlens.Steering` plan, ready for ``generate(..., steering=)``."""
        if self.layer is None or self.strength is None or self.vector is None:
            raise SpecError(f"no cell is within the budget, so there is no plan: {self.note}")
        return Steering(
            self.vector, layer=self.layer, strength=self.strength, positions=self.positions
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready), without the vector."""
        out: dict[str, Any] = to_plain(self)
        out.pop("vector")
        return out

    def __repr__(self) -> str:
        return f"FrontierPoint({describe_budget(self.budget)}: {self.summary()})"

    def summary(self) -> str:
        """One line: the cell, its behavior and its coherence; or, when no cell within the
        budget shows the behavior (none is within it, none has a reply judged yes, or none
        beats the unsteered model), that in words.

        Example:
            >>> point = FrontierPoint(budget={"max_nll_ratio": 1.5}, layer=3, strength=0.0,
            ...     behavior=0.0, ci_low=0.0, ci_high=0.5, successes=0, n=4,
            ...     unsteered_behavior=0.0, coherence={}, within_budget=2)
            >>> point.summary()[:60]
            'no setting within NLL ratio <= 1.5 shows the behavior: 0 of '
        """
        if self.layer is None or self.strength is None:
            return self.note
        scope = f"within {describe_budget(self.budget)}" if self.budget else "in the grid"
        cells = f"{self.within_budget} cell{'s' if self.within_budget != 1 else ''} {scope}"
        if self.successes == 0:
            return (
                f"no setting {scope} shows the behavior: 0 of {self.n} replies judged yes at "
                f"every one of the {cells} (unsteered {self.unsteered_behavior:.0%})."
            )
        cost = ", ".join(
            f"{_INFO[m][0]} {v:.3g}" for m, v in self.coherence.items() if m != "distinct"
        )
        unsteered = " (unsteered)" if self.strength == 0 else ""
        cell = (
            f"layer {self.layer}, strength {self.strength:g}{unsteered} -> behavior "
            f"{self.successes}/{self.n} = {self.behavior:.0%} [{self.ci_low:.0%}, "
            f"{self.ci_high:.0%}] "
            f"(unsteered {self.unsteered_behavior:.0%}); {cost}"
        )
        if not self.shows_behavior:
            return (
                f"no setting {scope} shows the behavior more often than the unsteered model; "
                f"the best of the {cells}: {cell}"
            )
        return cell


@dataclass(frozen=True, eq=False)
class GridResult:
    """Behavior and coherence at every (layer, strength) cell of `layer_strength_grid`.

    Arrays are ``[layers, strengths]``, in the order of ``layers`` and ``strengths``. A
    value is NaN where it is undefined (every reply empty, or shorter than ``n`` tokens).

    Attributes:
        layers, strengths: the grid's axes (sorted).
        prompts: the prompts replied to; ``neutral_prompts`` those the KL is measured on.
        values: metric -> ``[layers, strengths]`` array: ``"behavior"`` (a rate), ``"kl"``
            (nats, only with neutral prompts), ``"nll"`` (nats/token), ``"distinct"``.
        low, high: metric -> the interval's ends (Wilson for the rate, bootstrap otherwise).
        successes: the judge's count per cell (out of ``len(prompts)``).
        replies: the steered replies, ``replies[i][j][k]`` for layer ``i``, strength ``j``,
            prompt ``k`` (see `replies_at`).
        baseline: the unsteered ``"behavior"``, ``"nll"`` and ``"distinct"``.
        baseline_replies: the unsteered replies.
        vectors: layer -> the ``[d_model]`` vector applied there.
        n: the ``n`` of distinct-n.
    """

    layers: tuple[int, ...]
    strengths: tuple[float, ...]
    prompts: tuple[str, ...]
    neutral_prompts: tuple[str, ...]
    values: dict[str, Float[np.ndarray, "layers strengths"]]
    low: dict[str, Float[np.ndarray, "layers strengths"]]
    high: dict[str, Float[np.ndarray, "layers strengths"]]
    successes: Int[np.ndarray, "layers strengths"]
    replies: tuple[tuple[tuple[str, ...], ...], ...]
    baseline: dict[str, float]
    baseline_replies: tuple[str, ...]
    vectors: dict[int, Tensor] = field(repr=False)
    n: int = 3
    positions: Positions = field(default_factory=Positions.all)

    # -- access ------------------------------------------------------------------------------

    @property
    def metrics(self) -> list[str]:
        """The metrics measured (``"kl"`` only with neutral prompts)."""
        return [m for m in METRICS if m == "nll_ratio" or m in self.values]

    def get(self, metric: str) -> Float[np.ndarray, "layers strengths"]:
        """The ``[layers, strengths]`` array of ``metric`` (see `metrics`)."""
        if metric == "nll_ratio":
            return self.values["nll"] / self.baseline["nll"]
        if metric not in self.values:
            hint = (
                " (the KL needs neutral_prompts=[...] in layer_strength_grid)"
                if metric == "kl"
                else ""
            )
            raise SpecError(f"this grid has no metric {metric!r}{hint}; it has {self.metrics}.")
        return self.values[metric]

    def interval(
        self, metric: str
    ) -> tuple[Float[np.ndarray, "layers strengths"], Float[np.ndarray, "layers strengths"]]:
        """``(low, high)`` arrays of ``metric``'s interval; the NLL ratio's divides the NLL's
        interval by the unsteered NLL (whose own uncertainty it leaves out)."""
        if metric == "nll_ratio":
            return self.low["nll"] / self.baseline["nll"], self.high["nll"] / self.baseline["nll"]
        self.get(metric)
        return self.low[metric], self.high[metric]

    @property
    def behavior(self) -> Float[np.ndarray, "layers strengths"]:
        """The behavior rate per cell."""
        return self.get("behavior")

    @property
    def kl(self) -> Float[np.ndarray, "layers strengths"]:
        """The mean side-effect KL per cell (nats)."""
        return self.get("kl")

    @property
    def nll(self) -> Float[np.ndarray, "layers strengths"]:
        """The unsteered model's mean per-token NLL of the steered replies."""
        return self.get("nll")

    @property
    def nll_ratio(self) -> Float[np.ndarray, "layers strengths"]:
        """``nll`` over the unsteered replies' NLL (1 = as fluent as unsteered)."""
        return self.get("nll_ratio")

    @property
    def distinct(self) -> Float[np.ndarray, "layers strengths"]:
        """Mean distinct-n of the replies per cell."""
        return self.get("distinct")

    def _cell(self, layer: int, strength: float) -> tuple[int, int]:
        if layer not in self.layers:
            raise SpecError(
                f"layer {layer} is not in the grid; its layers are {list(self.layers)}."
            )
        matches = [j for j, s in enumerate(self.strengths) if math.isclose(s, strength)]
        if not matches:
            raise SpecError(
                f"strength {strength:g} is not in the grid; its strengths are "
                f"{[float(s) for s in self.strengths]}."
            )
        return self.layers.index(layer), matches[0]

    def replies_at(self, layer: int, strength: float) -> tuple[str, ...]:
        """The steered replies at one cell, one per prompt."""
        i, j = self._cell(layer, strength)
        return self.replies[i][j]

    # -- tables --------------------------------------------------------------------------------

    def to_rows(self) -> list[dict[str, Any]]:
        """One dict per cell (tidy): layer, strength, each metric with ``_low``/``_high``,
        and the judge's ``successes`` out of ``n_prompts``."""
        rows = []
        arrays = {m: (self.get(m), *self.interval(m)) for m in self.metrics}
        for i, layer in enumerate(self.layers):
            for j, strength in enumerate(self.strengths):
                row: dict[str, Any] = {"layer": layer, "strength": strength}
                for m, (value, low, high) in arrays.items():
                    row[m] = float(value[i, j])
                    row[f"{m}_low"] = float(low[i, j])
                    row[f"{m}_high"] = float(high[i, j])
                row["successes"] = int(self.successes[i, j])
                row["n_prompts"] = len(self.prompts)
                rows.append(row)
        return rows

    @classmethod
    def from_rows(
        cls,
        rows: Sequence[Mapping[str, Any]],
        *,
        prompts: Sequence[str],
        baseline: Mapping[str, float],
        neutral_prompts: Sequence[str] = (),
        n: int = 3,
    ) -> GridResult:
        """The grid back from its cells (`to_rows` dicts, e.g. read from a study folder), one
        per (layer, strength); a row's ``"replies"`` (a list, one per prompt) is kept when
        present. ``baseline`` holds the unsteered ``"behavior"``, ``"nll"`` and
        ``"distinct"``; the vectors and unsteered replies are not in the rows (empty).

        Example:
            >>> rows = [{"layer": 0, "strength": s, "behavior": b, "behavior_low": 0.0,
            ...          "behavior_high": 1.0, "nll": 2.0, "nll_low": 1.0, "nll_high": 3.0,
            ...          "distinct": 1.0, "distinct_low": 1.0, "distinct_high": 1.0,
            ...          "successes": int(b)} for s, b in ((0, 0.0), (2, 1.0))]
            >>> res = GridResult.from_rows(rows, prompts=["a"],
            ...     baseline={"behavior": 0.0, "nll": 2.0, "distinct": 1.0})
            >>> res.frontier(max_nll_ratio=1.0).strength
            2.0
        """
        if not rows:
            raise InputError("no grid rows; pass the rows of at least one (layer, strength).")
        layers = sorted({int(r["layer"]) for r in rows})
        strengths = sorted({float(r["strength"]) for r in rows})
        cells = {(int(r["layer"]), float(r["strength"])): r for r in rows}
        missing = [(la, s) for la in layers for s in strengths if (la, s) not in cells]
        if missing:
            raise InputError(
                f"the grid rows lack the cells (layer, strength) {missing[:5]}; pass one row "
                "per (layer, strength) of the grid."
            )
        table = [[cells[la, s] for s in strengths] for la in layers]

        def grid(key: str) -> np.ndarray:
            return np.array(
                [[math.nan if r.get(key) is None else float(r[key]) for r in row] for row in table],
                dtype=np.float64,
            )

        measured = [m for m in ("behavior", "kl", "nll", "distinct") if m in rows[0]]
        return cls(
            layers=tuple(layers),
            strengths=tuple(strengths),
            prompts=tuple(prompts),
            neutral_prompts=tuple(neutral_prompts),
            values={m: grid(m) for m in measured},
            low={m: grid(f"{m}_low") for m in measured},
            high={m: grid(f"{m}_high") for m in measured},
            successes=np.array(
                [[int(r["successes"]) for r in row] for row in table], dtype=np.int64
            ),
            replies=tuple(tuple(tuple(r.get("replies") or ()) for r in row) for row in table),
            baseline={
                k: math.nan if baseline.get(k) is None else float(baseline[k])
                for k in ("behavior", "nll", "distinct")
            },
            baseline_replies=(),
            vectors={},
            n=n,
        )

    def to_pandas(self) -> pd.DataFrame:
        """`to_rows` as a ``pandas.DataFrame`` (needs pandas)."""
        import pandas as pd

        return pd.DataFrame(self.to_rows())

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready; undefined values are NaN), with each vector's norm in place
        of the vector."""
        out: dict[str, Any] = to_plain(self)
        out["vectors"] = {str(la): float(v.norm()) for la, v in self.vectors.items()}
        return out

    # -- the frontier --------------------------------------------------------------------------

    def frontier(
        self,
        max_kl: float | None = None,
        max_nll_ratio: float | None = None,
        min_distinct: float | None = None,
    ) -> FrontierPoint:
        """The best behavior rate among cells within a coherence budget, and where it is.

        A cell is within the budget when its KL is at most ``max_kl``, its NLL ratio at most
        ``max_nll_ratio`` and its distinct-n at least ``min_distinct`` (limits left ``None``
        do not apply; a cell whose value is undefined is outside). Among cells with the best
        rate, the one with the lowest NLL ratio wins, then the smallest ``|strength|``.
        When no cell is within the budget, the result has ``layer=None`` and a ``note`` that
        says how close the grid came.

        Example:
            >>> import torch
            >>> from steerlens.evaluation import StringMatchJudge
            >>> from steerlens.testing import tiny_model
            >>> res = layer_strength_grid(
            ...     tiny_model(), torch.ones(64), layers=[0, 1], strengths=[0, 8],
            ...     prompts=["the cat"], judge=StringMatchJudge(["#"]),
            ...     neutral_prompts=["in the"], max_new_tokens=4, progress=False)
            >>> res.frontier(max_kl=0.0).strength  # only strength 0 leaves the KL at 0
            0.0
            >>> res.frontier(max_kl=0.0).steering
            Steering(Add at layer [0], strength 0, all tokens)
        """
        budget = check_budget(max_kl, max_nll_ratio, min_distinct)
        if "max_kl" in budget:
            self.get("kl")
        ok = np.ones((len(self.layers), len(self.strengths)), dtype=bool)
        with np.errstate(invalid="ignore"):  # NaN compares False: undefined is outside
            if "max_kl" in budget:
                ok &= self.kl <= budget["max_kl"]
            if "max_nll_ratio" in budget:
                ok &= self.nll_ratio <= budget["max_nll_ratio"]
            if "min_distinct" in budget:
                ok &= self.distinct >= budget["min_distinct"]
        costs = [m for m in ("kl", "nll_ratio", "distinct") if m in self.metrics]
        base = self.baseline["behavior"]
        if not ok.any():
            return FrontierPoint(
                budget=budget,
                layer=None,
                strength=None,
                behavior=math.nan,
                ci_low=math.nan,
                ci_high=math.nan,
                successes=0,
                n=len(self.prompts),
                unsteered_behavior=base,
                coherence={},
                within_budget=0,
                note=self._why_none(budget),
                positions=self.positions,
            )
        ratio = np.nan_to_num(self.nll_ratio, nan=np.inf)
        candidates = [
            (i, j) for i in range(len(self.layers)) for j in range(len(self.strengths)) if ok[i, j]
        ]
        i, j = min(
            candidates,
            key=lambda c: (
                -self.behavior[c],
                ratio[c],
                abs(self.strengths[c[1]]),
                self.layers[c[0]],
            ),
        )
        layer = self.layers[i]
        return FrontierPoint(
            budget=budget,
            layer=layer,
            strength=self.strengths[j],
            behavior=float(self.behavior[i, j]),
            ci_low=float(self.low["behavior"][i, j]),
            ci_high=float(self.high["behavior"][i, j]),
            successes=int(self.successes[i, j]),
            n=len(self.prompts),
            unsteered_behavior=base,
            coherence={m: float(self.get(m)[i, j]) for m in costs},
            within_budget=int(ok.sum()),
            vector=self.vectors.get(layer),
            positions=self.positions,
        )

    def _why_none(self, budget: dict[str, float]) -> str:
        parts = []
        for metric, (name, _) in _BUDGETS.items():
            if name not in budget:
                continue
            values = self.get(metric)
            if np.isnan(values).all():
                parts.append(f"no cell has a {_INFO[metric][0]}")
                continue
            pick = np.nanargmax if metric == "distinct" else np.nanargmin
            i, j = np.unravel_index(int(pick(values)), values.shape)
            best = "largest" if metric == "distinct" else "smallest"
            parts.append(
                f"the {best} {_INFO[metric][0]} is {values[i, j]:.3g} (layer {self.layers[i]}, "
                f"strength {self.strengths[j]:g})"
            )
        return (
            f"no cell is within {describe_budget(budget)}: " + "; ".join(parts) + ". Loosen "
            "the budget, or add smaller strengths (0 is the unsteered model)."
        )

    # -- figures -------------------------------------------------------------------------------

    def plot(self, metric: str = "behavior") -> go.Figure:
        """A heatmap of ``metric`` over layers (rows) and strengths (columns), values written
        in the cells; hover shows the interval.

        Example:
            >>> import torch
            >>> from steerlens.evaluation import StringMatchJudge
            >>> from steerlens.testing import tiny_model
            >>> res = layer_strength_grid(
            ...     tiny_model(), torch.ones(64), layers=[0, 1], strengths=[0, 8],
            ...     prompts=["the cat"], judge=StringMatchJudge(["#"]),
            ...     neutral_prompts=["in the"], max_new_tokens=4, progress=False)
            >>> [t.type for t in res.plot("nll_ratio").data]
            ['heatmap']
        """
        import plotly.graph_objects as go

        from steerlens.analysis.plots import style_figure

        fig = go.Figure(self._heatmap(metric))
        title, unit, _ = self._info(metric)
        fig = style_figure(
            fig,
            f"{title} ({unit}) by layer and strength, {len(self.prompts)} prompts",
            "strength",
            "layer (steered at blocks.{layer}.hook_resid_pre)",
        )
        fig.update_xaxes(type="category")
        fig.update_yaxes(type="category")
        return fig

    def plot_all(self, metrics: Sequence[str] | None = None) -> go.Figure:
        """One figure: a heatmap per metric side by side (default: behavior, KL when measured,
        NLL ratio, distinct-n), sharing the layer axis.

        Example:
            >>> import torch
            >>> from steerlens.evaluation import StringMatchJudge
            >>> from steerlens.testing import tiny_model
            >>> res = layer_strength_grid(
            ...     tiny_model(), torch.ones(64), layers=[0, 1], strengths=[0, 8],
            ...     prompts=["the cat"], judge=StringMatchJudge(["#"]),
            ...     neutral_prompts=["in the"], max_new_tokens=4, progress=False)
            >>> len(res.plot_all().data)
            4
        """
        from plotly.subplots import make_subplots

        from steerlens.analysis.plots import style_figure

        chosen = list(metrics) if metrics is not None else [m for m in self.metrics if m != "nll"]
        if not chosen:
            raise SpecError(f"no metrics to plot; pass some of {self.metrics} (or None for all).")
        fig = make_subplots(
            rows=1,
            cols=len(chosen),
            shared_yaxes=True,
            horizontal_spacing=0.12 if len(chosen) > 1 else 0.0,
            subplot_titles=[f"{self._info(m)[0]} ({self._info(m)[1]})" for m in chosen],
        )
        for k, metric in enumerate(chosen, start=1):
            heat = self._heatmap(metric)
            domain = fig.layout[f"xaxis{'' if k == 1 else k}"].domain
            heat.colorbar = {"x": domain[1] + 0.005, "xanchor": "left", "thickness": 10}
            fig.add_trace(heat, row=1, col=k)
            fig.update_xaxes(type="category", title_text="strength", row=1, col=k)
        fig.update_yaxes(type="category")
        fig = style_figure(
            fig,
            f"Steering by layer and strength ({len(self.prompts)} prompts)",
            "strength",
            "layer",
        )
        # Each colour bar sits right of its panel; the right margin holds the last one, and the
        # width stays within a report page (1200 px less its padding).
        fig.update_layout(
            width=min(_MAX_WIDTH, max(500, 330 * len(chosen))),
            margin={"l": 60, "r": 70, "t": 80, "b": 50},
        )
        return fig

    def plot_frontier(self, budget_metric: str = "nll_ratio") -> go.Figure:
        """The best behavior reachable as the budget on ``budget_metric`` (``"nll_ratio"``,
        ``"kl"`` or ``"distinct"``) loosens: a step curve, one step per cell value; hover
        names the cell. A dashed line marks the unsteered rate.

        Example:
            >>> import torch
            >>> from steerlens.evaluation import StringMatchJudge
            >>> from steerlens.testing import tiny_model
            >>> res = layer_strength_grid(
            ...     tiny_model(), torch.ones(64), layers=[0, 1], strengths=[0, 8],
            ...     prompts=["the cat"], judge=StringMatchJudge(["#"]),
            ...     neutral_prompts=["in the"], max_new_tokens=4, progress=False)
            >>> fig = res.plot_frontier("kl")
            >>> fig.data[0].x[0], fig.data[0].line.shape
            (0.0, 'hv')
        """
        import plotly.graph_objects as go

        from steerlens.analysis.plots import style_figure

        if budget_metric not in _BUDGETS:
            raise SpecError(
                f"unknown budget_metric {budget_metric!r}; use one of {', '.join(_BUDGETS)}."
            )
        values = self.get(budget_metric)
        name, side = _BUDGETS[budget_metric]
        limits = sorted({float(v) for v in values.flat if np.isfinite(v)})
        if budget_metric == "distinct":
            limits.reverse()  # loosening a minimum means lowering it
        points = [self.frontier(**{name: t}) for t in limits]
        fig = go.Figure(
            go.Scatter(
                x=limits,
                y=[p.behavior for p in points],
                mode="lines+markers",
                line_shape="hv",
                name="best reachable",
                text=[f"layer {p.layer}, strength {p.strength:g}" for p in points],
                hovertemplate="budget %{x:.3g}: behavior %{y:.0%} at %{text}<extra></extra>",
            )
        )
        fig.add_hline(y=self.baseline["behavior"], line_dash="dash", annotation_text="unsteered")
        title, unit, _ = self._info(budget_metric)
        fig = style_figure(
            fig,
            f"Best behavior reachable with {title} {side} x",
            f"{title} budget x ({unit}, {side})",
            "best behavior rate",
        )
        fig.update_yaxes(range=[-0.02, 1.02], tickformat=".0%")
        if budget_metric == "distinct":
            fig.update_xaxes(autorange="reversed")
        return fig

    def _info(self, metric: str) -> tuple[str, str, str]:
        title, unit, scale = _INFO[metric]
        return (f"distinct-{self.n}" if metric == "distinct" else title), unit, scale

    def _heatmap(self, metric: str) -> go.Heatmap:
        import plotly.graph_objects as go

        values = self.get(metric)
        low, high = self.interval(metric)
        title, unit, scale = self._info(metric)
        fmt = ".0%" if metric == "behavior" else ".3g"
        bounds = {"zmin": 0.0, "zmax": 1.0} if metric in ("behavior", "distinct") else {}
        return go.Heatmap(
            z=_nan_to_none(values),
            x=[f"{s:g}" for s in self.strengths],
            y=[str(la) for la in self.layers],
            customdata=np.stack([low, high], axis=-1).tolist(),
            texttemplate=f"%{{z:{fmt}}}",
            colorscale=scale,
            hovertemplate=(
                f"layer %{{y}}, strength %{{x}}<br>{title}: %{{z:{fmt}}} {unit}"
                f"<br>95% CI %{{customdata[0]:{fmt}}} - %{{customdata[1]:{fmt}}}<extra></extra>"
            ),
            name=title,
            **bounds,
        )

    def __repr__(self) -> str:
        best = self.frontier()
        lines = [
            f"GridResult: {len(self.layers)} layers x {len(self.strengths)} strengths, "
            f"{len(self.prompts)} prompts (unsteered behavior {self.baseline['behavior']:.0%})",
            f"  best cell, coherent or not: {best.summary()}",
        ]
        default = self.frontier(max_nll_ratio=DEFAULT_MAX_NLL_RATIO)
        name = "frontier" if default.shows_behavior else "within"
        lines.append(f"  {name} NLL ratio <= {DEFAULT_MAX_NLL_RATIO:g}: {default.summary()}")
        return "\n".join(lines)


def describe_budget(budget: Mapping[str, float]) -> str:
    """A coherence budget (`check_budget`'s limits) in words.

    Example:
        >>> describe_budget({"max_kl": 0.5, "min_distinct": 0.8})
        'KL <= 0.5, distinct-n >= 0.8'
    """
    if not budget:
        return "no budget"
    words = {"max_kl": "KL <=", "max_nll_ratio": "NLL ratio <=", "min_distinct": "distinct-n >="}
    return ", ".join(f"{words[k]} {v:g}" for k, v in budget.items())


# Each limit's domain: a KL is >= 0, an NLL ratio > 0, distinct-n a fraction in [0, 1]; a limit
# outside it admits no cell (or every cell), which is never what was meant.
_LIMIT_DOMAINS = {
    "max_kl": (0.0, math.inf, "a KL in nats >= 0"),
    "max_nll_ratio": (0.0, math.inf, "a ratio of NLLs > 0 (1 = as fluent as unsteered)"),
    "min_distinct": (0.0, 1.0, "a fraction between 0 and 1"),
}


def _check_limit(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value):
        raise SpecError(f"{name} must be a number (or None for no limit), got {value!r}.")
    low, high, what = _LIMIT_DOMAINS[name]
    number = float(value)
    ok = low <= number <= high and not (name == "max_nll_ratio" and number == 0)
    if not ok:
        raise SpecError(f"{name} must be {what}, got {value!r}.")
    return number


def check_budget(
    max_kl: float | None = None,
    max_nll_ratio: float | None = None,
    min_distinct: float | None = None,
) -> dict[str, float]:
    """The coherence budget's limits that apply, each checked against its domain.

    Example:
        >>> check_budget(max_kl=0.5)
        {'max_kl': 0.5}
    """
    given = (("max_kl", max_kl), ("max_nll_ratio", max_nll_ratio), ("min_distinct", min_distinct))
    return {name: _check_limit(name, value) for name, value in given if value is not None}


def check_neutral_prompts(neutral_prompts: Sequence[str] | None) -> list[str] | None:
    """The prompts the side-effect KL is measured on, checked (``None``: no KL), with an error
    that names ``neutral_prompts``.

    Example:
        >>> check_neutral_prompts("in the")
        ['in the']
    """
    if neutral_prompts is None:
        return None
    try:
        return runtime.check_prompts(neutral_prompts)
    except SteerlensError as err:
        raise InputError(f"neutral_prompts: {err}") from None


def _nan_to_none(values: np.ndarray) -> list[list[float | None]]:
    return [[None if math.isnan(v) else float(v) for v in row] for row in values.tolist()]


# -- the grid ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Cell:
    """Everything measured at one (layer, strength), or for the unsteered model."""

    replies: tuple[str, ...]
    rate: RateResult
    nll: MetricResult | None
    distinct: MetricResult | None
    kl: MetricResult | None


def _check_strengths(strengths: Any) -> list[float]:
    items = [strengths] if isinstance(strengths, numbers.Real) else strengths
    try:
        values = list(items)
    except TypeError:
        raise SpecError(
            f"strengths must be a list of numbers, got {strengths!r}; e.g. strengths=[0, 2, 4, 8]."
        ) from None
    if not values:
        raise SpecError("no strengths given; pass e.g. strengths=[0, 2, 4, 8].")
    for s in values:
        if isinstance(s, bool) or not isinstance(s, numbers.Real):
            raise SpecError(f"strengths must be numbers, got {s!r} in {values!r}.")
        if not math.isfinite(s):
            raise SpecError(f"strengths must be finite, got {s} in {values!r}; drop it.")
    return sorted({float(s) for s in values})


def _check_n(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise SpecError(f"n (of distinct-n) must be an int >= 1, got {n!r}.")
    return n


def _check_judge(judge: Any) -> Judge:
    if judge is None:
        raise SpecError(
            "layer_strength_grid needs a judge (text -> bool) to measure the behavior; pass e.g. "
            "judge=steerlens.evaluation.StringMatchJudge([' Paris']) or a ModelJudge."
        )
    if not callable(judge):
        raise SpecError(
            f"judge must be a callable text -> bool, got a {type(judge).__name__}; pass e.g. "
            "StringMatchJudge([...]) or a function."
        )
    return judge  # type: ignore[no-any-return]


def _layer_vectors(model: Any, source: Any, layers: Sequence[int]) -> dict[int, Tensor]:
    """The checked ``[d_model]`` vector for each layer; a callable is called once per layer."""
    get: Callable[[int], Any]
    if isinstance(source, (SteeringVector, Tensor)):
        get = lambda _layer: source  # noqa: E731
    elif isinstance(source, Mapping):
        missing = [la for la in layers if la not in source]
        if missing:
            raise InputError(
                f"the source mapping has no vector for layer(s) {missing} (it has "
                f"{sorted(source)}); add them, or sweep only layers it has."
            )
        get = source.__getitem__
    elif callable(source):
        get = source
    else:
        raise SpecError(
            f"cannot steer with a {type(source).__name__}; pass a SteeringVector or [d_model] "
            "tensor (applied at every layer), a mapping layer -> vector, or a callable "
            "layer -> vector (e.g. lambda layer: diff_of_means(model, pos, neg, layer))."
        )
    return {la: _direction(model, get(la), la) for la in layers}


def _direction(model: Any, value: Any, layer: int) -> Tensor:
    what = f"the vector for layer {layer}"
    if isinstance(value, SteeringVector):
        value.check_compatible(model)
        if layer in value.affine:
            raise SpecError(
                f"{what} has affine parts; the grid scales an added direction. Pass its "
                "direction (vector.directions[layer]) instead."
            )
        if layer in value.directions:
            value = value.directions[layer]
        elif len(value.directions) == 1:
            value = next(iter(value.directions.values()))
        else:
            raise SpecError(
                f"{what}: the SteeringVector has different directions at layers "
                f"{value.layers} and none at layer {layer}; pass a callable layer -> vector "
                "or sweep only its layers."
            )
    elif not isinstance(value, Tensor):
        raise SpecError(
            f"{what} is a {type(value).__name__}; the source must give a SteeringVector or a "
            "[d_model] tensor for each layer."
        )
    return check_vector(value, name=what, d_model=runtime.d_model(model)).detach()


def _measure(
    model: Any,
    prompts: list[str],
    cells: Sequence[Sequence[str]],
    judge: Judge,
    *,
    where: Sequence[str],
    chat: bool | None,
    n: int,
    batch_size: int,
) -> list[tuple[RateResult, MetricResult | None, MetricResult | None]]:
    """Each cell's judged rate, reply NLL and distinct-n, for the replies ``cells[c]`` to
    ``prompts``; the NLLs of every cell's replies share batches (one `reply_nll` call, whose
    rows are unsteered, so a cell's values are what a call of its own gives)."""
    nonempty = [[r for r in replies if r] for replies in cells]
    flat = [r for replies in nonempty for r in replies]
    values: Sequence[float] = ()
    if flat:
        asked = [p for replies in cells for p, r in zip(prompts, replies, strict=True) if r]
        values = reply_nll(model, asked, flat, chat=chat, batch_size=batch_size).values
    out, start = [], 0
    for replies, kept, at in zip(cells, nonempty, where, strict=True):
        rate = RateResult.from_outcomes(
            judge_texts(judge, replies, where=at), prompts=prompts, texts=replies
        )
        nll = None
        if kept:
            mine = values[start : start + len(kept)]
            nll = MetricResult.of("reply NLL", "nats/token", mine, len(replies) - len(kept))
            start += len(kept)
        long_enough = any(len(runtime.encode(model, r)) >= n for r in replies)
        out.append((rate, nll, distinct_n(model, replies, n) if long_enough else None))
    return out


def layer_strength_grid(
    model: Any,
    source: GridSource,
    *,
    layers: Sequence[int],
    strengths: Sequence[float],
    prompts: Sequence[str],
    judge: Judge,
    neutral_prompts: Sequence[str] | None = None,
    max_new_tokens: int = 32,
    chat: bool | None = None,
    batch_size: int = 16,
    n: int = 3,
    positions: PositionsLike = "all",
    progress: bool | None = None,
) -> GridResult:
    """Steer at every (layer, strength) and measure behavior and coherence side by side.

    Each cell generates greedy replies to ``prompts`` steered with
    ``Steering(vector, layer=layer, strength=strength)`` and measures the judge's rate, the
    unsteered model's NLL of the replies, their distinct-n and (with ``neutral_prompts``)
    the side-effect KL. The unsteered replies and scores are computed once; a strength of 0
    is the unsteered model, so its cells reuse them. Cells are decoded together, about
    ``batch_size`` (cell, prompt) rows per forward pass (`steerlens.steering.generate_each`),
    with the same replies as one `steerlens.generate` call per cell; so are their side-effect
    KLs (`steerlens.evaluation.next_token_kl`), with the values of one
    `steerlens.evaluation.side_effect_kl` call per cell, and their reply NLLs (one
    `steerlens.evaluation.reply_nll` call per group of cells).

    Args:
        model: a TransformerLens model.
        source: a ``SteeringVector`` or ``[d_model]`` tensor applied at every layer, a mapping
            layer -> vector, or a callable layer -> vector, called once per layer (e.g.
            ``lambda layer: diff_of_means(model, pos, neg, layer)`` for CAA).
        layers: the layers to sweep (sorted, duplicates dropped).
        strengths: the strengths to sweep (finite; sorted, duplicates dropped).
        prompts: the prompts replied to (user messages with ``chat=True``).
        judge: ``text -> bool``, True where a reply shows the behavior (e.g.
            `steerlens.evaluation.StringMatchJudge`, `steerlens.evaluation.ModelJudge`).
        neutral_prompts: prompts where the behavior should not change, for the side-effect KL.
        max_new_tokens: the most tokens per reply.
        chat: format prompts with the model's chat template (default:
            when the model has one; ``False``: as written).
        batch_size: prompts per forward pass.
        n: the ``n`` of distinct-n.
        positions: where each cell steers (`steerlens.Positions` or its spec), e.g.
            ``"opening:2"``: the prompt and the reply's first 2 tokens.
        progress: a progress bar over the cells (default: in a terminal or a notebook).

    Returns:
        A `GridResult`; ``frontier(max_nll_ratio=1.5)`` gives the best behavior whose replies
        stay within 1.5x the unsteered NLL.

    Example:
        >>> import torch
        >>> from steerlens.evaluation import StringMatchJudge
        >>> from steerlens.testing import tiny_model
        >>> res = layer_strength_grid(
        ...     tiny_model(), torch.ones(64), layers=[0, 1], strengths=[0, 8],
        ...     prompts=["the cat", "a dog"], judge=StringMatchJudge(["e"]),
        ...     neutral_prompts=["in the"], max_new_tokens=4, progress=False)
        >>> res.behavior.shape, res.metrics
        ((2, 2), ['behavior', 'kl', 'nll', 'nll_ratio', 'distinct'])
        >>> float(res.kl[0, 0])  # strength 0 is the unsteered model
        0.0
        >>> res.frontier(max_kl=1.0).found
        True
    """
    swept = sorted(set(runtime.check_layers(model, layers, what="layers")))
    values = _check_strengths(strengths)
    items = runtime.check_prompts(prompts)
    neutral = check_neutral_prompts(neutral_prompts)
    judge = _check_judge(judge)
    n = _check_n(n)
    runtime.check_batch_size(batch_size)
    steer_at = as_positions(positions)
    vectors = _layer_vectors(model, source, swept)

    gen: dict[str, Any] = {"max_new_tokens": max_new_tokens, "chat": chat, "progress": False}
    kw: dict[str, Any] = {"chat": chat, "n": n, "batch_size": batch_size}
    base_replies = list(generate(model, items, None, batch_size=batch_size, **gen))
    (base,) = _measure(model, items, [base_replies], judge, where=["of the unsteered model"], **kw)
    zero_kl = None
    if neutral is not None:
        zero_kl = MetricResult.of("side-effect KL", "nats", [0.0] * len(neutral))
    unsteered = _Cell(tuple(base_replies), *base, kl=zero_kl)

    # Strength 0 is the unsteered model; the other cells are decoded a few at a time, so
    # that a batch holds about batch_size (cell, prompt) rows.
    found: dict[tuple[int, float], _Cell] = {}
    if 0.0 in values:
        found = {(la, 0.0): unsteered for la in swept}
    todo = [(la, s) for la in swept for s in values if s != 0.0]
    per_batch = max(1, batch_size // len(items))
    bar = runtime.progress(len(swept) * len(values), "layer x strength grid", progress)
    bar.update(len(found))
    # The side-effect KL is `side_effect_kl`'s, on the same formatted neutral prompts, with
    # each group's plans sharing batches.
    neutral_texts = None if neutral is None else runtime.format_prompts(model, neutral, chat=chat)
    for start in range(0, len(todo), per_batch):
        group = todo[start : start + per_batch]
        plans = [Steering(vectors[la], layer=la, strength=s, positions=steer_at) for la, s in group]
        replies = generate_each(model, items, plans, batch_size=batch_size, **gen)
        kls = None
        if neutral_texts is not None:
            kls = next_token_kl(model, neutral_texts, plans, batch_size=batch_size).double()
        where = [f"at layer {layer}, strength {strength:g}" for layer, strength in group]
        measures = _measure(model, items, replies, judge, where=where, **kw)
        for c, ((layer, strength), texts, measured) in enumerate(
            zip(group, replies, measures, strict=True)
        ):
            bar.set_postfix_str(f"layer {layer}, strength {strength:g}")
            kl = None
            if kls is not None:
                kl = MetricResult.of("side-effect KL", "nats", kls[c].tolist())
            found[layer, strength] = _Cell(tuple(texts), *measured, kl=kl)
            bar.update(1)
    bar.close()
    cells = [[found[la, s] for s in values] for la in swept]
    return GridResult(
        layers=tuple(swept),
        strengths=tuple(values),
        prompts=tuple(items),
        neutral_prompts=tuple(neutral or ()),
        vectors=vectors,
        n=n,
        positions=steer_at,
        **_collect(cells, unsteered, with_kl=neutral is not None),
    )


def _collect(cells: list[list[_Cell]], unsteered: _Cell, *, with_kl: bool) -> dict[str, Any]:
    """The `GridResult` fields measured in the cells (its axes are what the caller swept)."""

    def grid(pick: Callable[[_Cell], float]) -> np.ndarray:
        return np.array([[pick(c) for c in row] for row in cells], dtype=np.float64)

    def metric(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        def part(attr: str) -> np.ndarray:
            return grid(lambda c: _value(getattr(c, name), attr))

        return part("mean"), part("ci_low"), part("ci_high")

    values, low, high = {}, {}, {}
    values["behavior"] = grid(lambda c: c.rate.rate)
    low["behavior"] = grid(lambda c: c.rate.ci_low)
    high["behavior"] = grid(lambda c: c.rate.ci_high)
    for name in ("kl", "nll", "distinct") if with_kl else ("nll", "distinct"):
        values[name], low[name], high[name] = metric(name)
    return {
        "values": values,
        "low": low,
        "high": high,
        "successes": np.array([[c.rate.successes for c in row] for row in cells], dtype=np.int64),
        "replies": tuple(tuple(c.replies for c in row) for row in cells),
        "baseline": {
            "behavior": unsteered.rate.rate,
            "nll": _value(unsteered.nll, "mean"),
            "distinct": _value(unsteered.distinct, "mean"),
        },
        "baseline_replies": unsteered.replies,
    }


def _value(result: MetricResult | None, attr: str) -> float:
    return math.nan if result is None else float(getattr(result, attr))


__all__ = [
    "FrontierPoint",
    "GridResult",
    "check_budget",
    "check_neutral_prompts",
    "describe_budget",
    "layer_strength_grid",
]
