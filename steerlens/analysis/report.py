"""An HTML report of one optimization: settings, training example, loss curve, what the vector
did on held-out prompts, and generations side by side."""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from steerlens.analysis.plots import plot_loss_history
from steerlens.analysis.scale import ResidualNorms
from steerlens.errors import InputError, SpecError
from steerlens.io.atomic import atomic_path
from steerlens.io.html_page import html_document


class HasHtml(Protocol):
    def html(self) -> str: ...


def _table(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = "\n".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row.values()) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>\n{body}\n</table>"


def write_optimization_report(
    path: str | Path,
    result: Any,
    rows: Sequence[tuple[str, str, str]],
    *,
    title: str = "steerlens report",
    unit: str = "nats",
    settings: Mapping[str, Any] | None = None,
    training: tuple[str, str] | None = None,
    row_labels: Sequence[str] | None = None,
    findings: Sequence[str] = (),
    curve: Sequence[Mapping[str, Any]] = (),
    scale: ResidualNorms | None = None,
    views: Sequence[HasHtml] = (),
    judge: Callable[[str], bool] | None = None,
    judged_as: str = "judged yes",
) -> Path:
    """Write ``result``'s loss curve and ``(prompt, unsteered, steered)`` rows as one HTML page.

    Args:
        path: the HTML file to write.
        result: an ``OptimizeResult``.
        rows: ``(prompt, unsteered reply, steered reply)`` per prompt.
        title: the page title.
        unit: the loss unit.
        settings: name -> value (lr, norm cap, strength, decoding, ...), shown as a table.
        training: ``(prompt, target completion)`` the vector was trained on.
        row_labels: one label per row, e.g. ``"training prompt"`` or ``"held-out prompt"``.
        findings: plain sentences on what the vector did, shown first.
        curve: one mapping per strength (column -> value), shown as a table.
        scale: residual norms of the model (`residual_norms`): the vector's norm is shown as a
            fraction of the typical residual norm at its layer.
        views: interpretation views shown in a section of their own, each anything with an
            ``html()`` method: a `TokenView`, a `LogitLensResult`, a `VectorCard`.
        judge: ``text -> bool``; when given, every reply is marked with its verdict
            (``judged_as`` when true, "not " + ``judged_as`` when false).
        judged_as: what a true verdict is called, e.g. ``"refusal"``.

    Example:
        >>> import tempfile, pathlib
        >>> from steerlens.testing import tiny_model
        >>> from steerlens import Datapoint, optimize_vector
        >>> res = optimize_vector(tiny_model(), Datapoint("a", promote=[" b"]), 1, max_steps=2)
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "r.html"
        >>> p = write_optimization_report(out, res, [("a", "x", "y")], settings={"lr": 0.01},
        ...                               training=("a", " b"), row_labels=["training"])
        >>> p.stat().st_size > 1000
        True
        >>> text = write_optimization_report(out, res, [("a", "x", "no")],
        ...     judge=lambda t: t == "no", judged_as="refusal").read_text(encoding="utf-8")
        >>> "[refusal]" in text and "[not refusal]" in text
        True
    """
    if row_labels is not None and len(row_labels) != len(rows):
        raise InputError(
            f"got {len(row_labels)} row labels for {len(rows)} rows; give one label per row."
        )
    for view in views:
        if not callable(getattr(view, "html", None)):
            raise SpecError(
                f"views must have an html() method (TokenView, LogitLensResult, VectorCard), "
                f"got {type(view).__name__}."
            )
    labels = list(row_labels) if row_labels is not None else None
    fig = plot_loss_history(result, unit)
    figure_html = fig.to_html(include_plotlyjs=True, full_html=False)
    meta = result.vector.metadata()
    label_head = "<th>set</th>" if labels is not None else ""

    def reply(text: str) -> str:
        if judge is None:
            return f"<td>{html.escape(text)}</td>"
        verdict = judged_as if judge(text) else f"not {judged_as}"
        mark = "judged" if judge(text) else "unjudged"
        return f'<td><b class="{mark}">[{html.escape(verdict)}]</b> {html.escape(text)}</td>'

    table = "\n".join(
        "<tr>"
        + (f"<td>{html.escape(labels[i])}</td>" if labels is not None else "")
        + f"<td>{html.escape(p)}</td>{reply(a)}{reply(b)}</tr>"
        for i, (p, a, b) in enumerate(rows)
    )
    judged_note = (
        ""
        if judge is None
        else f"<p>Each reply is marked by the judge: <b>[{html.escape(judged_as)}]</b> or "
        f"<b>[not {html.escape(judged_as)}]</b>.</p>"
    )
    final = "".join(
        f"<li>{html.escape(k)}: {v:.4g} nats</li>" for k, v in result.final_losses.items()
    )
    parts = []
    if findings:
        items = "".join(f"<li>{html.escape(f)}</li>" for f in findings)
        parts.append(f"<h2>What happened</h2><ul>{items}</ul>")
    if training is not None:
        parts.append(
            "<h2>Training example (the only one)</h2><table><tr><th>training prompt</th>"
            f"<th>target completion</th></tr><tr><td>{html.escape(training[0])}</td>"
            f"<td>{html.escape(training[1])}</td></tr></table>"
        )
    if settings:
        parts.append(
            "<h2>Settings</h2>" + _table([{"setting": k, "value": v} for k, v in settings.items()])
        )
    if curve:
        parts.append("<h2>Held-out prompts by strength</h2>" + _table(list(curve)))
    if views:
        parts.append("<h2>What the vector is</h2>" + "".join(view.html() for view in views))
    extra = "\n".join(parts)
    vector = result.vector
    scale_line = ""
    if scale is not None:
        layer = vector.layers[0] if len(vector.layers) == 1 else None
        scale_line = "".join(
            f"<br>{html.escape(scale.describe(vector, la))}."
            for la in ([layer] if layer is not None else vector.layers)
            if la in scale.layers
        )
    body = f"""<h1>{html.escape(title)}</h1>
{extra}
<h2>Optimization</h2>
<p>Model {html.escape(meta["model_id"])}, layers {meta["layers"]}, norm {result.vector.norm():.4g},
{result.steps} steps, stop: {html.escape(result.stop_reason)}, {result.wall_time_s:.1f} s.
{scale_line}</p>
<ul>{final}</ul>
{figure_html}
<h2>Generations</h2>
{judged_note}
<table><tr>{label_head}<th>prompt</th><th>unsteered</th><th>steered</th></tr>
{table}
</table>
"""
    target = Path(path)
    with atomic_path(target) as tmp:
        tmp.write_text(html_document(title, body), encoding="utf-8")
    return target
