"""An HTML report of one optimization: settings, loss curve, and generations side by side."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from steerlens.analysis.plots import plot_loss_history
from steerlens.io.atomic import atomic_path


def write_report(
    path: str | Path,
    result: Any,
    rows: Sequence[tuple[str, str, str]],
    *,
    title: str = "steerlens report",
    unit: str = "nats",
) -> Path:
    """Write ``result``'s loss curve and ``(prompt, unsteered, steered)`` rows as one HTML page.

    Example:
        >>> import tempfile, pathlib
        >>> from steerlens.testing import tiny_model
        >>> from steerlens import Datapoint, optimize_vector
        >>> res = optimize_vector(tiny_model(), Datapoint("a", promote=[" b"]), 1, max_steps=2)
        >>> p = write_report(pathlib.Path(tempfile.mkdtemp()) / "r.html", res, [("a", "x", "y")])
        >>> p.stat().st_size > 1000
        True
    """
    fig = plot_loss_history(result, unit)
    figure_html = fig.to_html(include_plotlyjs=True, full_html=False)
    meta = result.vector.metadata()
    table = "\n".join(
        f"<tr><td>{html.escape(p)}</td><td>{html.escape(a)}</td><td>{html.escape(b)}</td></tr>"
        for p, a, b in rows
    )
    final = "".join(
        f"<li>{html.escape(k)}: {v:.4g} nats</li>" for k, v in result.final_losses.items()
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}
td,th{{border:1px solid #ccc;padding:6px;vertical-align:top}}table{{border-collapse:collapse}}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Model {html.escape(meta["model_id"])}, layers {meta["layers"]}, norm {result.vector.norm():.4g},
{result.steps} steps, stop: {html.escape(result.stop_reason)}, {result.wall_time_s:.1f} s.</p>
<ul>{final}</ul>
{figure_html}
<h2>Generations</h2>
<table><tr><th>prompt</th><th>unsteered</th><th>steered</th></tr>
{table}
</table></body></html>
"""
    target = Path(path)
    with atomic_path(target) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return target
