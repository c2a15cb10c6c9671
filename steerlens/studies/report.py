"""One HTML page for a study folder: `write_study_report` (``steerlens study report DIR``).

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
from steerlens.studies.folder import MANIFEST, StudyFolder
from steerlens.studies.page import Page, escape, html_table, number, write_page
from steerlens.version import __version__

if TYPE_CHECKING:
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
    page.add(f"<h1>Study {escape(spec.name)}</h1>\n")
    items = [
        f"model <code>{escape(spec.model)}</code>{_CHAT_NOTE[spec.chat]}",
        f"{len(units)} units: {len(spec.examples)} examples x layers {list(spec.layers)} x "
        f"seeds {list(spec.seeds)} x objectives {', '.join(spec.objectives)}",
        f"optimizer: lr {opt.lr:g}, max_steps {opt.max_steps}, norm cap "
        f"{'none' if opt.norm_cap is None else format(opt.norm_cap, 'g')}",
        f"evaluation: {len(ev.prompts)} held-out and {len(ev.neutral_prompts)} neutral "
        f"prompts, strength {ev.strength:g}; steerability multipliers "
        f"{list(ev.steerability_strengths) or 'none'}; grid strengths "
        f"{'none' if ev.grid is None else list(ev.grid.strengths)}",
        f"spec hash <code>{escape(manifest['spec_hash'][:12])}</code>, created "
        f"{escape(manifest.get('created_at', '?'))} by steerlens "
        f"{escape(manifest.get('steerlens_version', '?'))}; report by steerlens "
        f"{escape(__version__)}",
        f"folder <code>{escape(folder.path)}</code>",
    ]
    page.add("<ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>\n")
    page.add(
        f'<p id="counts"><b>{done} done</b>, <b class="failed">{len(failed)} failed</b>, '
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
            number(r.wall_time_s, ".1f"),
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
        "time (s)",
    ]
    page.add("<p class='note'>Losses are the training loss (nats) at the first and last step.</p>")
    page.add(html_table(header, rows, numeric={1, 2, 5, 6, 7, 9, 10}))


def _matrix(page: Page, matrix: GeneralizationMatrix | None) -> None:
    page.add('<h2 id="matrix">Generalization matrix</h2>\n')
    if matrix is None:
        page.add("<p class='note'>No vector is evaluated yet.</p>\n")
        return
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
            f"{r.anti_steerable:.0%}",
            f"{len(r.anti_steerable_prompts)}/{len(r.prompts)}",
            number(r.mean_slope, "+.4f"),
            number(r.slope_std, ".4f"),
            number(r.slope_iqr, ".4f"),
        ]
        for name, r in results.items()
    ]
    page.add(
        "<p class='note'>Per prompt, the slope of the target log-prob change against the "
        "multiplier of the vector; a prompt is anti-steerable when its slope is negative.</p>\n"
    )
    header = ["vector", "anti-steerable", "prompts", "mean slope", "slope std", "slope IQR"]
    page.add(html_table(header, rows, numeric={1, 2, 3, 4, 5}))
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
    page.figure(grid.plot_all())
    page.figure(grid.plot_frontier("nll_ratio"))
    if "kl" in grid.metrics:
        page.figure(grid.plot_frontier("kl"))
    best = grid.frontier(max_nll_ratio=1.5)
    page.add(f"<p>Frontier at NLL ratio &le; 1.5: {escape(best.summary())}</p>\n")


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
    page = Page()
    _header(page, study, table)
    _units(page, table)
    _matrix(page, study.matrix())
    _steerability(page, study.steerability_results())
    _grid(page, study.grid(), sources)
    target = study.path / REPORT_FILE if path is None else Path(path).expanduser()
    return write_page(page, target, f"steerlens study {study.spec.name}")


__all__ = ["REPORT_FILE", "write_study_report"]
