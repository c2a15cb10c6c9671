"""Every public name (each public module's ``__all__``) is in the API reference, docs/api.md."""

from __future__ import annotations

import importlib
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

API = Path(__file__).parent.parent / "docs" / "api.md"
PUBLIC_MODULES = [
    "steerlens",
    "steerlens.analysis",
    "steerlens.baselines",
    "steerlens.evaluation",
    "steerlens.datasets",
    "steerlens.interop",
    "steerlens.loading",
    "steerlens.runtime",
    "steerlens.steering",
    "steerlens.studies",
    "steerlens.studies.bench",
    "steerlens.training",
]


def _resolve(dotted: str) -> object:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(dotted)


def _documented() -> set[int]:
    ids: set[int] = set()
    for dotted in re.findall(r"^::: (\S+)", API.read_text(), flags=re.M):
        obj = _resolve(dotted)
        ids.add(id(obj))
        if inspect.ismodule(obj):  # a whole module documents its public names
            names = getattr(obj, "__all__", [n for n in vars(obj) if not n.startswith("_")])
            ids.update(id(getattr(obj, n)) for n in names)
    return ids


@pytest.mark.parametrize("module", PUBLIC_MODULES)
def test_every_public_name_is_in_the_api_reference(module):
    mod = importlib.import_module(module)
    documented = _documented()
    missing = [
        name
        for name in mod.__all__
        if not name.startswith("__")
        and not isinstance(getattr(mod, name), (str, int, float, tuple))
        and id(getattr(mod, name)) not in documented
    ]
    assert not missing, f"add to docs/api.md: {', '.join(f'{module}.{n}' for n in missing)}"


def test_every_reference_entry_resolves():
    for dotted in re.findall(r"^::: (\S+)", API.read_text(), flags=re.M):
        _resolve(dotted)


# The API reference renders docstrings through mkdocstrings and griffe with mkdocs.yml's options.
ROOT = Path(__file__).parent.parent


def _python_options() -> dict:
    import yaml

    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    (mkdocstrings,) = [p["mkdocstrings"] for p in config["plugins"] if "mkdocstrings" in p]
    return mkdocstrings["handlers"]["python"]["options"]


def _griffe_module(dotted: str):
    griffe = pytest.importorskip("griffe")
    options = _python_options()
    extensions = griffe.load_extensions(*(str(ROOT / e) for e in options["extensions"]))
    module = griffe.load(dotted, extensions=extensions, search_paths=[str(ROOT)])
    return module, options


def test_example_sections_are_read_as_examples_not_markdown():
    module, options = _griffe_module("steerlens.steering.steer")
    sections = module["Steering"].docstring.parse(
        options["docstring_style"], **options.get("docstring_options", {})
    )
    kinds = [s.kind.value for s in sections]
    assert "examples" in kinds and "admonition" not in kinds, kinds
    (examples,) = [s for s in sections if s.kind.value == "examples"]
    code = [text for kind, text in examples.value if kind.value == "examples"]
    assert code and code[0].startswith(">>> import torch\n>>> plan = Steering("), code


def test_doctest_flags_are_trimmed_from_examples():
    module, options = _griffe_module("steerlens.loading.model")
    sections = module["load_model"].docstring.parse(
        options["docstring_style"], **options.get("docstring_options", {})
    )
    (examples,) = [s for s in sections if s.kind.value == "examples"]
    shown = "\n".join(text for _, text in examples.value)
    assert ">>> model = load_model()" in shown and "doctest" not in shown, shown


def test_a_multi_line_returns_is_one_value_typed_by_the_signature():
    module, options = _griffe_module("steerlens.training.optimize")
    sections = module["optimize_vector"].docstring.parse(
        options["docstring_style"], **options.get("docstring_options", {})
    )
    (returns,) = [s for s in sections if s.kind.value == "returns"]
    assert len(returns.value) == 1, [r.description for r in returns.value]
    assert str(returns.value[0].annotation) == "OptimizeResult"
    assert "stop reason and wall time" in returns.value[0].description


def test_the_built_reference_shows_examples_as_code_blocks(tmp_path):
    pytest.importorskip("mkdocs")
    site = tmp_path / "site"
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    html = (site / "api.html").read_text(encoding="utf-8")
    assert "&gt;&gt;&gt;" not in re.sub(r"<code>.*?</code>", "", html, flags=re.S), (
        "a doctest prompt outside a code block: an Example: section rendered as Markdown"
    )
    assert "<blockquote>" not in html and "doctest:" not in html
    titles = html.count('doc-section-title">Examples:')
    code_after_title = r'doc-section-title">Examples:</span></p>\s*<div class="highlight">'
    blocks = len(re.findall(code_after_title, html))
    assert titles > 100 and blocks == titles, (titles, blocks)
    assert not (site / "griffe_sections.py").exists(), "the griffe extension was published"
