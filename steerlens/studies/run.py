"""Running a study: `run_study` trains every pending unit and writes each one as it finishes.

The work (`steerlens.studies.phases`) is done by a backend: `SerialBackend` (in this process,
the default) or `steerlens.studies.ray_backend.RayBackend` (Ray tasks, on one machine or a
cluster). A backend yields ``(unit, outcome)`` pairs, an `OptimizeResult` or the error of a
unit that failed; only this process writes to the study folder, so results are never written twice.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from steerlens import runtime
from steerlens.errors import SpecError, StudyError
from steerlens.steering.vector import SteeringVector
from steerlens.studies.folder import IfChanged, StudyFolder, writer_lock
from steerlens.studies.phases import Backend, PhaseOutcome, grid_sources
from steerlens.studies.serial_backend import SerialBackend
from steerlens.studies.spec import StudySpec, Unit
from steerlens.training.config import OptimizeResult

BACKENDS = ("serial", "ray")


def _backend(backend: str | Backend, device: Any, progress: bool | None) -> Backend:
    if backend == "serial":
        return SerialBackend(device=device, progress=progress)
    if backend == "ray":
        from steerlens.studies.ray_backend import RayBackend

        return RayBackend(device=None if device is None else str(device))
    if isinstance(backend, str) or not callable(getattr(backend, "train", None)):
        raise SpecError(
            f"unknown backend {backend!r}; use 'serial', 'ray', SerialBackend(...) or "
            "RayBackend(...)."
        )
    return backend


def run_study(
    spec: StudySpec | str | Path,
    folder: str | Path,
    *,
    backend: str | Backend = "serial",
    batch_size: int = 16,
    progress: bool | None = None,
    if_changed: IfChanged = "refuse",
    device: Any = None,
    evaluate: bool = True,
) -> StudyFolder:
    """Train every unit of ``spec`` that ``folder`` lacks, saving each as soon as it is done.

    Phases, each resumable: training (re-running the same spec skips finished units), then
    evaluation (the generalization matrix of each vector), steerability (per vector) and the
    grid (once), each skipped where its results are saved. Ctrl-C or a crash keeps every
    finished unit. A unit that fails is recorded with its error (the others go on) and retried
    by the next run.

    Args:
        spec: a `StudySpec` or the path of its TOML file.
        folder: the study folder (created if missing; see `StudyFolder`).
        backend: ``"serial"`` (this process), ``"ray"`` (``pip install steerlens[ray]``;
            a cluster via ``RAY_ADDRESS``), or a `SerialBackend` / ``RayBackend`` object.
        batch_size: the most units trained together in one `optimize_many` call.
        progress: show progress bars over units, and over optimization steps within each
            batch (serial backend); default: in a terminal or a notebook.
        if_changed: when ``folder`` holds another spec's study: ``"refuse"``,
            ``"versioned"`` or ``"overwrite"`` (see `StudyFolder.prepare`).
        device: where the model goes (``"serial"`` and ``"ray"`` backends).
        evaluate: after training, run the evaluation phases: the generalization matrix of
            every vector that lacks it (`evaluate_units`, table ``evaluations``), its
            steerability (`measure_steerability`, table ``steerability``; with
            ``evaluation.steerability_strengths``), then the layer x strength grid
            (`measure_grid`, table ``grid``; with ``[evaluation.grid]``, once every unit is
            trained and evaluated).

    Returns:
        The `StudyFolder` (``.table()`` is a pandas DataFrame of the results).

    Raises:
        StudyFolderError: a folder of another tool, a newer steerlens or another spec.
        LayerError: a layer the model lacks (before any training).
        StudyError: some units failed (the others are saved; re-run to retry them).

    Example:
        >>> import tempfile
        >>> from steerlens.studies.spec import Example, OptimizerSettings
        >>> spec = StudySpec(examples=[Example(prompt="Hi", promote=[" there"])], layers=[0, 1],
        ...                  model="tiny", optimizer=OptimizerSettings(lr=0.1, max_steps=3))
        >>> study = run_study(spec, tempfile.mkdtemp() + "/study", progress=False)
        >>> study.table()[["unit", "status", "steps"]].values.tolist()
        [['ex0-L0-s0-promotion', 'done', 3], ['ex0-L1-s0-promotion', 'done', 3]]
    """
    if not isinstance(spec, StudySpec):
        spec = StudySpec.from_toml(spec)
    runtime.check_batch_size(batch_size)
    worker = _backend(backend, device, progress)
    # One run at a time per folder: a second one would delete the first's temporary files.
    with writer_lock(folder):
        return _run(folder, spec, worker, if_changed, evaluate, batch_size, progress)


def _run(
    folder: str | Path,
    spec: StudySpec,
    worker: Backend,
    if_changed: IfChanged,
    evaluate: bool,
    batch_size: int,
    progress: bool | None,
) -> StudyFolder:
    """`run_study`'s phases, with the folder's writer lock held."""
    study = StudyFolder.prepare(folder, spec, if_changed=if_changed)
    units = spec.units()
    finished = study.finished()
    pending = [u for u in units if u.name not in finished]
    if pending:
        with _bar(len(units), len(units) - len(pending), "study", progress) as bar:
            for unit, outcome in worker.train(spec, pending, batch_size):
                if isinstance(outcome, OptimizeResult):
                    study.record(unit, outcome)
                else:
                    study.record_failure(unit, outcome)
                bar.update(1)
    eval_failures: dict[str, str] = {}
    if evaluate and spec.evaluates:
        eval_failures = _per_vector_phase(
            study,
            units,
            study.evaluated(),
            "evaluate",
            progress,
            lambda items: worker.evaluate(spec, items, batch_size),
            study.record_evaluation,
        )
    steer_failures: dict[str, str] = {}
    if evaluate and spec.measures_steerability:
        steer_failures = _per_vector_phase(
            study,
            units,
            study.steerability_measured(),
            "steerability",
            progress,
            lambda items: worker.steerability(spec, items, batch_size),
            study.record_steerability,
        )
    grid_failure = None
    if evaluate and spec.evaluation.grid is not None and not study.has_grid():
        names = {u.name for u in units}
        matrix = study.matrix()
        # Only once every unit is trained and evaluated: the sources are then final.
        if matrix is not None and study.finished() == names and set(matrix.vectors) == names:
            sources = {
                layer: (next(u for u in units if u.name == name), study.vector(name))
                for layer, name in grid_sources(spec, matrix).items()
            }
            with _bar(1, 0, "grid", progress) as bar:
                cells = worker.grid(spec, sources, batch_size)
                if isinstance(cells, str):
                    grid_failure = cells
                else:
                    study.record_grid(cells)
                bar.update(1)
    failures = study.failures()
    if failures:
        raise _rerun_error(
            f"{len(failures)} of {len(units)} units failed ({_first(failures)})",
            f"the {len(units) - len(failures)} finished units are",
            study.path,
            "retries only the failed units",
        )
    if eval_failures:
        raise _rerun_error(
            f"evaluating {len(eval_failures)} unit(s) failed ({_first(eval_failures)})",
            "every trained vector and the other evaluations are",
            study.path,
            "redoes only the missing evaluations",
            fix=" (the judge, the evaluation prompts)",
        )
    if steer_failures:
        raise _rerun_error(
            f"measuring the steerability of {len(steer_failures)} unit(s) failed "
            f"({_first(steer_failures)})",
            "every trained vector and the other results are",
            study.path,
            "redoes only the missing steerability",
            fix=" (evaluation.steerability_strengths, the examples)",
        )
    if grid_failure is not None:
        raise _rerun_error(
            f"the layer x strength grid failed ({grid_failure})",
            "every other result is",
            study.path,
            "redoes only the grid",
            fix=" ([evaluation.grid], the judge, the evaluation prompts)",
        )
    return study


def _first(failures: dict[str, str]) -> str:
    """The first failed unit and its error, as the run's error names it."""
    name, error = next(iter(failures.items()))
    return f"first: unit {name!r}: {error}"


def _rerun_error(failed: str, kept: str, path: Path, redo: str, *, fix: str = "") -> StudyError:
    """The error that ends a run part of whose work failed: what failed, that ``kept`` is
    saved in the folder, where to look for the cause, and what running the study again does."""
    return StudyError(
        f"{failed}; {kept} saved in {str(path)!r}. Fix the cause{fix} and run the study "
        f"again: it {redo}."
    )


def _per_vector_phase(
    study: StudyFolder,
    units: Sequence[Unit],
    done: set[str],
    desc: str,
    progress: bool | None,
    run: Callable[[list[tuple[Unit, SteeringVector]]], Iterator[tuple[Unit, PhaseOutcome]]],
    record: Callable[[Unit, list[dict[str, Any]]], None],
) -> dict[str, str]:
    """Run one per-vector phase on the trained units not yet in ``done``, recording each
    unit's rows as they come; the one-line errors of the units that failed."""
    finished = study.finished()
    todo = [u for u in units if u.name in finished and u.name not in done]
    failures: dict[str, str] = {}
    if not todo:
        return failures
    items = [(u, study.vector(u)) for u in todo]
    with _bar(len(finished), len(finished) - len(todo), desc, progress) as bar:
        for unit, rows in run(items):
            if isinstance(rows, str):
                failures[unit.name] = rows
            else:
                record(unit, rows)
            bar.update(1)
    return failures


@contextlib.contextmanager
def _bar(total: int, done: int, desc: str, enabled: bool | None) -> Iterator[Any]:
    bar = runtime.progress(total, desc, enabled)
    bar.update(done)
    try:
        yield bar
    finally:
        bar.close()


__all__ = ["BACKENDS", "Backend", "SerialBackend", "run_study"]
