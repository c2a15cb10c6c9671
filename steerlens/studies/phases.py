"""The work of a study's phases, shared by every backend: training units, evaluating their
vectors (the generalization matrix), steerability and the layer x strength grid. Each returns
plain rows (or a one-line error) for the runner to write; none touches the study folder."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from steerlens.errors import SpecError, StudyError, describe_error
from steerlens.steering.vector import SteeringVector
from steerlens.studies.spec import StudySpec, Unit
from steerlens.training.config import OptimizeResult
from steerlens.training.data import Datapoint
from steerlens.training.loop import Job, optimize_many

if TYPE_CHECKING:
    from steerlens.studies.matrix import GeneralizationMatrix

Outcome = OptimizeResult | str
"""What training one unit gave: its result, or the one-line error it failed with."""

_Item = TypeVar("_Item")
_Out = TypeVar("_Out")


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


def train_units(
    model: Any, spec: StudySpec, units: Sequence[Unit], *, progress: bool | None = False
) -> list[Outcome]:
    """Train ``units`` on ``model`` in one `optimize_many` call (``progress``: its bar over
    the vectors' steps); the outcomes in unit order.

    When the batch fails, each unit is trained alone, so that one unit's error is recorded
    against that unit only (a ``KeyboardInterrupt`` is not caught).

    Example:
        >>> from steerlens.studies.spec import Example, OptimizerSettings, load_study_model
        >>> spec = StudySpec(examples=[Example(prompt="Hi", promote=[" there"])], layers=[1],
        ...                  model="tiny", optimizer=OptimizerSettings(max_steps=2), chat=False)
        >>> [r.steps for r in train_units(load_study_model("tiny"), spec, spec.units())]
        [2]
    """

    def jobs(batch: Sequence[Unit]) -> list[Job]:
        return [
            Job(datapoints=spec.datapoint(model, u), layer=u.layer, config=spec.config(u))
            for u in batch
        ]

    results: list[Outcome] = _together_else_alone(
        units,
        lambda: optimize_many(model, jobs(units), progress=progress),
        lambda unit: optimize_many(model, jobs([unit]), progress=False),
    )
    if len(results) != len(units):
        raise StudyError(  # pragma: no cover - a broken optimize_many
            f"optimize_many returned {len(results)} results for {len(units)} jobs."
        )
    return results


def _together_else_alone(
    items: Sequence[_Item],
    together: Callable[[], Iterable[_Out]],
    alone: Callable[[_Item], Iterable[_Out]],
) -> list[_Out | str]:
    """``together()``'s outcomes, one per item; when it raises, each item's ``alone(item)``
    instead, an item whose call raises getting its one-line error, so that one item's error is
    reported against that item only (a ``KeyboardInterrupt`` is not caught)."""
    try:
        return list(together())
    except Exception as exc:
        if len(items) == 1:
            return [describe_error(exc)]
    outcomes: list[_Out | str] = []
    for item in items:
        try:
            outcomes += alone(item)
        except Exception as exc:
            outcomes.append(describe_error(exc))
    return outcomes


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
        >>> from steerlens.studies.spec import Example, OptimizerSettings, load_study_model
        >>> spec = StudySpec(examples=[Example(prompt="Hi", promote=[" there"])], layers=[1],
        ...                  model="tiny", optimizer=OptimizerSettings(max_steps=2), chat=False)
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
        Datapoint(spec.prompt(model, ex.prompt), promote=ex.promote, chat=False)
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

    return _together_else_alone(items, lambda: rows(items), lambda item: rows([item]))


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
    (`StudySpec.steerability_examples`), with each multiplier's side-effect KL on the spec's
    neutral prompts (or steerability's own, when it has none) for the coherence budget. One
    row per prompt x multiplier: ``prompt_index``, ``prompt``, ``strength_index``,
    ``strength``, ``effect``, the prompt's ``slope``, its ``unsteered_logprob`` and the
    multiplier's ``kl``. A vector whose call fails gets its one-line error instead.

    Example:
        >>> from steerlens.studies.spec import Example, OptimizerSettings, load_study_model
        >>> spec = StudySpec(examples=[Example(prompt="Hi", promote=[" there"])], layers=[1],
        ...                  model="tiny", optimizer=OptimizerSettings(max_steps=2), chat=False)
        >>> model = load_study_model("tiny")
        >>> unit = spec.units()[0]
        >>> [result] = train_units(model, spec, [unit])
        >>> rows = measure_steerability(model, spec, [(unit, result.vector)])[0]
        >>> [(r["prompt"], r["strength"]) for r in rows]
        [('Hi', -1.0), ('Hi', 0.0), ('Hi', 1.0), ('Hi', 2.0)]
    """
    from steerlens.studies.bench.settings import NEUTRAL_PROMPTS
    from steerlens.studies.steerability import steerability

    examples = spec.steerability_examples(model)
    neutral = [spec.prompt(model, p) for p in spec.evaluation.neutral_prompts or NEUTRAL_PROMPTS]
    outcomes: list[PhaseOutcome] = []
    for _, vector in items:
        try:
            result = steerability(
                model,
                vector,
                examples,
                strengths=spec.evaluation.steerability_strengths,
                neutral_prompts=neutral,
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
                    "kl": None if result.kl is None else float(result.kl[k]),
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
