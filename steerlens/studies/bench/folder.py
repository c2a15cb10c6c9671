"""The benchmark's folder: its spec, and one sub-folder per finished (behaviour, layer) cell.

A cell is written when it finishes (its vectors first, then ``cell.json``, atomically), so an
interrupted run loses at most the cell it was in; run again with the same arguments, it reads
the finished cells and runs the rest. A folder made for other settings, data or methods is
refused rather than mixed.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import re
from pathlib import Path
from typing import Any

from steerlens.errors import StudyFolderError
from steerlens.io.atomic import atomic_path, path_text
from steerlens.steering.vector import SteeringVector
from steerlens.studies.bench.results import CellResult
from steerlens.version import __version__

SPEC_FILE = "bench.json"
CELL_FILE = "cell.json"
FORMAT = "steerlens.bench"
FORMAT_VERSION = 1


def _write_json(path: Path, data: Any) -> None:
    with atomic_path(path, example_name=path.name) as tmp:
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


class BenchFolder:
    """A benchmark's folder (see the module docstring); `open` it, then `has` / `read` /
    `write` cells.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     folder = BenchFolder.open(f"{tmp}/bench", {"model": "m"})
        ...     folder.has("refusal", 8)
        False
    """

    def __init__(self, path: Path, spec: dict[str, Any]) -> None:
        self.path = path
        self.spec = spec

    @classmethod
    def open(cls, path: str | Path, spec: dict[str, Any]) -> BenchFolder:
        """Create the folder for ``spec``, or reopen one made for the same spec.

        Raises:
            StudyFolderError: the folder holds another benchmark (other settings, data,
                methods, layers or model), or something that is not a benchmark folder.
        """
        root = Path(path_text(path, what="the benchmark folder")).expanduser()
        if root.exists() and not root.is_dir():
            raise StudyFolderError(
                f"{str(root)!r} is a file, but the benchmark needs a folder; pass a folder path "
                "(it is created if missing)."
            )
        file = root / SPEC_FILE
        if file.is_file():
            try:
                saved = json.loads(file.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise StudyFolderError(
                    f"{str(file)!r} is not readable benchmark spec ({exc}); use another folder."
                ) from exc
            if not isinstance(saved, dict) or saved.get("format") != FORMAT:
                raise StudyFolderError(
                    f"{str(root)!r} is not a steerlens benchmark folder; use another folder."
                )
            changed = _differences(saved.get("spec", {}), spec)
            if changed:
                raise StudyFolderError(
                    f"{str(root)!r} holds a benchmark with other {', '.join(changed)}; "
                    "nothing was run. Use another folder, or run with the folder's settings "
                    f"(they are in {SPEC_FILE})."
                )
            return cls(root, spec)
        if root.exists() and any(root.iterdir()):
            raise StudyFolderError(
                f"{str(root)!r} exists and is not empty, but has no {SPEC_FILE}; give a new "
                "folder (or an empty one) for the benchmark."
            )
        root.mkdir(parents=True, exist_ok=True)
        _write_json(
            file,
            {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "steerlens_version": __version__,
                "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "spec": spec,
            },
        )
        return cls(root, spec)

    def _cell_dir(self, behaviour: str, layer: int) -> Path:
        # Behaviour names come from users' files: keep the folder name safe and unique.
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", behaviour)[:40]
        tag = hashlib.sha256(behaviour.encode()).hexdigest()[:6]
        return self.path / "cells" / f"{safe}-{tag}-L{layer}"

    def has(self, behaviour: str, layer: int) -> bool:
        """Whether the cell finished."""
        return (self._cell_dir(behaviour, layer) / CELL_FILE).is_file()

    def write(self, cell: CellResult) -> Path:
        """Write a finished cell: its vectors, then ``cell.json`` (which marks it finished)."""
        where = self._cell_dir(cell.behaviour, cell.layer)
        (where / "vectors").mkdir(parents=True, exist_ok=True)
        files = {}
        for i, (label, vector) in enumerate(cell.vectors.items()):
            files[label] = f"vectors/{i}.safetensors"
            vector.save(where / files[label])
        data = {
            "behaviour": cell.behaviour,
            "layer": cell.layer,
            "rows": list(cell.rows),
            "slopes": cell.slopes,
            "cosines": cell.cosines,
            "times": cell.times,
            "vectors": files,
        }
        _write_json(where / CELL_FILE, data)
        return where

    def read(self, behaviour: str, layer: int) -> CellResult:
        """A finished cell, vectors included."""
        where = self._cell_dir(behaviour, layer)
        try:
            data = json.loads((where / CELL_FILE).read_text(encoding="utf-8"))
            vectors = {
                label: SteeringVector.load(where / name) for label, name in data["vectors"].items()
            }
            return CellResult(
                behaviour=data["behaviour"],
                layer=int(data["layer"]),
                rows=tuple(data["rows"]),
                slopes={k: list(v) for k, v in data["slopes"].items()},
                cosines=data["cosines"],
                times={k: float(v) for k, v in data["times"].items()},
                vectors=vectors,
            )
        except (OSError, KeyError, TypeError, ValueError) as exc:
            raise StudyFolderError(
                f"the finished cell {str(where)!r} cannot be read ({exc}); delete that "
                "sub-folder and run again to redo only it."
            ) from exc

    def cells(self) -> list[CellResult]:
        """Every finished cell, in the spec's order (layers, then behaviours)."""
        out = []
        for layer in self.spec.get("layers", []):
            for behaviour in self.spec.get("behaviours", {}):
                if self.has(behaviour, layer):
                    out.append(self.read(behaviour, layer))
        return out


__all__ = ["BenchFolder"]
