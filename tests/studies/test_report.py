"""write_study_report / ``steerlens study report``: one self-contained page, read from the folder
alone, with every section the study measured; failures reported; clear errors."""

from __future__ import annotations

import dataclasses
from html.parser import HTMLParser
from pathlib import Path

import pytest

from steerlens import cli
from steerlens.errors import StudyError, StudyFolderError
from steerlens.studies import phases as phases_mod
from steerlens.studies import serial_backend as serial_mod
from steerlens.studies import spec as spec_mod
from steerlens.studies.folder import StudyFolder
from steerlens.studies.report import write_study_report
from steerlens.studies.run import run_study
from steerlens.studies.serial_backend import SerialBackend
from steerlens.studies.spec import StudySpec

SPECS = Path(__file__).parent / "specs"


class _Outline(HTMLParser):
    """Headings, element ids and script sources of a page (raises on nothing: counts only)."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.script_sources: list[str] = []
        self.open: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.append(attrs["id"])
        if tag == "script" and "src" in attrs:
            self.script_sources.append(attrs["src"])


@pytest.fixture(scope="module")
def spec() -> StudySpec:
    return StudySpec.from_toml(SPECS / "report.toml")


@pytest.fixture(scope="module")
def study(tmp_path_factory, spec, tiny):
    path = tmp_path_factory.mktemp("report") / "study"
    return run_study(spec, path, backend=SerialBackend(model=tiny), progress=False)


def _outline(text: str) -> _Outline:
    parser = _Outline()
    parser.feed(text)
    parser.close()
    return parser


def test_the_report_is_one_self_contained_page_with_every_section(study, spec, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("the report must not load a model")

    monkeypatch.setattr(spec_mod, "load_study_model", no_model)
    monkeypatch.setattr(serial_mod, "load_study_model", no_model)
    path = write_study_report(study)
    assert path == study.path / "report.html"
    text = path.read_text(encoding="utf-8")
    assert text.count("* plotly.js v") == 1  # the bundle, embedded once
    assert '<script src="http' not in text
    outline = _outline(text)
    assert outline.script_sources == []
    for section in ("counts", "units", "matrix", "steerability", "grid"):
        assert section in outline.ids, section
    # matrix (log-prob, judged) + 4 steerability + grid heatmaps + 2 frontiers
    figures = [i for i in outline.ids if i.startswith("figure-")]
    assert len(figures) == 2 + 4 + 1 + 2
    assert text.count("Plotly.newPlot(") == len(figures)
    assert "4 done</b>" in text and "0 failed" in text
    for unit in spec.units():
        assert unit.name in text
    assert "Transfer ranking" in text and "anti-steerable" in text
    assert "NLL ratio &le; 1.5: " in text and "best-transferring vector" in text
    assert f"spec hash <code>{spec.spec_hash[:12]}" in text


def test_the_page_says_what_was_run_and_what_it_shows_before_any_figure(study, spec):
    text = write_study_report(study).read_text(encoding="utf-8")
    first_figure = text.index('id="figure-0"')
    settings = text.index("What was run")
    findings = text.index("What it shows")
    assert settings < findings < first_figure
    head = text[:first_figure]
    for prompt in spec.evaluation.prompts:
        assert prompt[:20] in head
    assert "judge: a reply containing any of" in head
    assert "within 1 nat" in head and "within 1.5x the unsteered" in head
    assert head.count("Steerability of <code>") == len(spec.units())
    assert "Layer x strength grid: " in head and "Transfer: " in head
    assert '<b class="failed">0 failed' not in text and "<b>0 failed</b>" in text
    assert "held-out prompts have no target completion" in head.lower()
    # No time column: units of one batch share the batch's time.
    assert "time (s)" not in text and "no unit has a time of its own" in text


def test_the_grid_figure_fits_the_page_with_its_colour_bars(study):
    grid = study.grid()
    fig = grid.plot_all()
    assert fig.layout.width <= 1100 and fig.layout.margin.r >= 60
    last = [t for t in fig.data if t.type == "heatmap"][-1]
    assert last.colorbar.x <= 1.01 and last.colorbar.thickness <= 10


def test_the_page_is_written_where_asked_and_atomically(study, tmp_path):
    target = write_study_report(study.path, tmp_path / "out" / "page.html")
    assert target.is_file() and target.parent == tmp_path / "out"
    assert [p.name for p in target.parent.iterdir()] == ["page.html"]  # no temporary left


def test_a_folder_with_a_failed_unit_still_reports(tmp_path, spec, tiny, monkeypatch):
    real = phases_mod.optimize_many
    bad = spec.examples[1].prompt

    def optimize_many(model, jobs, *, progress=None):
        if any(bad in j.datapoints.prompt and j.layer == 1 for j in jobs):
            raise RuntimeError("CUDA out of memory")
        return real(model, jobs, progress=progress)

    monkeypatch.setattr(phases_mod, "optimize_many", optimize_many)
    with pytest.raises(StudyError, match="1 of 4 units failed"):
        run_study(spec, tmp_path / "s", backend=SerialBackend(model=tiny), progress=False)
    text = write_study_report(tmp_path / "s").read_text(encoding="utf-8")
    assert "3 done</b>" in text and "1 failed</b>" in text
    assert "cats-L1-s0-promotion</code>: RuntimeError: CUDA out of memory" in text
    assert "The grid is not measured" in text  # it waits for every unit
    assert text.count("* plotly.js v") == 1


def test_a_study_with_nothing_measured_yet_reports_without_plotly(tmp_path, spec):
    StudyFolder.prepare(tmp_path / "s", spec)
    text = write_study_report(tmp_path / "s").read_text(encoding="utf-8")
    assert "0 done</b>" in text and "4 not run yet" in text
    assert "plotly.js" not in text and "No vector is evaluated yet" in text


def test_a_study_without_steerability_or_grid_leaves_them_out(tmp_path, spec, tiny):
    ev = dataclasses.replace(spec.evaluation, steerability_strengths=(), grid=None)
    plain = dataclasses.replace(spec, evaluation=ev)
    run_study(plain, tmp_path / "s", backend=SerialBackend(model=tiny), progress=False)
    text = write_study_report(tmp_path / "s").read_text(encoding="utf-8")
    assert "No steerability is measured yet" in text and "The grid is not measured" in text
    assert text.count("* plotly.js v") == 1


def test_a_missing_or_foreign_folder_is_a_clear_error(tmp_path):
    with pytest.raises(StudyFolderError, match=r"no study folder at .*'steerlens study run'"):
        write_study_report(tmp_path / "missing")
    (tmp_path / "other").mkdir()
    with pytest.raises(StudyFolderError, match=r"not a steerlens study folder.*study\.json"):
        write_study_report(tmp_path / "other")


# -- the command line -----------------------------------------------------------------------


def test_study_report_on_the_command_line(study, tmp_path, capsys):
    assert cli.main(["study", "report", str(study.path)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {study.path / 'report.html'}"
    out = tmp_path / "r.html"
    assert cli.main(["study", "report", str(study.path), "--output", str(out)]) == 0
    assert out.read_text(encoding="utf-8").count("* plotly.js v") == 1


def test_study_report_errors_are_one_line(tmp_path, study, capsys):
    assert cli.main(["study", "report", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no study folder at" in err
    (tmp_path / "other").mkdir()
    assert cli.main(["study", "report", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a steerlens study folder" in err
    assert cli.main(["study", "report", str(study.path), "-o", str(tmp_path)]) == 2
    assert "is a folder, but a file path is needed" in capsys.readouterr().err
