"""Plotly figures with one consistent look."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from steerlens.io.atomic import atomic_path
from steerlens.io.html_page import html_document
from steerlens.runtime.logprobs import convert_loss

TEMPLATE = "plotly_white"
TABLE_STYLE = "border-collapse:collapse;text-align:left"


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


def write_page(path: str | Path, title: str, body: str, *, example_name: str = "page.html") -> Path:
    """Write ``body`` (an HTML fragment) as one page titled ``title``, atomically."""
    page = html_document(title, body)
    target = Path(path).expanduser()
    with atomic_path(target, example_name=example_name) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return target


def html_bar(value: float, scale: float) -> str:
    """A small inline bar: red for positive, blue for negative, width by ``|value| / scale``."""
    if not math.isfinite(value):
        return ""
    width = round(60 * min(1.0, abs(value) / scale)) if scale > 0 else 0
    colour = "#d6604d" if value >= 0 else "#4393c3"
    return (
        f'<span style="display:inline-block;width:{width}px;height:0.8em;'
        f'background:{colour};vertical-align:middle"></span>'
    )
