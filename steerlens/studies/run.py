"""Running a study: `run_study` trains every pending unit and writes each one as it finishes.

The work is done by a backend: `SerialBackend` (in this process, the default) or
`steerlens.studies.ray_backend.RayBackend` (Ray tasks, on one machine or a cluster). A
backend yields ``(unit, outcome)`` pairs, an `OptimizeResult` or the error of a unit that
failed; only this process writes to the study folder, so results are never written twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from steerlens import runtime
from steerlens.data import Datapoint
from steerlens.errors import SpecError, StudyError
from steerlens.optimize import OptimizeResult
from steerlens.optimize_many import Job, optimize_many
from steerlens.studies.folder import IfChanged, StudyFolder
from steerlens.studies.spec import StudySpec, Unit, load_study_model
from steerlens.vector import SteeringVector

Outcome = OptimizeResult | str
"""What training one unit gave: its result, or the one-line error it failed with."""

BACKENDS = ("serial", "ray")


class Backend(Protocol):
    """Trains and evaluates units; yields each unit's outcome as soon as it is known (in any
    order)."""

    def train(
        self, spec: StudySpec, units: Sequence[Unit], batch_size: int
    ) -> Iterator[tuple[Unit, Outcome]]: ...

    def evaluate(
        self, spec: StudySpec, items: Sequence[tuple[Unit, SteeringVector]], batch_size: int
    ) -> Iterator[tuple[Unit, EvaluationOutcome]]: ...


def describe_error(exc: BaseException) -> str:
    """One line naming an exception's type and message.

    Example:
        >>> describe_error(ValueError("bad\\nvalue"))
        'ValueError: bad value'
    """
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def train_units(model: Any, spec: StudySpec, units: Sequence[Unit]) -> list[Outcome]:
    """Train ``units`` on ``model`` in one `optimize_many` call; the outcomes in unit order.

    When the batch fails, each unit is trained alone, so that one unit's error is recorded
    against that unit only (a ``KeyboardInterrupt`` is not caught).

    Example:
        >>> from steerlens.studies.spec import Example, OptimizerSettings
        >>> spec = StudySpec(examples=[Example(prompt="Hi", promote=[" there"])], layers=[1],
        ...                  model="tiny", optimizer=OptimizerSettings(max_steps=2))
        >>> [r.steps for r in train_units(load_study_model("tiny"), spec, spec.units())]
        [2]
    """

    def jobs(batch: Sequence[Unit]) -> list[Job]:
        return [
            Job(datapoints=spec.datapoint(model, u), layer=u.layer, config=spec.config(u))
            for u in batch
        ]

    try:
        results: list[Outcome] = list(optimize_many(model, jobs(units), progress=False))
    except Exception as exc:
        if len(units) == 1:
            return [describe_error(exc)]
        results = []
        for unit in units:
            try:
                results += optimize_many(model, jobs([unit]), progress=False)
            except Exception as unit_exc:
                results.append(describe_error(unit_exc))
    if len(results) != len(units):
        raise StudyError(  # pragma: no cover - a broken optimize_many
            f"optimize_many returned {len(results)} results for {len(units)} jobs."
        )
    return results


EvaluationOutcome = list[dict[str, Any]] | str
"""What evaluating one vector gave: its matrix rows, or the one-line error it failed with."""


def evaluate_units(
    model: Any,
    spec: StudySpec,
    items: Sequence[tuple[Unit, SteeringVector]],
    *,
    batch_size: int = 16,
) -> list[EvaluationOutcome]:
    """The generalization-matrix rows of each vector (one
    `steerlens.studies.matrix.generalization_matrix` call for all of them), in item order.

    Every vector is applied to every example prompt with promote completions (log-prob
    change), to the spec's held-out prompts (judged) and to its neutral prompts (side-effect
    KL). When the call fails, each vector is evaluated alone, so one vector's error (a judge
    that raises on its reply) is reported against that unit only.

    Example:
        >>> from steerlens.studies.spec import Example, OptimizerSettings
        >>> spec = StudySpec(examples=[Example(prompt="Hi", promote=[" there"])], layers=[1],
        ...                  model="tiny", optimizer=OptimizerSettings(max_steps=2))
        >>> model = load_study_model("tiny")
        >>> unit = spec.units()[0]
        >>> [result] = train_units(model, spec, [unit])
        >>> rows = evaluate_units(model, spec, [(unit, result.vector)])[0]
        >>> [(r["prompt"], r["own"]) for r in rows]
        [('Hi', True)]
    """
    from steerlens.studies.matrix import generalization_matrix

    ev = spec.evaluation
    examples = [
        Datapoint(spec.prompt(model, ex.prompt), promote=ex.promote)
        for ex in spec.examples
        if ex.promote
    ]
    held_out = [spec.prompt(model, p) for p in ev.prompts]
    neutral = [spec.prompt(model, p) for p in ev.neutral_prompts]

    def rows(batch: Sequence[tuple[Unit, SteeringVector]]) -> list[EvaluationOutcome]:
        matrix = generalization_matrix(
            model,
            {unit.name: vector for unit, vector in batch},
            examples,
            held_out=held_out or None,
            judge=None if ev.judge is None else ev.judge.build(),
            neutral_prompts=neutral or None,
            trained_on={
                unit.name: spec.prompt(model, spec.examples[unit.example_index].prompt)
                for unit, _ in batch
            },
            strength=ev.strength,
            max_new_tokens=ev.max_new_tokens,
            batch_size=batch_size,
            progress=False,
        )
        n = len(matrix.prompts)
        plain = [dataclasses.asdict(r) for r in matrix.rows]
        return [
            [row | {"prompt_index": p} for p, row in enumerate(plain[v * n : (v + 1) * n])]
            for v in range(len(batch))
        ]

    try:
        return rows(items)
    except Exception as exc:
        if len(items) == 1:
            return [describe_error(exc)]
    outcomes: list[EvaluationOutcome] = []
    for item in items:
        try:
            outcomes += rows([item])
        except Exception as exc:
            outcomes.append(describe_error(exc))
    return outcomes


@dataclass(frozen=True, kw_only=True)
class SerialBackend:
    """Train in this process, ``batch_size`` units per `optimize_many` call.

    Attributes:
        device: where the model goes (default: CUDA when available, else the CPU).
        model: an already-built model to use instead of building the spec's (it must be the
            model the spec names).
    """

    device: Any = None
    model: Any = None
    _built: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def _model(self, spec: StudySpec) -> Any:
        if self.model is not None:
            return self.model
        if spec.model not in self._built:  # built once, for training and evaluation
            self._built.clear()
            self._built[spec.model] = load_study_model(spec.model, device=self.device)
        return self._built[spec.model]

    def train(
        self, spec: StudySpec, units: Sequence[Unit], batch_size: int
    ) -> Iterator[tuple[Unit, Outcome]]:
        model = self._model(spec)
        spec.check_layers(runtime.n_layers(model))
        for batch in runtime.chunks(len(units), batch_size):
            chunk = [units[i] for i in batch]
            yield from zip(chunk, train_units(model, spec, chunk), strict=True)

    def evaluate(
        self, spec: StudySpec, items: Sequence[tuple[Unit, SteeringVector]], batch_size: int
    ) -> Iterator[tuple[Unit, EvaluationOutcome]]:
        model = self._model(spec)
        for batch in runtime.chunks(len(items), batch_size):
            chunk = [items[i] for i in batch]
            outcomes = evaluate_units(model, spec, chunk, batch_size=batch_size)
            yield from zip([u for u, _ in chunk], outcomes, strict=True)


def _backend(backend: str | Backend, device: Any) -> Backend:
    if backend == "serial":
        return SerialBackend(device=device)
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

    Two phases, each resumable: training (re-running the same spec skips finished units),
    then evaluation (the generalization matrix of each vector, skipped for vectors already
    evaluated). Ctrl-C or a crash keeps every finished unit. A unit that fails is recorded
    with its error (the others go on) and retried by the next run.

    Args:
        spec: a `StudySpec` or the path of its TOML file.
        folder: the study folder (created if missing; see `StudyFolder`).
        backend: ``"serial"`` (this process), ``"ray"`` (``pip install steerlens[ray]``;
            a cluster via ``RAY_ADDRESS``), or a `SerialBackend` / ``RayBackend`` object.
        batch_size: the most units trained together in one `optimize_many` call.
        progress: show a progress bar over units (default: in a terminal or a notebook).
        if_changed: when ``folder`` holds another spec's study: ``"refuse"``,
            ``"versioned"`` or ``"overwrite"`` (see `StudyFolder.prepare`).
        device: where the model goes (``"serial"`` and ``"ray"`` backends).
        evaluate: after training, compute the generalization matrix of every vector that
            lacks it (`evaluate_units`), stored in the folder's ``evaluations`` table.

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
    worker = _backend(backend, device)
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
        finished, evaluated = study.finished(), study.evaluated()
        todo = [u for u in units if u.name in finished and u.name not in evaluated]
        if todo:
            items = [(u, study.vector(u)) for u in todo]
            with _bar(len(finished), len(finished) - len(todo), "evaluate", progress) as bar:
                for unit, rows in worker.evaluate(spec, items, batch_size):
                    if isinstance(rows, str):
                        eval_failures[unit.name] = rows
                    else:
                        study.record_evaluation(unit, rows)
                    bar.update(1)
    failures = study.failures()
    if failures:
        first, error = next(iter(failures.items()))
        raise StudyError(
            f"{len(failures)} of {len(units)} units failed (first: unit {first!r}: {error}); "
            f"the {len(units) - len(failures)} finished units are saved in {str(study.path)!r}. "
            "Fix the cause and run the study again: it retries only the failed units."
        )
    if eval_failures:
        first, error = next(iter(eval_failures.items()))
        raise StudyError(
            f"evaluating {len(eval_failures)} unit(s) failed (first: unit {first!r}: {error}); "
            f"every trained vector and the other evaluations are saved in {str(study.path)!r}. "
            "Fix the cause (the judge, the evaluation prompts) and run the study again: it "
            "redoes only the missing evaluations."
        )
    return study


@contextlib.contextmanager
def _bar(total: int, done: int, desc: str, enabled: bool | None) -> Iterator[Any]:
    bar = runtime.progress(total, desc, enabled)
    bar.update(done)
    try:
        yield bar
    finally:
        bar.close()


__all__ = [
    "BACKENDS",
    "Backend",
    "SerialBackend",
    "describe_error",
    "evaluate_units",
    "run_study",
    "train_units",
]
