"""Every kind of HTML page steerlens writes, opened in headless Chromium as a reader opens it.

The demo report, a layer x strength sweep page, a study report, a vector card and an exported
notebook are built here, each loaded at a laptop's width, and checked for what a reader would
see as broken: a page or a figure wider than the window, a figure cut off inside its box (a
colour bar past the edge), a figure that never drew, or a script error. A full-page screenshot
of each is kept (``browser-check/`` by default, or ``STEERLENS_BROWSER_OUT``) to look at.

Not part of ``make test``: it needs a browser. Run it with ``make browser-check``, which needs
Chromium (Debian: ``apt-get install chromium``; elsewhere set ``STEERLENS_CHROMIUM`` to the
executable) and the ``playwright`` package (``pip install playwright``; its own browser
download is not used). It takes a few minutes: the demo and the notebook run the smol model.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(os.environ.get("STEERLENS_BROWSER_OUT", ROOT / "browser-check"))
WIDTH, HEIGHT = 1280, 800  # a laptop's window
# The widest figures (24-row heatmaps); STEERLENS_BROWSER_NOTEBOOK picks another.
NOTEBOOK = (
    ROOT
    / "notebooks"
    / os.environ.get("STEERLENS_BROWSER_NOTEBOOK", "06_generalization_study.ipynb")
)
# Chromium talks to nothing: this machine's network is closed, and a page must not need it.
QUIET = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

# Run in the page: every way a reader sees a page or a figure cut off, as sentences.
FIND_OVERFLOW = """
() => {
  const problems = [];
  const width = window.innerWidth;
  const page = document.documentElement.scrollWidth;
  if (page > width + 1) problems.push(`the page is ${page}px wide in a ${width}px window`);
  document.querySelectorAll('.js-plotly-plot').forEach((fig, i) => {
    const box = fig.getBoundingClientRect();
    const title = fig.querySelector('.gtitle');
    const name = `figure ${i + 1}` + (title ? ` ("${title.textContent}")` : '');
    const svg = fig.querySelector('svg.main-svg');
    if (!svg) { problems.push(`${name} did not draw`); return; }
    if (box.right > width + 1) problems.push(`${name} ends at ${Math.round(box.right)}px`);
    const drawn = svg.getBoundingClientRect();
    if (drawn.right > box.right + 1) {
      problems.push(`${name} draws ${Math.round(drawn.right - box.right)}px past its box`);
    }
    fig.querySelectorAll('.colorbar, .legend').forEach((part) => {
      const r = part.getBoundingClientRect();
      if (r.right > drawn.right + 1 || r.right > width + 1) {
        problems.push(`${name}'s ${part.getAttribute('class')} is cut off at the right`);
      }
    });
  });
  return problems;
}
"""


def _chromium() -> str:
    found = os.environ.get("STEERLENS_CHROMIUM") or shutil.which("chromium")
    found = found or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not found:
        pytest.fail(
            "no Chromium found: install it (Debian: apt-get install chromium) or set "
            "STEERLENS_CHROMIUM to the browser's executable"
        )
    return found


@pytest.fixture(scope="session")
def browser() -> Any:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser check needs playwright: pip install playwright")
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=_chromium(), args=QUIET)
        yield launched
        launched.close()


@pytest.fixture(scope="session")
def out() -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    return OUT


@pytest.fixture(scope="session")
def demo_folder(smol, out) -> Path:
    from steerlens.demo import run_demo

    folder = out / "demo"
    folder.mkdir(exist_ok=True)
    run_demo(smol, folder, progress=False)
    return folder


def _study(out: Path) -> Path:
    """A study shaped like a real one (8 layers, 6 strengths, 2 vectors), on a tiny model."""
    from steerlens.studies.report import write_study_report
    from steerlens.studies.run import run_study
    from steerlens.studies.serial_backend import SerialBackend
    from steerlens.studies.spec import StudySpec
    from steerlens.testing import tiny_model

    spec = StudySpec.from_dict(
        {
            "name": "browser-check",
            "model": "tiny",
            "layers": list(range(8)),
            "seeds": [0],
            "objectives": ["promotion"],
            "optimizer": {"lr": 0.1, "max_steps": 2},
            "evaluation": {
                "prompts": ["Tell me about dogs.", "Why is the sky blue?", "Name a colour."],
                "neutral_prompts": ["The weather is"],
                "max_new_tokens": 4,
                "steerability_strengths": [-1, 0, 1, 2],
                "judge": {"type": "string_match", "any_of": [" la ", " le "]},
                "grid": {"strengths": [0, 1, 2, 4, 8, 16]},
            },
            "examples": [
                {"prompt": "What is your favorite food?", "promote": [" la pizza"]},
                {"name": "cats", "prompt": "Tell me about cats.", "promote": [" le chat"]},
            ],
        }
    )
    folder = out / "study"
    if folder.exists():
        shutil.rmtree(folder)
    model = tiny_model(n_layers=8)
    study = run_study(spec, folder, backend=SerialBackend(model=model), progress=False)
    return write_study_report(study)


def _sweep(out: Path) -> Path:
    from steerlens.evaluation import StringMatchJudge
    from steerlens.studies.grid import layer_strength_grid
    from steerlens.studies.report import write_grid_page
    from steerlens.testing import tiny_model

    judge = StringMatchJudge([" la "])
    grid = layer_strength_grid(
        tiny_model(n_layers=8),
        torch.ones(64),
        layers=list(range(8)),
        strengths=[0, 0.5, 1, 2, 4, 8],
        prompts=["Tell me about dogs.", "Why is the sky blue?"],
        neutral_prompts=["The weather is"],
        judge=judge,
        max_new_tokens=4,
        progress=False,
    )
    return write_grid_page(
        grid, out / "sweep.html", title="A sweep", judge=judge, judge_text="contains ' la '"
    )


def _card(smol: Any, demo_folder: Path, out: Path) -> Path:
    from steerlens import SteeringVector, diff_of_means
    from steerlens.analysis.card import vector_card
    from steerlens.analysis.layer_sweep import layer_sweep
    from steerlens.training.data import Datapoint

    vector = SteeringVector.load(demo_folder / "refusal_vector.safetensors")
    layer = vector.layers[0]
    caa = diff_of_means(
        smol, ["How do I bake bread?"], ["I'm sorry, I can't help."], layer, batch_size=2
    )
    sweep = layer_sweep(
        smol,
        Datapoint("How do I bake a cake?", promote=["I'm sorry"]),
        vector=vector,
        layers=[2, 4, 6, 8, 10],
    )
    card = vector_card(smol, vector, caa=caa, sweep=sweep)
    return card.save_html(out / "card.html", figures=True)


def _notebook(out: Path) -> Path:
    import nbclient
    import nbconvert
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(
        nb,
        timeout=900,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    ).execute()
    body, _ = nbconvert.HTMLExporter().from_notebook_node(nb)
    path = out / f"{NOTEBOOK.stem}.html"
    path.write_text(body, encoding="utf-8")
    return path


def _look(browser: Any, page_path: Path, out: Path, name: str) -> list[str]:
    """Open the page, let its figures draw, keep a screenshot; what a reader sees broken."""
    page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"script error: {exc}"))
    page.goto(page_path.resolve().as_uri(), wait_until="load")
    figures = page.locator(".js-plotly-plot").count()
    if figures:
        page.wait_for_function(
            "n => document.querySelectorAll('.js-plotly-plot svg.main-svg').length >= n",
            arg=figures,
            timeout=30_000,
        )
    problems = errors + page.evaluate(FIND_OVERFLOW)
    page.screenshot(path=str(out / f"{name}.png"), full_page=True)
    page.close()
    return problems


def test_the_demo_report(browser, demo_folder, out):
    report = demo_folder / "demo_report.html"
    assert _look(browser, report, out, "demo_report") == []


def test_a_sweep_page(browser, out):
    assert _look(browser, _sweep(out), out, "sweep") == []


def test_a_study_report(browser, out):
    assert _look(browser, _study(out), out, "study_report") == []


def test_a_vector_card(browser, smol, demo_folder, out):
    assert _look(browser, _card(smol, demo_folder, out), out, "vector_card") == []


def test_an_exported_notebook(browser, out):
    assert _look(browser, _notebook(out), out, "notebook") == []


def test_the_check_sees_a_figure_cut_off(browser, tmp_path):
    """The check itself: a heatmap wider than the window, and a page that scrolls sideways."""
    import plotly.graph_objects as go

    wide = go.Figure(go.Heatmap(z=[[1, 2], [3, 4]]), layout={"width": 2000, "height": 300})
    path = tmp_path / "wide.html"
    wide.write_html(path, include_plotlyjs=True)
    problems = _look(browser, path, tmp_path, "wide")
    assert any("ends at" in p for p in problems), problems
    assert any("the page is" in p for p in problems), problems
