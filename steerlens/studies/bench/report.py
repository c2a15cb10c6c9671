"""One HTML page for a benchmark folder: `write_bench_report` (``steerlens bench report DIR``).

Built from the folder alone (no model is loaded): the settings, the leaderboard, one table per
(behaviour, layer) cell, the figures, and the data's attribution. plotly.js is embedded once,
so the page opens offline.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from steerlens.errors import StudyFolderError
from steerlens.studies.bench.folder import SPEC_FILE, BenchFolder
from steerlens.studies.bench.results import BenchResult
from steerlens.studies.bench.settings import BenchSettings
from steerlens.studies.page import Page, escape, html_table, number, write_page
from steerlens.version import __version__

REPORT_FILE = "report.html"
ATTRIBUTION = (
    "Behaviour items: nrimsky/CAA (MIT); most derive from Anthropic's model-written evals "
    "(CC-BY-4.0), the refusal items and part of the sycophancy items were written with GPT-4; "
    "MMLU items: Hendrycks et al. (MIT). See steerlens/datasets/caa/ATTRIBUTION.md."
)
COLUMNS = (
    ("method", "method", None),
    ("vector", "vector", None),
    ("multiplier", "equal-cost multiplier", ".3g"),
    ("mean_slope", "mean slope", ".3g"),
    ("slope_ci_low", "95% CI low", ".3g"),
    ("slope_ci_high", "95% CI high", ".3g"),
    ("anti_steerable", "anti-steerable", ".0%"),
    ("non_monotonic", "non-monotonic", ".0%"),
    ("delta_at_max", "Δ at max", ".3g"),
    ("rate_base", "rate unsteered", ".0%"),
    ("rate_steered", "rate steered", ".0%"),
    ("effectiveness", "effectiveness", ".2f"),
    ("entanglement", "entanglement", ".3f"),
)

# Open-ended behaviours are judged replies: no slopes, a rate with its interval and fluency.
OPEN_COLUMNS = (
    ("method", "method", None),
    ("vector", "vector", None),
    ("multiplier", "equal-cost multiplier", ".3g"),
    ("rate_base", "judged rate unsteered", ".0%"),
    ("rate_steered", "judged rate steered", ".0%"),
    ("rate_ci_low", "95% CI low", ".0%"),
    ("rate_ci_high", "95% CI high", ".0%"),
    ("effectiveness", "effectiveness", ".2f"),
    ("nll_ratio", "reply NLL ratio", ".2f"),
    ("sample_reply", "first test reply", None),
)


def _cell(value: Any, fmt: str | None) -> str:
    if fmt is None:
        return str(value)
    if isinstance(value, float) and math.isnan(value):
        return "-"
    return number(value, fmt)


def _rows_table(rows: list[dict[str, Any]]) -> str:
    columns = OPEN_COLUMNS if rows and rows[0].get("kind") == "open-ended" else COLUMNS
    header = [title for _, title, _ in columns] + ["budget reached"]
    body = [
        [_cell(r.get(key, math.nan), fmt) for key, _, fmt in columns]
        + ["yes" if r["budget_reached"] else "NO"]
        for r in rows
    ]
    numeric = {i for i, (_, _, fmt) in enumerate(columns) if fmt is not None}
    return html_table(header, body, numeric=numeric)


def _leaderboard(result: BenchResult) -> str:
    board = result.leaderboard()
    header = ["method", *[str(c) for c in board.columns]]
    body = [
        [str(method), *[_cell(float(v), ".3g") for v in values]]
        for method, values in zip(board.index, board.to_numpy().tolist(), strict=True)
    ]
    return html_table(header, body, numeric=set(range(1, len(header))))


def write_bench_report(folder: str | Path, path: str | Path | None = None) -> Path:
    """Write the benchmark folder's report (``report.html`` in the folder by default).

    Raises:
        StudyFolderError: no such folder, not a benchmark folder, or no finished cell yet.

    Example:
        >>> write_bench_report("no/such/folder")  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        StudyFolderError: ...
    """
    root = Path(folder).expanduser()
    spec_file = root / SPEC_FILE
    if not spec_file.is_file():
        raise StudyFolderError(
            f"{str(root)!r} is not a benchmark folder (no {SPEC_FILE}); pass the folder "
            "given to `steerlens bench run --out`."
        )
    spec = json.loads(spec_file.read_text(encoding="utf-8"))["spec"]
    store = BenchFolder(root, spec)
    cells = store.cells()
    if not cells:
        raise StudyFolderError(
            f"{str(root)!r} has no finished (behaviour, layer) cell yet; run "
            "`steerlens bench run` first (it resumes)."
        )
    result = BenchResult.of(cells, BenchSettings.from_dict(spec["settings"], spec["optimizer"]))
    page = Page()
    total = len(spec["layers"]) * len(spec["behaviours"])
    page.add(f"<h1>Benchmark: one-shot vs contrastive vectors on {escape(spec['model'])}</h1>\n")
    settings = spec["settings"]
    page.add(
        "<ul>"
        f"<li>{len(cells)} of {total} (behaviour, layer) cells finished; behaviours "
        f"{escape(', '.join(spec['behaviours']))}; layers {escape(spec['layers'])}</li>"
        f"<li>equal cost: p95 per-token KL(steered || unsteered) = {settings['budget']} nats "
        f"over {settings['rollout_tokens']}-token greedy rollouts on "
        f"{len(settings['neutral_prompts'])} neutral prompts</li>"
        f"<li>{settings['test_items']} test items per behaviour, both letter orders; "
        f"steerability grid {escape(settings['grid'])} x the equal-cost multiplier; "
        f"E = {settings['examples']} single examples</li>"
        f"<li>open-ended behaviours: {settings.get('reply_tokens', 32)}-token greedy replies "
        "to the test requests, judged; the reply NLL ratio is the unsteered model's NLL of "
        "the steered replies over that of its own</li>"
        f"<li>report by steerlens {escape(__version__)}; definitions: docs/benchmark.md</li>"
        "</ul>\n"
    )
    page.add("<h2>Leaderboard (mean over behaviours and layers)</h2>\n")
    page.add(_leaderboard(result))
    for name, fig in result.figures().items():
        page.add(f"<h2>{escape(name)}</h2>\n")
        page.figure(fig)
    for cell in cells:
        page.add(f"<h2>{escape(cell.behaviour)}, layer {cell.layer}</h2>\n")
        page.add(_rows_table(list(cell.rows)))
        times = ", ".join(f"{k} {v:.0f} s" for k, v in cell.times.items())
        page.add(f'<p class="note">times: {escape(times)}</p>\n')
    page.add(f'<p class="note">{escape(ATTRIBUTION)}</p>\n')
    target = root / REPORT_FILE if path is None else Path(path).expanduser()
    return write_page(page, target, f"steerlens benchmark {spec['model']}")


__all__ = ["REPORT_FILE", "write_bench_report"]
