"""Notebooks are committed without outputs; CI executes each one and exports it to HTML.

The export check exists because plotly's default renderer writes only the
`application/vnd.plotly.v1+json` mimetype, which nbconvert's HTML exporter does not render:
every figure came out as blank space while the cells still ran without error.
"""

import json
import re
import sys
from pathlib import Path

import nbclient
import nbconvert
import nbformat
import pytest
from plotly.offline import get_plotlyjs

NOTEBOOK_DIR = Path(__file__).parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))

PLOTLY_MIMETYPE = "application/vnd.plotly.v1+json"
# What plotly's HTML renderers write for one figure: the div it draws into, and the call that draws.
FIGURE_DIV = 'class="plotly-graph-div"'
FIGURE_CALL = "Plotly.newPlot("
# How the warnings module prints one: "path:line: SomeWarning: message".
WARNING_LINE = re.compile(r"\b\w*Warning: ")
CELL_TIMEOUT_S = 1800  # notebook 09 runs the benchmark in one cell: about 11 minutes on 2 cores


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stripped_and_says_what_it_shows(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code, "a notebook with no code"
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), (
        f"{path.name} has outputs; strip them (jupyter nbconvert --clear-output --inplace)"
    )
    first = "".join(nb["cells"][0]["source"])
    assert nb["cells"][0]["cell_type"] == "markdown"
    assert "What this shows" in first and "Time" in first


def test_there_are_notebooks():
    assert NOTEBOOKS


def _text(value) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def _warnings(cell) -> list[str]:
    """The lines of ``cell``'s stderr that a Python warning printed (``Category: message``), or
    that show this machine's Python install path."""
    lines = [
        line
        for o in cell.outputs
        if o.output_type == "stream" and o.name == "stderr"
        for line in _text(o.text).splitlines()
    ]
    return [line for line in lines if WARNING_LINE.search(line) or sys.prefix in line]


@pytest.mark.slow
def test_importing_steerlens_in_a_notebook_shows_no_warning():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import steerlens")]
    nbclient.NotebookClient(nb, timeout=300, startup_timeout=120, kernel_name="python3").execute()
    assert not nb.cells[0].outputs, (
        f"importing steerlens printed {_text(nb.cells[0].outputs[0].get('text', ''))!r}; with "
        "tqdm's 'IProgress not found', install ipywidgets (pip install -e '.[dev]')"
    )


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_and_renders_its_figures_in_html(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        startup_timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    client.execute()  # raises CellExecutionError, with the traceback, at the first failing cell

    figures = 0
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        errors = [o for o in cell.outputs if o.output_type == "error"]
        assert not errors, f"cell {index} raised {errors[0].ename}: {errors[0].evalue}"
        warned = _warnings(cell)
        assert not warned, f"cell {index} shows a warning (a red box in Jupyter): {warned[0]}"
        for output in cell.outputs:
            data = output.get("data", {})
            if PLOTLY_MIMETYPE not in data:
                continue
            figures += 1
            html = _text(data.get("text/html", ""))
            assert FIGURE_DIV in html and FIGURE_CALL in html, (
                f"cell {index} has a plotly figure with no HTML rendering (only {sorted(data)}): "
                "exported HTML shows it as blank; set "
                'plotly.io.renderers.default = "plotly_mimetype+notebook" in the first code cell'
            )

    html_path = tmp_path / f"{path.stem}.html"
    body, _ = nbconvert.HTMLExporter().from_notebook_node(nb)
    html_path.write_text(body, encoding="utf-8")
    exported = html_path.read_text(encoding="utf-8")

    rendered = exported.count(FIGURE_DIV)
    assert rendered == figures, (
        f"{figures} figure outputs but {rendered} rendered figures in {html_path.name}"
    )
    if figures:
        # Compare counts, not strings: a failing `in` on megabytes of JavaScript is unreadable.
        plotlyjs_copies = exported.count(get_plotlyjs())
        assert plotlyjs_copies == 1, (
            f"{html_path.name} embeds plotly.js {plotlyjs_copies} times; it needs it once to "
            "render its figures offline"
        )
