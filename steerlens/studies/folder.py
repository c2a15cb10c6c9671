"""The study folder: every finished unit's vector and result row, kept through crashes.

Layout::

    DIR/study.json                  manifest: format, format version, steerlens version,
                                    the spec and its hash
    DIR/spec.toml                   the spec, for people
    DIR/results.sqlite              table ``units``: one row per finished (or failed) unit;
                                    table ``evaluations``: the generalization matrix's rows
                                    of every evaluated unit;
                                    table ``steerability``: one row per unit x example prompt
                                    x multiplier (with the prompt's slope);
                                    table ``grid``: one row per (layer, strength) cell of the
                                    layer x strength grid (with its source unit)
    DIR/vectors/<unit>.safetensors  each finished unit's `SteeringVector`

A unit is written in two steps: its vector file (atomically: a temporary file renamed into
place), then its row, in one SQLite transaction. So a row always has its file. A crash between
the two steps leaves a file without a row; that unit is simply trained again (the file is
replaced), and a row whose file is missing (a file deleted by hand) is dropped and its unit
redone. A unit is never recorded twice: the unit name is the table's primary key. A unit's
evaluation and steerability rows are replaced together in one transaction, and dropped when the
unit is trained again; the grid is written whole, and dropped when one of its source units is.

Read the table with pandas: `StudyFolder.table`, or
``pd.read_sql("SELECT * FROM units", sqlite3.connect("DIR/results.sqlite"))``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import math
import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from steerlens.errors import SpecError, StudyFolderError
from steerlens.io.atomic import atomic_path
from steerlens.io.lock import writer_lock
from steerlens.steering.vector import SteeringVector
from steerlens.studies.spec import StudySpec, Unit
from steerlens.training.config import OptimizeResult
from steerlens.version import __version__

if TYPE_CHECKING:
    from steerlens.studies.grid import GridResult
    from steerlens.studies.matrix import GeneralizationMatrix
    from steerlens.studies.steerability import SteerabilityResult

FORMAT = "steerlens-study"
FORMAT_VERSION = 1
MANIFEST = "study.json"
SPEC_FILE = "spec.toml"
DATABASE = "results.sqlite"
VECTORS = "vectors"
_APPLICATION_ID = 0x53544C53  # "STLS": marks results.sqlite as a steerlens study table

IfChanged = Literal["refuse", "versioned", "overwrite"]
IF_CHANGED = ("refuse", "versioned", "overwrite")

_COLUMNS = {
    "unit": "TEXT PRIMARY KEY",
    "example_index": "INTEGER NOT NULL",
    "example_name": "TEXT NOT NULL",
    "layer": "INTEGER NOT NULL",
    "seed": "INTEGER NOT NULL",
    "objective": "TEXT NOT NULL",
    "status": "TEXT NOT NULL",  # "done" or "failed"
    "initial_loss": "REAL",
    "final_loss": "REAL",
    "final_losses": "TEXT",  # JSON: completion label -> loss (nats)
    "steps": "INTEGER",
    "stop_reason": "TEXT",
    "engine": "TEXT",
    "wall_time_s": "REAL",
    "vector_norm": "REAL",
    "vector_file": "TEXT",  # relative to the study folder
    "error": "TEXT",
    "finished_at": "TEXT NOT NULL",
}
_EVALUATION_COLUMNS = {
    "unit": "TEXT NOT NULL",
    "prompt_index": "INTEGER NOT NULL",
    "prompt": "TEXT NOT NULL",
    "kind": "TEXT NOT NULL",  # "example" or "held_out"
    "own": "INTEGER NOT NULL",  # 1: the prompt the vector was trained on
    "logprob_change": "REAL",
    "judged": "INTEGER",
    "reply": "TEXT",
    "side_effect_kl": "REAL",
}

_STEERABILITY_COLUMNS = {
    "unit": "TEXT NOT NULL",
    "prompt_index": "INTEGER NOT NULL",  # the example prompts with promote completions
    "prompt": "TEXT NOT NULL",
    "strength_index": "INTEGER NOT NULL",
    "strength": "REAL NOT NULL",  # the multiplier of the vector as trained
    "effect": "REAL",  # target log-prob change (nats)
    "slope": "REAL",  # the prompt's least-squares slope (nats per unit multiplier)
    "unsteered_logprob": "REAL",
    "kl": "REAL",  # the multiplier's mean side-effect KL on neutral prompts (nats)
}
_GRID_METRICS = ("behavior", "kl", "nll", "distinct")
_GRID_COLUMNS = {
    "layer": "INTEGER NOT NULL",
    "strength": "REAL NOT NULL",
    "source_unit": "TEXT NOT NULL",  # the unit whose vector was applied at this layer
    **{f"{m}{end}": "REAL" for m in _GRID_METRICS for end in ("", "_low", "_high")},
    "successes": "INTEGER NOT NULL",
    "n_prompts": "INTEGER NOT NULL",
    "replies": "TEXT",  # JSON: one steered reply per held-out prompt
    "baseline_behavior": "REAL",  # the unsteered model's, the same in every row
    "baseline_nll": "REAL",
    "baseline_distinct": "REAL",
    "n": "INTEGER NOT NULL",  # the n of distinct-n
}


def _create(con: sqlite3.Connection, table: str, columns: dict[str, str], key: str) -> None:
    body = ", ".join(f'"{k}" {v}' for k, v in columns.items())
    con.execute(f"CREATE TABLE IF NOT EXISTS {table} ({body}, PRIMARY KEY ({key}))")
    # A folder written before a column existed gets it (empty), so newer rows fit.
    have = {row[1] for row in con.execute(f"PRAGMA table_info({table})")}
    for name, kind in columns.items():
        if name not in have and "NOT NULL" not in kind:
            con.execute(f'ALTER TABLE {table} ADD COLUMN "{name}" {kind}')


def _insert(con: sqlite3.Connection, table: str, names: list[str], values: list[list[Any]]) -> None:
    quoted = ", ".join(f'"{k}"' for k in names)
    marks = ", ".join("?" for _ in names)
    con.executemany(f"INSERT INTO {table} ({quoted}) VALUES ({marks})", values)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class StudyFolder:
    """A study folder (see the module docstring for its layout).

    Open one with `StudyFolder.open` (to read) or `StudyFolder.prepare` (to run a spec
    in it); `steerlens.studies.run.run_study` returns one.

    Example:
        >>> import tempfile
        >>> from steerlens.studies.spec import Example, StudySpec
        >>> spec = StudySpec(examples=[Example(prompt="Hi", promote=[" there"])], layers=[1],
        ...                  model="tiny")
        >>> folder = StudyFolder.prepare(tempfile.mkdtemp() + "/study", spec)
        >>> folder.spec == spec, len(folder.table()), folder.finished()
        (True, 0, set())
    """

    path: Path

    # -- opening ----------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path) -> StudyFolder:
        """An existing study folder, checked to be one this steerlens can read.

        Raises:
            StudyFolderError: no such folder, not a steerlens study folder, or one written by
                a newer steerlens.
        """
        folder = cls(Path(path).expanduser())
        if not folder.path.is_dir():
            raise StudyFolderError(
                f"no study folder at {str(path)!r}; pass the folder 'steerlens study run' wrote."
            )
        folder._read_manifest()
        folder._check_database()
        return folder

    @classmethod
    def prepare(
        cls, path: str | Path, spec: StudySpec, *, if_changed: IfChanged = "refuse"
    ) -> StudyFolder:
        """The folder to run ``spec`` in: created when new or empty, else checked to hold the
        same spec (its finished units are then kept and skipped) and repaired after a crash.

        Args:
            path: the study folder.
            spec: the study.
            if_changed: what to do when the folder holds a study of another spec:
                ``"refuse"`` (raise), ``"versioned"`` (use ``path-v2``, ``path-v3``, ...: the
                first that holds this spec or does not exist yet) or ``"overwrite"`` (delete
                the old study's files, then start afresh).

        Raises:
            StudyFolderError: the folder holds another tool's files, a newer steerlens's
                study, or (with ``"refuse"``) another spec's study.
        """
        if if_changed not in IF_CHANGED:
            raise SpecError(
                f"unknown if_changed {if_changed!r}; use one of: {', '.join(IF_CHANGED)}."
            )
        base = Path(path).expanduser()
        if base.exists() and not base.is_dir():
            raise StudyFolderError(
                f"the study folder {str(path)!r} is a file; pass a folder path (it is created "
                "if missing)."
            )
        if if_changed == "versioned":
            return cls._versioned(base, spec)
        folder = cls(base)
        if folder._is_new():
            return folder._create(spec)
        manifest = folder._read_manifest()
        folder._check_database()
        if manifest["spec_hash"] != spec.spec_hash:
            if if_changed == "overwrite":
                folder._remove_study()
                return folder._create(spec)
            raise StudyFolderError(folder._changed_message(manifest, spec))
        folder._repair()
        return folder

    @classmethod
    def _versioned(cls, base: Path, spec: StudySpec) -> StudyFolder:
        for n in range(1, 10_000):
            folder = cls(base if n == 1 else base.with_name(f"{base.name}-v{n}"))
            if folder.path.exists() and not folder.path.is_dir():
                continue
            if folder._is_new():
                return folder._create(spec)
            try:
                manifest = folder._read_manifest()
                folder._check_database()
            except StudyFolderError:
                continue
            if manifest["spec_hash"] == spec.spec_hash:
                folder._repair()
                return folder
        raise StudyFolderError(  # pragma: no cover - ten thousand versions
            f"no free version of {str(base)!r}; pass another folder."
        )

    def _is_new(self) -> bool:
        if not self.path.exists():
            return True
        # Only leftovers of an interrupted atomic write of the manifest: nothing was started.
        return all(p.name.startswith(f".{MANIFEST}.") for p in self.path.iterdir())

    def _create(self, spec: StudySpec) -> StudyFolder:
        for leftover in self.path.glob(f".{MANIFEST}.*") if self.path.exists() else ():
            leftover.unlink()
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "steerlens_version": __version__,
            "created_at": _now(),
            "spec_hash": spec.spec_hash,
            "spec": spec.to_dict(),
        }
        # The manifest comes first: whatever a crash leaves after it, _repair completes.
        with atomic_path(self.path / MANIFEST) as tmp:
            tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
        self._repair()
        return self

    def _remove_study(self) -> None:
        """Delete this study's own files (never anything else in the folder)."""
        shutil.rmtree(self.path / VECTORS, ignore_errors=True)
        for name in (DATABASE, f"{DATABASE}-journal", SPEC_FILE, MANIFEST):
            (self.path / name).unlink(missing_ok=True)

    def _changed_message(self, manifest: dict[str, Any], spec: StudySpec) -> str:
        old, new = manifest.get("spec", {}), spec.to_dict()
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        done = len(self.finished())
        return (
            f"the study folder {str(self.path)!r} holds a study of another spec (changed: "
            f"{', '.join(changed) or 'unknown'}; its hash {manifest['spec_hash'][:12]} vs "
            f"{spec.spec_hash[:12]}), with {done} finished units; nothing was run. Pass a new "
            "folder, or choose: if_changed='versioned' (--if-changed versioned) runs the new "
            "spec in a sibling folder DIR-v2, DIR-v3...; if_changed='overwrite' "
            "(--if-changed overwrite) deletes the old study's results."
        )

    def _read_manifest(self) -> dict[str, Any]:
        path = self.path / MANIFEST
        where = str(self.path)
        if not path.is_file():
            raise StudyFolderError(
                f"{where!r} is not a steerlens study folder (it has no {MANIFEST}) and is not "
                "empty; pass a new or empty folder, or the folder of an earlier study run."
            )
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StudyFolderError(
                f"{str(path)!r} is not a steerlens study manifest ({exc}); the folder was "
                "written by another tool. Pass another folder."
            ) from exc
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise StudyFolderError(
                f"{str(path)!r} was not written by steerlens (its format is "
                f"{manifest.get('format') if isinstance(manifest, dict) else None!r}, not "
                f"{FORMAT!r}); pass another folder."
            )
        version = manifest.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise StudyFolderError(
                f"{where!r} holds a study in format version {version!r}, written by steerlens "
                f"{manifest.get('steerlens_version')!r}; this steerlens ({__version__}) reads "
                f"format {FORMAT_VERSION} and older. Upgrade steerlens (pip install -U "
                "steerlens), or pass another folder."
            )
        if not isinstance(manifest.get("spec_hash"), str) or not isinstance(
            manifest.get("spec"), dict
        ):
            raise StudyFolderError(
                f"{str(path)!r} lacks the spec or its hash; the manifest is damaged. Pass "
                "another folder."
            )
        return manifest

    def _check_database(self) -> None:
        path = self.path / DATABASE
        if not path.exists():
            return
        try:
            with contextlib.closing(sqlite3.connect(path)) as con:
                app = con.execute("PRAGMA application_id").fetchone()[0]
                version = con.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise StudyFolderError(
                f"{str(path)!r} is not a SQLite database ({exc}); the folder was written by "
                "another tool, or the file is damaged. Pass another folder."
            ) from exc
        if app != _APPLICATION_ID:
            raise StudyFolderError(
                f"{str(path)!r} is a SQLite database not written by steerlens; pass another folder."
            )
        if version > FORMAT_VERSION:
            raise StudyFolderError(
                f"{str(path)!r} is in format version {version}, newer than this steerlens's "
                f"{FORMAT_VERSION}; upgrade steerlens (pip install -U steerlens)."
            )

    def _repair(self) -> None:
        """After a crash: complete the folder's files, drop temporary files and the rows
        whose vector file is missing."""
        vectors = self.path / VECTORS
        vectors.mkdir(exist_ok=True)
        if not (self.path / SPEC_FILE).is_file():
            with atomic_path(self.path / SPEC_FILE) as tmp:
                tmp.write_text(self.spec.to_toml(), encoding="utf-8")
        for tmp in self.path.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        for tmp in vectors.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        with self.transaction() as con:
            rows = con.execute(
                "SELECT unit, vector_file FROM units WHERE status = 'done'"
            ).fetchall()
            for unit, rel in rows:
                if not rel or not (self.path / rel).is_file():
                    con.execute("DELETE FROM units WHERE unit = ?", (unit,))
            for table in ("evaluations", "steerability"):
                con.execute(
                    f"DELETE FROM {table} WHERE unit NOT IN "
                    "(SELECT unit FROM units WHERE status = 'done')"
                )
            con.execute(
                "DELETE FROM grid WHERE EXISTS (SELECT 1 FROM grid WHERE source_unit NOT IN "
                "(SELECT unit FROM units WHERE status = 'done'))"
            )

    # -- the database -----------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path / DATABASE, timeout=30)
        if con.execute("PRAGMA application_id").fetchone()[0] == 0:
            con.execute(f"PRAGMA application_id = {_APPLICATION_ID}")
            con.execute(f"PRAGMA user_version = {FORMAT_VERSION}")
        columns = ", ".join(f"{k} {v}" for k, v in _COLUMNS.items())
        con.execute(f"CREATE TABLE IF NOT EXISTS units ({columns})")
        columns = ", ".join(f"{k} {v}" for k, v in _EVALUATION_COLUMNS.items())
        con.execute(
            f"CREATE TABLE IF NOT EXISTS evaluations ({columns}, PRIMARY KEY (unit, prompt_index))"
        )
        _create(con, "steerability", _STEERABILITY_COLUMNS, "unit, prompt_index, strength_index")
        _create(con, "grid", _GRID_COLUMNS, "layer, strength")
        con.commit()
        return con

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A connection to ``results.sqlite``; commits on success, rolls back on error,
        always closes."""
        con = self._connect()
        try:
            with con:
                yield con
        except sqlite3.OperationalError as exc:
            # e.g. "disk I/O error" or "database or disk is full": say where, and that what
            # finished before is kept (the transaction was rolled back, nothing half-written).
            raise StudyFolderError(
                f"writing the study folder {str(self.path)!r} failed: {exc} (a full disk, a "
                "file-size limit or a lost connection to the folder's drive); this step was "
                "rolled back and every result saved before it is kept. Free space and run the "
                "study again: it resumes."
            ) from exc
        finally:
            con.close()

    # -- reading ----------------------------------------------------------------------------
    @property
    def manifest(self) -> dict[str, Any]:
        """The parsed ``study.json``."""
        return self._read_manifest()

    @property
    def spec(self) -> StudySpec:
        """The spec this folder was made for."""
        return StudySpec.from_dict(self.manifest["spec"])

    def table(self) -> Any:
        """The ``units`` table as a pandas ``DataFrame`` (one row per finished or failed unit,
        in the order they finished)."""
        return self._frame("SELECT * FROM units ORDER BY rowid")

    def finished(self) -> set[str]:
        """The names of the units whose vectors are saved."""
        return self._names("SELECT unit FROM units WHERE status = 'done'")

    def evaluations(self) -> Any:
        """The ``evaluations`` table as a pandas ``DataFrame``: the generalization matrix's
        rows (`steerlens.studies.matrix.MatrixRow`) of every evaluated unit, one per
        ``(unit, prompt)``."""
        return self._frame("SELECT * FROM evaluations ORDER BY rowid")

    def evaluated(self) -> set[str]:
        """The names of the units whose evaluation rows are saved."""
        return self._names("SELECT DISTINCT unit FROM evaluations")

    def steerability_table(self) -> Any:
        """The ``steerability`` table as a pandas ``DataFrame``: one row per unit x example
        prompt x multiplier (``effect``, and the prompt's ``slope`` repeated on its rows)."""
        return self._frame("SELECT * FROM steerability ORDER BY unit, prompt_index, strength_index")

    def steerability_measured(self) -> set[str]:
        """The names of the units whose steerability rows are saved."""
        return self._names("SELECT DISTINCT unit FROM steerability")

    def grid_table(self) -> Any:
        """The ``grid`` table as a pandas ``DataFrame``: one row per (layer, strength) cell,
        with the unit whose vector was applied at that layer (empty: no grid yet)."""
        return self._frame("SELECT * FROM grid ORDER BY layer, strength")

    def has_grid(self) -> bool:
        """Whether the layer x strength grid is saved."""
        with self.transaction() as con:
            return con.execute("SELECT 1 FROM grid LIMIT 1").fetchone() is not None

    def _frame(self, query: str) -> Any:
        """``query``'s rows as a pandas ``DataFrame``."""
        import pandas as pd

        with self.transaction() as con:
            return pd.read_sql(query, con)

    def _names(self, query: str) -> set[str]:
        """The first column of ``query``'s rows (unit names), as a set."""
        with self.transaction() as con:
            return {r[0] for r in con.execute(query)}

    def _rows(self, query: str) -> list[dict[str, Any]]:
        with self.transaction() as con:
            con.row_factory = sqlite3.Row
            return [dict(r) for r in con.execute(query)]

    def matrix(self) -> GeneralizationMatrix | None:
        """The generalization matrix of the evaluated units (in unit order), rebuilt from the
        ``evaluations`` table, or ``None`` when no unit is evaluated (see
        `steerlens.studies.matrix.GeneralizationMatrix.from_rows`)."""
        from steerlens.studies.matrix import GeneralizationMatrix

        spec = self.spec
        order = {u.name: i for i, u in enumerate(spec.units())}
        rows = self._rows("SELECT * FROM evaluations")
        if not rows:
            return None
        rows.sort(key=lambda r: (order.get(r["unit"], len(order)), r["prompt_index"]))
        for row in rows:
            row["vector"] = row["unit"]
        return GeneralizationMatrix.from_rows(rows, strength=spec.evaluation.strength)

    def steerability_results(self) -> dict[str, SteerabilityResult]:
        """Unit name -> its `steerlens.studies.steerability.SteerabilityResult`, rebuilt from
        the ``steerability`` table, in unit order."""
        from steerlens.studies.steerability import SteerabilityResult

        rows = self._rows("SELECT * FROM steerability ORDER BY prompt_index, strength_index")
        out = {}
        for unit in self.spec.units():
            mine = [r for r in rows if r["unit"] == unit.name]
            if mine:
                unsteered = [r["unsteered_logprob"] for r in mine if r["strength_index"] == 0]
                out[unit.name] = SteerabilityResult.from_rows(
                    mine, unsteered_logprob=[math.nan if u is None else u for u in unsteered]
                )
        return out

    def grid(self) -> GridResult | None:
        """The layer x strength grid, rebuilt from the ``grid`` table (without its vectors and
        unsteered replies), or ``None`` when it is not saved."""
        from steerlens.studies.grid import GridResult

        rows = self._rows("SELECT * FROM grid ORDER BY layer, strength")
        if not rows:
            return None
        spec = self.spec
        for row in rows:
            row["replies"] = json.loads(row["replies"] or "[]")
        if all(row["kl"] is None for row in rows):
            for row in rows:
                for end in ("", "_low", "_high"):
                    del row[f"kl{end}"]
        first = rows[0]
        return GridResult.from_rows(
            rows,
            prompts=spec.evaluation.prompts,
            neutral_prompts=spec.evaluation.neutral_prompts if "kl" in first else (),
            baseline={m: first[f"baseline_{m}"] for m in ("behavior", "nll", "distinct")},
            n=int(first["n"]),
        )

    def failures(self) -> dict[str, str]:
        """Unit name -> error, for the units that failed (they are retried by the next run)."""
        with self.transaction() as con:
            rows = con.execute("SELECT unit, error FROM units WHERE status = 'failed'")
            return {name: error for name, error in rows}

    def vector_path(self, unit: str | Unit) -> Path:
        """Where ``unit``'s vector file is (or will be)."""
        name = unit.name if isinstance(unit, Unit) else unit
        return self.path / VECTORS / f"{name}.safetensors"

    def vector(self, unit: str | Unit) -> SteeringVector:
        """The vector of a finished unit.

        Raises:
            StudyFolderError: the unit has not finished.
        """
        name = unit.name if isinstance(unit, Unit) else unit
        if name not in self.finished():
            raise StudyFolderError(
                f"unit {name!r} has no saved vector in {str(self.path)!r}; run the study "
                "(steerlens study run) to train it, or pick a name from folder.table()."
            )
        return SteeringVector.load(self.vector_path(name))

    # -- writing ----------------------------------------------------------------------------
    def record(self, unit: Unit, result: OptimizeResult) -> None:
        """Save ``unit``'s vector (atomically), then its row (one transaction)."""
        manifest_hash = self.manifest["spec_hash"]
        provenance = dict(result.vector.provenance) | {
            "study": {"unit": unit.name, "spec_hash": manifest_hash}
        }
        vector = dataclasses.replace(result.vector, provenance=provenance)
        path = vector.save(self.vector_path(unit))
        history = result.loss_history
        row = {
            **self._unit_columns(unit),
            "status": "done",
            "initial_loss": float(history[0].sum()),
            "final_loss": float(history[-1].sum()),
            "final_losses": json.dumps(result.final_losses),
            "steps": int(result.steps),
            "stop_reason": result.stop_reason,
            "engine": result.engine,
            "wall_time_s": float(result.wall_time_s),
            "vector_norm": float(vector.norm()),
            "vector_file": str(path.relative_to(self.path)),
        }
        self._write_row(row)

    def record_failure(self, unit: Unit, error: str) -> None:
        """Record that ``unit`` failed with ``error`` (the next run retries it)."""
        self.vector_path(unit).unlink(missing_ok=True)
        self._write_row({**self._unit_columns(unit), "status": "failed", "error": error})

    def record_evaluation(self, unit: Unit, rows: list[dict[str, Any]]) -> None:
        """Save ``unit``'s evaluation rows (dicts with the ``evaluations`` columns but
        ``unit``), replacing any earlier ones, in one transaction."""
        self._replace_unit_rows("evaluations", list(_EVALUATION_COLUMNS), unit, rows)

    def record_steerability(self, unit: Unit, rows: list[dict[str, Any]]) -> None:
        """Save ``unit``'s steerability rows (dicts with the ``steerability`` columns but
        ``unit``), replacing any earlier ones, in one transaction."""
        self._replace_unit_rows("steerability", list(_STEERABILITY_COLUMNS), unit, rows)

    def record_grid(self, rows: list[dict[str, Any]]) -> None:
        """Save the grid's cells (dicts with the ``grid`` columns; ``replies`` a list),
        replacing any earlier grid, in one transaction."""
        names = list(_GRID_COLUMNS)
        values = [
            [
                json.dumps(row.get(k), ensure_ascii=False) if k == "replies" else row.get(k)
                for k in names
            ]
            for row in rows
        ]
        with self.transaction() as con:
            con.execute("DELETE FROM grid")
            _insert(con, "grid", names, values)

    def _replace_unit_rows(
        self, table: str, names: list[str], unit: Unit, rows: list[dict[str, Any]]
    ) -> None:
        """Save ``unit``'s rows of ``table`` (columns ``names``, ``unit`` first), replacing any
        earlier ones, in one transaction."""
        values = [[unit.name, *(row.get(k) for k in names[1:])] for row in rows]
        with self.transaction() as con:
            con.execute(f"DELETE FROM {table} WHERE unit = ?", (unit.name,))
            _insert(con, table, names, values)

    @staticmethod
    def _unit_columns(unit: Unit) -> dict[str, Any]:
        return {
            "unit": unit.name,
            "example_index": unit.example_index,
            "example_name": unit.example_name,
            "layer": unit.layer,
            "seed": unit.seed,
            "objective": unit.objective,
        }

    def _write_row(self, row: dict[str, Any]) -> None:
        full = {k: row.get(k) for k in _COLUMNS} | {"finished_at": _now()}
        names = ", ".join(full)
        marks = ", ".join("?" for _ in full)
        with self.transaction() as con:
            # A unit trained again loses its old evaluation (it was of the old vector), and
            # the grid loses its cells when the unit was one of its sources.
            for table in ("evaluations", "steerability"):
                con.execute(f"DELETE FROM {table} WHERE unit = ?", (full["unit"],))
            con.execute(
                "DELETE FROM grid WHERE EXISTS (SELECT 1 FROM grid WHERE source_unit = ?)",
                (full["unit"],),
            )
            con.execute(
                f"INSERT OR REPLACE INTO units ({names}) VALUES ({marks})", list(full.values())
            )


__all__ = [
    "FORMAT_VERSION",
    "IF_CHANGED",
    "StudyFolder",
    "writer_lock",
]
