"""The benchmark's work for one behaviour: every layer's cell, on one model, with what the
run's cells share (`shared_for`). The serial run calls `behaviour_cells` in turn; the Ray
backend calls it once per behaviour in a worker (`steerlens.studies.bench.ray_cells`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from steerlens import runtime
from steerlens.datasets import Behaviour, OpenEndedBehaviour, load_behaviour
from steerlens.studies.bench.cells import CellRun, Shared
from steerlens.studies.bench.methods import ABPrompts, Method, answer_positions
from steerlens.studies.bench.open_ended import OpenCellRun, open_positions
from steerlens.studies.bench.results import CellResult
from steerlens.studies.bench.settings import BenchSettings

Data = Sequence[Behaviour | OpenEndedBehaviour]


def shared_for(model: Any, data: Data, layers: Sequence[int], settings: BenchSettings) -> Shared:
    """What every cell of a run on ``model`` shares: the answer position rule, the neutral
    prompts, and the A/B prompt sets (each A/B behaviour's test items and MMLU's)."""
    mmlu = load_behaviour("mmlu")
    # Each behaviour's test items serve its own steerability and, their first ones, the other
    # behaviours' entanglement; MMLU's only the latter.
    n_test = max(settings.test_items, settings.entanglement_items)
    sets = {b.name: ABPrompts.of(model, b.test[:n_test]) for b in data if isinstance(b, Behaviour)}
    sets["mmlu"] = ABPrompts.of(model, mmlu.test[: settings.entanglement_items])
    return Shared(
        model,
        answer_positions(model),
        tuple(layers),
        runtime.format_prompts(model, list(settings.neutral_prompts), chat=True),
        sets,
        tuple(sets),
        settings.batch_size,
    )


def behaviour_cells(
    shared: Shared,
    behaviour: Behaviour | OpenEndedBehaviour,
    layers: Sequence[int],
    methods: Sequence[Method],
    settings: BenchSettings,
    progress: bool | None,
    done: Callable[[CellResult], Any] | None = None,
) -> list[CellResult]:
    """The behaviour's cell at each of ``layers`` (``done`` is called with each as it
    finishes); the behaviour's validation prompts are forgotten afterwards."""
    cells = []
    for layer in layers:
        cell: CellRun
        if isinstance(behaviour, OpenEndedBehaviour):
            where = open_positions(behaviour)
            cell = OpenCellRun(shared.model, behaviour, layer, where, settings, shared, progress)
        else:
            cell = CellRun(
                shared.model, behaviour, layer, shared.positions, settings, shared, progress
            )
        result = cell.run(methods)
        if done is not None:
            done(result)
        cells.append(result)
    shared.drop(f"{behaviour.name} validation")  # only this behaviour's cells use it
    return cells


__all__ = ["behaviour_cells", "shared_for"]
