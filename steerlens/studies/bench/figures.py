"""The benchmark's figures (plotly): slope distributions per method, effectiveness against
entanglement at equal cost, and the one-shot vectors' spread over their training example."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import plotly.graph_objects as go

if TYPE_CHECKING:
    from steerlens.studies.bench.results import BenchResult

# Every figure of the benchmark's report is this tall (px).
_HEIGHT = 420


def slope_figure(result: BenchResult) -> go.Figure:
    """Per-item steerability slopes of every vector, one box per method and behaviour."""
    fig = go.Figure()
    methods = list(dict.fromkeys(r["method"] for r in result.rows))
    for method in methods:
        xs: list[str] = []
        ys: list[float] = []
        for row in result.rows:
            if row["method"] != method or row["method"] == "best of E":
                continue
            key = (row["behaviour"], row["layer"], row["vector"])
            values = result.slopes.get(key, [])
            ys += values
            xs += [f"{row['behaviour']} L{row['layer']}"] * len(values)
        fig.add_trace(go.Box(x=xs, y=ys, name=method, boxmean=True))
    fig.update_layout(
        boxmode="group",
        title="Per-item steerability slopes (propensity per unit of equal-cost multiplier)",
        yaxis_title="slope (nats)",
        height=_HEIGHT,
    )
    fig.add_hline(y=0.0, line_dash="dot", line_color="grey")
    return fig


def _by_method(
    result: BenchResult, x: str, y: str, *, title: str, x_title: str, y_title: str
) -> go.Figure:
    """One marker trace per method: its rows that have ``x``, at ``(row[x], row[y])``."""
    fig = go.Figure()
    for method in dict.fromkeys(r["method"] for r in result.rows):
        rows = [r for r in result.rows if r["method"] == method and x in r]
        if rows:
            fig.add_trace(
                go.Scatter(
                    x=[r[x] for r in rows],
                    y=[r[y] for r in rows],
                    mode="markers",
                    name=method,
                    text=[f"{r['vector']} | {r['behaviour']} L{r['layer']}" for r in rows],
                )
            )
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title, height=_HEIGHT)
    return fig


def tradeoff_figure(result: BenchResult) -> go.Figure:
    """Effectiveness against entanglement at the equal-cost multiplier, one point per vector."""
    return _by_method(
        result,
        "entanglement",
        "effectiveness",
        title="Effectiveness vs entanglement at equal cost (p95 KL budget)",
        x_title="entanglement (RMS change of the behaviour rate elsewhere)",
        y_title="effectiveness (y_steered - y_base) / (1 - y_base)",
    )


def examples_figure(result: BenchResult) -> go.Figure:
    """Mean slope of each single-example one-shot vector, per behaviour and layer."""
    fig = go.Figure()
    cells = dict.fromkeys((r["behaviour"], r["layer"]) for r in result.rows)
    for behaviour, layer in cells:
        rows = [
            r
            for r in result.rows
            if r["method"] == "one-shot"
            and (r["behaviour"], r["layer"]) == (behaviour, layer)
            and "mean_slope" in r
        ]
        if not rows:
            continue
        fig.add_trace(
            go.Bar(
                x=[r["vector"] for r in rows],
                y=[r["mean_slope"] for r in rows],
                name=f"{behaviour} L{layer}",
            )
        )
    fig.update_layout(
        barmode="group",
        title="One-shot vectors: mean slope by training example",
        yaxis_title="mean slope (nats)",
        height=_HEIGHT,
    )
    return fig


def open_figure(result: BenchResult) -> go.Figure:
    """Open-ended behaviours: judged-rate effectiveness against the reply NLL ratio at the
    equal-cost multiplier, one point per vector."""
    return _by_method(
        result,
        "nll_ratio",
        "effectiveness",
        title="Open-ended behaviours: judged effectiveness vs reply NLL ratio at equal cost",
        x_title="reply NLL ratio (1 = as fluent as the unsteered replies)",
        y_title="effectiveness of the judged rate",
    )


def bench_figures(result: BenchResult) -> dict[str, Any]:
    """The figures by name (``"open-ended"`` only when the run has such behaviours)."""
    figures = {
        "slopes": slope_figure(result),
        "tradeoff": tradeoff_figure(result),
        "examples": examples_figure(result),
    }
    if any("nll_ratio" in r for r in result.rows):
        figures["open-ended"] = open_figure(result)
    return figures
