"""Running a study: `run_study` trains every pending unit and writes each one as it finishes.

The work is done by a backend: `SerialBackend` (in this process, the default) or
`steerlens.studies.ray_backend.RayBackend` (Ray tasks, on one machine or a cluster). A
backend yields ``(unit, outcome)`` pairs, an `OptimizeResult` or the error of a unit that
failed; only this process writes to the study folder, so results are never written twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from steerlens import runtime
from steerlens.data import Datapoint
from steerlens.errors import SpecError, StudyError
from steerlens.optimize import OptimizeResult
from steerlens.optimize_many import Job, optimize_many
from steerlens.studies.folder import IfChanged, StudyFolder
from steerlens.studies.spec import StudySpec, Unit, load_study_model
from steerlens.vector import SteeringVector

if TYPE_CHECKING:
    from steerlens.studies.matrix import GeneralizationMatrix

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
    ) -> Iterator[tuple[Unit, PhaseOutcome]]: ...

    def steerability(
        self, spec: StudySpec, items: Sequence[tuple[Unit, SteeringVector]], batch_size: int
    ) -> Iterator[tuple[Unit, PhaseOutcome]]: ...

    def grid(
        self, spec: StudySpec, sources: Mapping[int, tuple[Unit, SteeringVector]], batch_size: int
    ) -> PhaseOutcome: ...


def describe_error(exc: BaseException) -> str:
    """One line naming an exception's type and message.

    Example:
        >>> describe_error(ValueError("bad\\nvalue"))
        'ValueError: bad value'
    """
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def train_units(
    model: Any, spec: StudySpec, units: Sequence[Unit], *, progress: bool | None = False
) -> list[Outcome]:
    """Train ``units`` on ``model`` in one `optimize_many` call (``progress``: its bar over
    the vectors' steps); the outcomes in unit order.

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
        results: list[Outcome] = list(optimize_many(model, jobs(units), progress=progress))
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


PhaseOutcome = list[dict[str, Any]] | str
"""What one per-vector phase gave for a vector (evaluation: its matrix rows; steerability: its
table rows; the grid: its cells), or the one-line error it failed with."""


def evaluate_units(
    model: Any,
    spec: StudySpec,
    items: Sequence[tuple[Unit, SteeringVector]],
    *,
    batch_size: int = 16,
) -> list[PhaseOutcome]:
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

    def rows(batch: Sequence[tuple[Unit, SteeringVector]]) -> list[PhaseOutcome]:
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
    outcomes: list[PhaseOutcome] = []
    for item in items:
        try:
            outcomes += rows([item])
        except Exception as exc:
            outcomes.append(describe_error(exc))
    return outcomes


def measure_steerability(
    model: Any,
    spec: StudySpec,
    items: Sequence[tuple[Unit, SteeringVector]],
    *,
    batch_size: int = 16,
) -> list[PhaseOutcome]:
    """The steerability rows of each vector, in item order: one
    `steerlens.studies.steerability.steerability` call per vector, at the spec's
    ``evaluation.steerability_strengths``, on every example prompt with promote completions
    (`StudySpec.steerability_examples`). One row per prompt x multiplier: ``prompt_index``,
    ``prompt``, ``strength_index``, ``strength``, ``effect``, the prompt's ``slope`` and its
    ``unsteered_logprob``. A vector whose call fails gets its one-line error instead.

    Example:
        >>> from steerlens.studies.spec import Example, OptimizerSettings
        >>> spec = StudySpec(examples=[Example(prompt="Hi", promote=[" there"])], layers=[1],
        ...                  model="tiny", optimizer=OptimizerSettings(max_steps=2))
        >>> model = load_study_model("tiny")
        >>> unit = spec.units()[0]
        >>> [result] = train_units(model, spec, [unit])
        >>> rows = measure_steerability(model, spec, [(unit, result.vector)])[0]
        >>> [(r["prompt"], r["strength"]) for r in rows]
        [('Hi', -1.0), ('Hi', 0.0), ('Hi', 1.0), ('Hi', 2.0)]
    """
    from steerlens.studies.steerability import steerability

    examples = spec.steerability_examples(model)
    outcomes: list[PhaseOutcome] = []
    for _, vector in items:
        try:
            result = steerability(
                model,
                vector,
                examples,
                strengths=spec.evaluation.steerability_strengths,
                batch_size=batch_size,
                progress=False,
            )
        except Exception as exc:
            outcomes.append(describe_error(exc))
            continue
        strengths = result.strengths.tolist()
        outcomes.append(
            [
                {
                    "prompt_index": p,
                    "prompt": prompt,
                    "strength_index": k,
                    "strength": strength,
                    "effect": float(result.effects[p, k]),
                    "slope": float(result.slopes[p]),
                    "unsteered_logprob": float(result.unsteered_logprob[p]),
                }
                for p, prompt in enumerate(result.prompts)
                for k, strength in enumerate(strengths)
            ]
        )
    return outcomes


def grid_sources(spec: StudySpec, matrix: GeneralizationMatrix) -> dict[int, str]:
    """Layer -> the unit whose vector the grid applies there: of the units trained at that
    layer, the one that transfers best by ``matrix.ranking()`` (mean target log-prob change on
    the prompts it was not trained on). With a single example no vector has other prompts;
    then the layer's first unit is used.

    Example:
        >>> import torch
        >>> from steerlens.studies.matrix import GeneralizationMatrix
        >>> from steerlens.studies.spec import Example
        >>> spec = StudySpec(examples=[Example(prompt="a", promote=" b"),
        ...                            Example(prompt="c", promote=" d")], layers=[1],
        ...                  model="tiny")
        >>> rows = [dict(vector=v, prompt=p, kind="example", own=v[:3] == e,
        ...              logprob_change=x, judged=None, reply=None, side_effect_kl=None)
        ...         for v, e in (("ex0-L1-s0-promotion", "ex0"), ("ex1-L1-s0-promotion", "ex1"))
        ...         for p, x in (("a", 1.0), ("c", 2.0 if e == "ex0" else 0.5))]
        >>> grid_sources(spec, GeneralizationMatrix.from_rows(rows))
        {1: 'ex0-L1-s0-promotion'}
    """
    ranked = [name for name, _ in matrix.ranking()]
    rank = {name: i for i, name in enumerate(ranked)}
    sources = {}
    for layer in spec.layers:
        mine = [u.name for u in spec.units() if u.layer == layer and u.name in rank]
        if mine:
            sources[layer] = min(mine, key=rank.__getitem__)
    return sources


def measure_grid(
    model: Any,
    spec: StudySpec,
    sources: Mapping[int, tuple[Unit, SteeringVector]],
    *,
    batch_size: int = 16,
) -> PhaseOutcome:
    """The grid rows of the study: `steerlens.studies.grid.layer_strength_grid` over the
    ``sources``' layers (each applying its unit's vector) at ``evaluation.grid.strengths``,
    on the held-out prompts with the judge (and the neutral prompts for the KL). One row per
    (layer, strength): `GridResult.to_rows`'s columns with the ``source_unit``, the
    ``replies``, the unsteered ``baseline_*`` and ``n``; or the one-line error it failed with.
    """
    from steerlens.studies.grid import layer_strength_grid

    ev, settings = spec.evaluation, spec.evaluation.grid
    if settings is None or ev.judge is None:
        raise SpecError(  # pragma: no cover - the runner asks only when a grid is configured
            "the spec has no [evaluation.grid] (or no judge); add one to measure the grid."
        )
    try:
        result = layer_strength_grid(
            model,
            {layer: vector for layer, (_, vector) in sources.items()},
            layers=sorted(sources),
            strengths=settings.strengths,
            prompts=ev.prompts,
            judge=ev.judge.build(),
            neutral_prompts=ev.neutral_prompts or None,
            max_new_tokens=settings.max_new_tokens or ev.max_new_tokens,
            chat=spec.chat,
            batch_size=batch_size,
            progress=False,
        )
    except Exception as exc:
        return describe_error(exc)
    base = {f"baseline_{k}": v for k, v in result.baseline.items()}
    rows = []
    for row in result.to_rows():
        i = result.layers.index(row["layer"])
        j = result.strengths.index(row["strength"])
        rows.append(
            row
            | base
            | {
                "source_unit": sources[row["layer"]][0].name,
                "replies": list(result.replies[i][j]),
                "n": result.n,
            }
        )
    return rows


@dataclass(frozen=True, kw_only=True)
class SerialBackend:
    """Train in this process, ``batch_size`` units per `optimize_many` call.

    Attributes:
        device: where the model goes (default: CUDA when available, else the CPU).
        model: an already-built model to use instead of building the spec's (it must be the
            model the spec names).
        progress: a bar over each batch's optimization steps (under the bar over units).
    """

    device: Any = None
    model: Any = None
    progress: bool | None = False
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
            outcomes = train_units(model, spec, chunk, progress=self.progress)
            yield from zip(chunk, outcomes, strict=True)

    def evaluate(
        self, spec: StudySpec, items: Sequence[tuple[Unit, SteeringVector]], batch_size: int
    ) -> Iterator[tuple[Unit, PhaseOutcome]]:
        model = self._model(spec)
        for batch in runtime.chunks(len(items), batch_size):
            chunk = [items[i] for i in batch]
            outcomes = evaluate_units(model, spec, chunk, batch_size=batch_size)
            yield from zip([u for u, _ in chunk], outcomes, strict=True)

    def steerability(
        self, spec: StudySpec, items: Sequence[tuple[Unit, SteeringVector]], batch_size: int
    ) -> Iterator[tuple[Unit, PhaseOutcome]]:
        model = self._model(spec)
        for item in items:
            yield item[0], measure_steerability(model, spec, [item], batch_size=batch_size)[0]

    def grid(
        self, spec: StudySpec, sources: Mapping[int, tuple[Unit, SteeringVector]], batch_size: int
    ) -> PhaseOutcome:
        return measure_grid(self._model(spec), spec, sources, batch_size=batch_size)


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
    if steer_failures:
        first, error = next(iter(steer_failures.items()))
        raise StudyError(
            f"measuring the steerability of {len(steer_failures)} unit(s) failed (first: unit "
            f"{first!r}: {error}); every trained vector and the other results are saved in "
            f"{str(study.path)!r}. Fix the cause (evaluation.steerability_strengths, the "
            "examples) and run the study again: it redoes only the missing steerability."
        )
    if grid_failure is not None:
        raise StudyError(
            f"the layer x strength grid failed ({grid_failure}); every other result is saved "
            f"in {str(study.path)!r}. Fix the cause ([evaluation.grid], the judge, the "
            "evaluation prompts) and run the study again: it redoes only the grid."
        )
    return study


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


__all__ = [
    "BACKENDS",
    "Backend",
    "SerialBackend",
    "describe_error",
    "evaluate_units",
    "grid_sources",
    "measure_grid",
    "measure_steerability",
    "run_study",
    "train_units",
]
