"""The architecture is checked, not described: no private names cross a module boundary, and
the package's top level stays small. (Layers and cycles: `lint-imports`, run by `make lint`.)"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parent.parent
TOP_LEVEL_MODULES = 8


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _steerlens_modules(tree: ast.Module) -> set[str]:
    """Names bound to steerlens modules by ``import steerlens.x as y`` / ``from steerlens import
    x`` / ``from steerlens.x import y`` (y a module)."""
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("steerlens"):
                    bound.add((alias.asname or alias.name).split(".")[0])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("steerlens"):
            for alias in node.names:
                dotted = f"{node.module}.{alias.name}".replace(".", "/")
                if (ROOT / f"{dotted}.py").exists() or (ROOT / dotted).is_dir():
                    bound.add(alias.asname or alias.name)
    return bound


def private_imports(path: Path) -> list[str]:
    """``file:line name`` for each private name imported from, or read off, a steerlens module."""
    tree = ast.parse(path.read_text(), filename=str(path))
    modules = _steerlens_modules(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("steerlens"):
            found += [f"{node.lineno} {a.name}" for a in node.names if _private(a.name)]
        elif (
            isinstance(node, ast.Attribute)
            and _private(node.attr)
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
        ):
            found.append(f"{node.lineno} {node.value.id}.{node.attr}")
    return [f"{path.relative_to(ROOT)}:{line}" for line in found]


def test_no_private_name_crosses_a_module_boundary():
    files = [*ROOT.joinpath("steerlens").rglob("*.py"), *ROOT.joinpath("tests").rglob("*.py")]
    found = [hit for f in sorted(files) for hit in private_imports(f)]
    assert not found, "make these public or keep them in their module:\n" + "\n".join(found)


def test_the_checker_sees_a_private_import(tmp_path, monkeypatch):
    sample = ROOT / "tests" / "_sample_private_import.py"
    sample.write_text(
        "from steerlens.steering.vector import _now\nfrom steerlens import runtime\n"
        "runtime._hidden\n"
    )
    try:
        assert [h.split(":")[1] for h in private_imports(sample)] == ["1 _now", "3 runtime._hidden"]
    finally:
        sample.unlink()


def test_at_most_eight_top_level_modules():
    modules = sorted(p.name for p in ROOT.joinpath("steerlens").glob("*.py"))
    assert len(modules) <= TOP_LEVEL_MODULES, modules
