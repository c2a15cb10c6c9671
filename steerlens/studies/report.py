"""One HTML page for a study folder: `write_study_report` (``steerlens study report DIR``);
and one for a layer x strength grid: `write_grid_page` (``steerlens sweep``).

The page is built from the folder alone (no model is loaded): the spec and its run (header,
unit counts, failures), the units table, the generalization matrix (heatmaps and the transfer
ranking), each vector's steerability (per-prompt lines, the anti-steerable fraction) and the
layer x strength grid (heatmaps and the frontier) when the study measured them. It is one
self-contained file: plotly.js is embedded once, so it opens offline.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from steerlens.errors import StudyFolderError
from steerlens.io.plain import prompt_label, short
from steerlens.studies.folder import MANIFEST, StudyFolder
from steerlens.studies.grid import DEFAULT_MAX_NLL_RATIO
from steerlens.studies.page import Page, escape, html_table, number, write_page
from steerlens.studies.steerability import DEFAULT_MAX_KL
from steerlens.version import __version__

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from steerlens.studies.grid import GridResult
    from steerlens.studies.matrix import GeneralizationMatrix
    from steerlens.studies.steerability import SteerabilityResult

REPORT_FILE = "report.html"


# How the prompts were formatted, by the spec's chat setting (None: the chat rule).
_CHAT_NOTE = {
    True: " (chat prompts)",
    False: " (prompts as written)",
    None: " (chat prompts when the model has a chat template)",
}


def _header(page: Page, folder: StudyFolder, table: Any) -> None:
    manifest = folder.manifest
    spec = folder.spec
    units = spec.units()
    done = int((table.status == "done").sum()) if len(table) else 0
    failed = folder.failures()
    pending = len(units) - done - len(failed)
    ev = spec.evaluation
    opt = spec.optimizer
    page.add(f"<h1>Study {escape(spec.name)}</h1>\n<h2 id='settings'>What was run</h2>\n")
    judge = (
        "none"
        if ev.judge is None
        else "a reply containing any of "
        + ", ".join(f"<code>{escape(repr(p))}</code>" for p in ev.judge.any_of)
    )
    items = [
        f"model <code>{escape(spec.model)}</code>{_CHAT_NOTE[spec.chat]}",
        f"{len(units)} units: {len(spec.examples)} examples x layers {list(spec.layers)} x "
        f"seeds {list(spec.seeds)} x objectives {', '.join(spec.objectives)}",
        f"optimizer: lr {opt.lr:g}, max_steps {opt.max_steps}, norm cap "
        f"{'none' if opt.norm_cap is None else format(opt.norm_cap, 'g')}",
        f"evaluation: {len(ev.prompts)} held-out and {len(ev.neutral_prompts)} neutral "
        f"prompts, strength {ev.strength:g}, every token steered; steerability multipliers "
        f"{list(ev.steerability_strengths) or 'none'}; grid strengths "
        f"{'none' if ev.grid is None else list(ev.grid.strengths)}",
        f"held-out prompts: {_prompts(ev.prompts)}",
        f"neutral prompts: {_prompts(ev.neutral_prompts)}",
        f"judge: {judge}",
        f"coherence budgets: steerability uses the multipliers whose side-effect KL on neutral "
        f"prompts stays within {DEFAULT_MAX_KL:g} nat; the grid's frontier the cells whose "
        f"replies' NLL stays within {DEFAULT_MAX_NLL_RATIO:g}x the unsteered replies'",
        f"spec hash <code>{escape(manifest['spec_hash'][:12])}</code>, created "
        f"{escape(manifest.get('created_at', '?'))} by steerlens "
        f"{escape(manifest.get('steerlens_version', '?'))}; report by steerlens "
        f"{escape(__version__)}",
        f"folder <code>{escape(folder.path)}</code>",
    ]
    page.add("<ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>\n")
    failed_class = ' class="failed"' if failed else ""
    page.add(
        f'<p id="counts"><b>{done} done</b>, <b{failed_class}>{len(failed)} failed</b>, '
        f"{pending} not run yet (of {len(units)} units).</p>\n"
    )
    if failed:
        page.add('<h3 class="failed">Failed units</h3>\n<ul>')
        page.add(
            "".join(
                f"<li><code>{escape(u)}</code>: {escape(err)}</li>" for u, err in failed.items()
            )
        )
        page.add("</ul>\n<p class='note'>Run the study again to retry them.</p>\n")


def _prompts(prompts: tuple[str, ...]) -> str:
    if not prompts:
        return "none"
    return ", ".join(f"<code>{escape(short(prompt_label(p), 50))}</code>" for p in prompts)


def _findings(
    page: Page,
    matrix: GeneralizationMatrix | None,
    steer: dict[str, SteerabilityResult],
    grid: GridResult | None,
) -> None:
    """What the study concluded, in words, before any figure."""
    found = []
    if matrix is not None:
        ranking = matrix.ranking()
        name, score = ranking[0]
        if score == score:  # NaN: one example, so no vector has other prompts
            found.append(
                f"Transfer: <code>{escape(name)}</code> transfers best, changing the target "
                f"log-prob of the prompts it was not trained on by {score:+.3g} nats on average."
            )
        else:
            found.append("Transfer: with one example, no vector has other prompts to transfer to.")
    for name, result in steer.items():
        found.append(f"Steerability of <code>{escape(name)}</code>: {escape(result.verdict())}")
    if grid is not None:
        point = grid.frontier(max_nll_ratio=DEFAULT_MAX_NLL_RATIO)
        found.append(f"Layer x strength grid: {escape(point.summary())}")
    page.add("<h2 id='findings'>What it shows</h2>\n")
    if not found:
        page.add("<p class='note'>Nothing is measured yet.</p>\n")
        return
    page.add("<ul>" + "".join(f"<li>{f}</li>" for f in found) + "</ul>\n")


def _units(page: Page, table: Any) -> None:
    page.add('<h2 id="units">Units</h2>\n')
    if not len(table):
        page.add("<p class='note'>No unit has finished yet.</p>\n")
        return
    rows = [
        [
            r.unit,
            r.layer,
            r.seed,
            r.objective,
            r.status,
            number(r.initial_loss),
            number(r.final_loss),
            "-" if r.steps is None or r.steps != r.steps else int(r.steps),
            r.stop_reason or "-",
            number(r.vector_norm),
        ]
        for r in table.itertuples()
    ]
    header = [
        "unit",
        "layer",
        "seed",
        "objective",
        "status",
        "loss before",
        "loss after",
        "steps",
        "stop reason",
        "norm",
    ]
    times = [t for t in table.wall_time_s if t == t]  # NaN: failed units
    took = (
        f" Units train together in batches, so no unit has a time of its own; the longest "
        f"wait until a unit stopped was {max(times):.1f} s."
        if times
        else ""
    )
    page.add(
        f"<p class='note'>Losses are the training loss (nats) at the first and last step.{took}</p>"
    )
    page.add(html_table(header, rows, numeric={1, 2, 5, 6, 7, 9}))


def _matrix(page: Page, matrix: GeneralizationMatrix | None) -> None:
    page.add('<h2 id="matrix">Generalization matrix</h2>\n')
    if matrix is None:
        page.add("<p class='note'>No vector is evaluated yet.</p>\n")
        return
    page.add(
        "<p class='note'>Rows are vectors, columns prompts; <i>own</i> marks the prompt a "
        "vector was trained on. Held-out prompts have no target completion, so the log-prob "
        "heatmap shows the example prompts only"
        + ("; the judged heatmap shows the held-out replies" if matrix.judged is not None else "")
        + ".</p>\n"
    )
    page.figure(matrix.plot())
    if matrix.judged is not None:
        page.figure(matrix.plot("judged"))
    judged = None if matrix.judged is None else matrix.transfer("judged").tolist()
    kl = None if matrix.side_effect_kl is None else matrix.side_effect_kl.tolist()
    header = ["rank", "vector", "transfer change (nats)"]
    header += [] if judged is None else ["judged (other prompts)"]
    header += [] if kl is None else ["side-effect KL (nats)"]
    rows = []
    for rank, (name, score) in enumerate(matrix.ranking(), start=1):
        v = matrix.vectors.index(name)
        row: list[Any] = [rank, name, number(score, "+.4f")]
        row += [] if judged is None else [number(judged[v], ".0%")]
        row += [] if kl is None else [number(kl[v], ".4f")]
        rows.append(row)
    page.add(
        "<h3>Transfer ranking</h3>\n<p class='note'>Each vector's mean target log-prob change "
        "on the prompts it was not trained on, best first.</p>\n"
    )
    page.add(html_table(header, rows, numeric={0, 2, 3, 4}))


def _steerability(page: Page, results: dict[str, SteerabilityResult]) -> None:
    page.add('<h2 id="steerability">Steerability</h2>\n')
    if not results:
        page.add("<p class='note'>No steerability is measured yet.</p>\n")
        return
    rows = [
        [
            name,
            ", ".join(f"{s:g}" for s in r.coherent_strengths) if r.kl is not None else "-",
            (
                f"{len(r.anti_steerable_prompts)}/{len(r.prompts)}"
                if r.has_verdict
                else "no verdict"
            ),
            number(r.mean_slope, "+.4f"),
            number(r.slope_std, ".4f"),
            number(r.slope_iqr, ".4f"),
        ]
        for name, r in results.items()
    ]
    page.add(
        "<p class='note'>Per prompt, the slope of the target log-prob change against the "
        "multiplier of the vector, fitted over the multipliers where the model stays coherent "
        f"(side-effect KL on neutral prompts within {DEFAULT_MAX_KL:g} nat, from 0 outward); a "
        "prompt is anti-steerable when that slope is negative. Multipliers beyond the budget "
        "are shaded in the figures and left out of every verdict.</p>\n"
    )
    header = [
        "vector",
        "coherent multipliers",
        "anti-steerable",
        "mean slope",
        "slope std",
        "slope IQR",
    ]
    page.add(html_table(header, rows, numeric={3, 4, 5}))
    for k, (name, result) in enumerate(results.items()):
        page.add(f"<details{' open' if k == 0 else ''}><summary>{escape(name)}</summary>\n")
        fig = result.plot()
        fig.update_layout(title=f"{name}: {fig.layout.title.text}", width=900, height=420)
        page.figure(fig)
        page.add("</details>\n")


def _grid(page: Page, grid: GridResult | None, sources: dict[int, str]) -> None:
    page.add('<h2 id="grid">Layer x strength grid</h2>\n')
    if grid is None:
        page.add("<p class='note'>The grid is not measured (no [evaluation.grid], or not yet).</p>")
        return
    page.add(
        "<p class='note'>At each layer, that layer's best-transferring vector: "
        + ", ".join(f"layer {la}: <code>{escape(u)}</code>" for la, u in sorted(sources.items()))
        + ".</p>\n"
    )
    best = grid.frontier(max_nll_ratio=DEFAULT_MAX_NLL_RATIO)
    name = "Frontier" if best.shows_behavior else "Within"
    page.add(f"<p>{name} NLL ratio &le; {DEFAULT_MAX_NLL_RATIO:g}: {escape(best.summary())}</p>\n")
    page.figure(grid.plot_all())
    page.figure(grid.plot_frontier("nll_ratio"))
    if "kl" in grid.metrics:
        page.figure(grid.plot_frontier("kl"))


def write_study_report(folder: StudyFolder | str | Path, path: str | Path | None = None) -> Path:
    """Write one self-contained HTML page of a study folder's results; returns its path.

    Reads only the folder (no model): the spec and unit counts (done, failed, not run, with
    the failures' errors), the units table, the generalization-matrix heatmaps and transfer
    ranking, each vector's steerability (per-prompt lines, anti-steerable fraction) and the
    layer x strength grid (heatmaps, frontier), each where the study measured it. plotly.js
    is embedded once, so the page opens offline; it is written atomically.

    Args:
        folder: a `StudyFolder` or its path.
        path: where to write (default: ``report.html`` in the folder).

    Raises:
        StudyFolderError: no such folder, or not a steerlens study folder.

    Example:
        >>> import tempfile
        >>> from steerlens.studies.run import run_study
        >>> from steerlens.studies.spec import Example, OptimizerSettings, StudySpec
        >>> spec = StudySpec(examples=[Example(prompt="Hi", promote=[" there"])], layers=[1],
        ...                  model="tiny", optimizer=OptimizerSettings(max_steps=2))
        >>> study = run_study(spec, tempfile.mkdtemp() + "/study", progress=False)
        >>> write_study_report(study).name
        'report.html'
    """
    where = folder.path if isinstance(folder, StudyFolder) else Path(folder).expanduser()
    if where.is_dir() and not (where / MANIFEST).is_file():
        raise StudyFolderError(
            f"{str(where)!r} is not a "
            f"steerlens study folder (it has no {MANIFEST}); pass the folder that "
            "'steerlens study run' wrote (its --folder)."
        )
    study = StudyFolder.open(where)
    table = study.table()
    grid_table = study.grid_table()
    sources = {int(r.layer): r.source_unit for r in grid_table.itertuples()}
    matrix, steer, grid = study.matrix(), study.steerability_results(), study.grid()
    page = Page()
    _header(page, study, table)
    _findings(page, matrix, steer, grid)
    _units(page, table)
    _matrix(page, matrix)
    _steerability(page, steer)
    _grid(page, grid, sources)
    target = study.path / REPORT_FILE if path is None else Path(path).expanduser()
    return write_page(page, target, f"steerlens study {study.spec.name}")


def _replies(grid: GridResult, replies: Sequence[str], judge: Callable[[str], bool] | None) -> str:
    rows = []
    for prompt, reply in zip(grid.prompts, replies, strict=True):
        mark = "" if judge is None else ("yes" if judge(reply) else "no")
        rows.append([short(prompt_label(prompt), 60), short(reply, 160), mark])
    header = ["prompt", "reply", "judged yes"] if judge is not None else ["prompt", "reply", ""]
    return html_table(header, rows, numeric=set())


def write_grid_page(
    grid: GridResult,
    path: str | Path,
    *,
    title: str,
    judge: Callable[[str], bool] | None = None,
    judge_text: str = "",
    settings: Sequence[str] = (),
    max_nll_ratio: float = DEFAULT_MAX_NLL_RATIO,
) -> Path:
    """Write one self-contained HTML page of a layer x strength grid; returns its path.

    Above the figures it says what was run (``settings``, the grid's layers, strengths,
    positions, prompts, neutral prompts, the judge and the coherence budget) and what it
    shows (the best setting within ``max_nll_ratio``, or that none shows the behavior), with
    the unsteered replies and those of that setting, each marked by ``judge``.

    Example:
        >>> import tempfile, torch
        >>> from steerlens.evaluation import StringMatchJudge
        >>> from steerlens.studies.grid import layer_strength_grid
        >>> from steerlens.testing import tiny_model
        >>> judge = StringMatchJudge(["e"])
        >>> grid = layer_strength_grid(tiny_model(), torch.ones(64), layers=[1],
        ...     strengths=[0, 4], prompts=["the cat"], judge=judge, max_new_tokens=3,
        ...     progress=False)
        >>> path = write_grid_page(grid, tempfile.mkdtemp() + "/sweep.html", title="demo",
        ...                        judge=judge, judge_text="contains 'e'")
        >>> "What it shows" in path.read_text(encoding="utf-8")
        True
    """
    from steerlens.studies.grid import check_budget

    budget = check_budget(max_nll_ratio=max_nll_ratio)["max_nll_ratio"]
    point = grid.frontier(max_nll_ratio=budget)
    best = grid.frontier()
    page = Page()
    page.add(f"<h1>{escape(title)}</h1>\n<h2 id='settings'>What was run</h2>\n")
    items = [escape(s) for s in settings] + [
        f"layers {list(grid.layers)} x strengths {[float(s) for s in grid.strengths]}; "
        f"steered tokens: {escape(grid.positions.describe())}",
        f"{len(grid.prompts)} prompts: {_prompts(grid.prompts)}",
        f"judge: {escape(judge_text) or 'not described'}",
        f"neutral prompts (side-effect KL): {_prompts(grid.neutral_prompts)}",
        f"coherence budget: steered replies' NLL (under the unsteered model) at most "
        f"{budget:g}x the unsteered replies'",
    ]
    page.add("<ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>\n")
    page.add("<h2 id='findings'>What it shows</h2>\n")
    lead = "Best setting within the budget" if point.shows_behavior else "Within the budget"
    page.add(
        f"<p><b>{lead}:</b> {escape(point.summary())}</p>\n"
        f"<p class='note'>Best cell, coherent or not: {escape(best.summary())}</p>\n"
    )
    page.add("<h3>Unsteered replies</h3>\n")
    page.add(_replies(grid, grid.baseline_replies, judge) if grid.baseline_replies else "")
    if point.found and point.layer is not None and point.strength is not None:
        page.add(
            f"<h3>Replies at layer {point.layer}, strength {point.strength:g} (the setting "
            "above)</h3>\n"
        )
        page.add(_replies(grid, grid.replies_at(point.layer, point.strength), judge))
    page.add("<h2 id='figures'>Figures</h2>\n")
    page.figure(grid.plot_all())
    page.figure(grid.plot_frontier("nll_ratio"))
    target = Path(path).expanduser()
    return write_page(page, target, title)


__all__ = ["REPORT_FILE", "write_grid_page", "write_study_report"]
