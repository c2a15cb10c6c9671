"""Every public name (each public module's ``__all__``) is in the API reference, docs/api.md."""

from __future__ import annotations

import importlib
import inspect
import re
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
