"""One self-contained HTML page, built part by part: what the study and benchmark reports
share (plotly.js embedded once, so the page opens offline)."""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from steerlens.io.atomic import atomic_path
from steerlens.io.html_page import html_document

if TYPE_CHECKING:
    import plotly.graph_objects as go


class Page:
    """The page's parts, in order; figures embed plotly.js with the first one only."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.figures = 0

    def add(self, text: str) -> None:
        self.parts.append(text)

    def figure(self, fig: go.Figure) -> None:
        self.parts.append(
            fig.to_html(
                full_html=False,
                include_plotlyjs=self.figures == 0,
                div_id=f"figure-{self.figures}",
                config={"displaylogo": False},
            )
        )
        self.figures += 1


def escape(value: Any) -> str:
    return html.escape(str(value))


def number(value: Any, fmt: str = ".4g") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, fmt)


def html_table(header: Sequence[str], rows: Iterable[Sequence[Any]], numeric: set[int]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{escape(c)}</td>' if i in numeric else f"<td>{escape(c)}</td>"
            for i, c in enumerate(row)
        )
        + "</tr>\n"
        for row in rows
    )
    return f"<table><tr>{head}</tr>\n{body}</table>\n"


def write_page(page: Page, path: Path, title: str) -> Path:
    """Write ``page`` as one HTML file at ``path`` (atomically); return the path."""
    text = html_document(title, "".join(page.parts))
    with atomic_path(path, example_name=path.name) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
