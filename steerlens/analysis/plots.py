"""Plotly figures with one consistent look."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from steerlens.io.atomic import atomic_path
from steerlens.objectives import convert_loss

TEMPLATE = "plotly_white"


def style_figure(fig: go.Figure, title: str, x: str, y: str) -> go.Figure:
    fig.update_layout(
        template=TEMPLATE,
        title=title,
        xaxis_title=x,
        yaxis_title=y,
        legend_title_text="",
        margin={"l": 60, "r": 20, "t": 60, "b": 50},
    )
    return fig


def plot_loss_history(result: Any, unit: str = "nats") -> go.Figure:
    """Per-completion loss against optimizer step, plus the total.

    Example:
        >>> from steerlens.testing import tiny_model
        >>> from steerlens import Datapoint, optimize_vector
        >>> res = optimize_vector(tiny_model(), Datapoint("a", promote=[" b"]), 1, max_steps=2)
        >>> len(plot_loss_history(res).data)
        2
    """
    losses = result.losses(unit)
    steps = list(range(losses.shape[0]))
    fig = go.Figure()
    for j, label in enumerate(result.labels):
        fig.add_trace(go.Scatter(x=steps, y=losses[:, j].tolist(), mode="lines", name=label))
    fig.add_trace(
        go.Scatter(
            x=steps, y=losses.sum(axis=1).tolist(), mode="lines", name="total", line={"width": 3}
        )
    )
    convert_loss(0.0, unit)
    return style_figure(fig, "Optimization loss", "step", f"loss ({unit})")


def save_html(fig: go.Figure, path: str | Path) -> Path:
    """Write a self-contained HTML file (plotly.js inlined: works offline), atomically."""
    target = Path(path)
    with atomic_path(target) as tmp:
        fig.write_html(str(tmp), include_plotlyjs=True, full_html=True)
    return target
