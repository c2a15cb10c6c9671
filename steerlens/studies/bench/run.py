"""`benchmark`: one-shot vs contrastive steering vectors, at equal cost, on A/B behaviour data.

For each layer and behaviour, every method builds its vectors from the behaviour's training
items. Each vector is then brought to equal cost: its multiplier is the one at which the 95th
percentile of the per-token KL(steered || unsteered), over the unsteered model's greedy
rollouts on neutral prompts, reaches the budget (1 nat by default). On the test items (both
letter orders) the benchmark scores the propensity log p(matching letter) - log p(other
letter) over a symmetric grid of multipliers inside that range, all vectors and multipliers
in shared batches, and reports Tan et al.'s steerability, the behaviour rate and SteeringSafety
effectiveness at the equal-cost multiplier, and entanglement (the RMS change of the behaviour
rate on the other behaviours and on MMLU items). docs/benchmark.md defines every
metric and cites its source.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from steerlens import runtime
from steerlens.datasets import (
    Behaviour,
    OpenEndedBehaviour,
    bundled_open_ended,
    load_behaviour,
    load_open_ended,
)
from steerlens.errors import SpecError
from steerlens.io.lock import writer_lock
from steerlens.studies.bench.cells import Shared
from steerlens.studies.bench.folder import BenchFolder
from steerlens.studies.bench.methods import (
    Method,
    default_methods,
)
from steerlens.studies.bench.ray_cells import RayCells
from steerlens.studies.bench.results import BenchResult, CellResult
from steerlens.studies.bench.settings import (
    DEFAULT_BEHAVIOURS,
    LAYER_FRACTIONS,
    BenchSettings,
)
from steerlens.studies.bench.steps import behaviour_cells, shared_for


def benchmark(
    model: Any,
    behaviours: Sequence[str | Behaviour | OpenEndedBehaviour] = DEFAULT_BEHAVIOURS,
    methods: Sequence[Method] | None = None,
    layers: Sequence[int] | None = None,
    settings: BenchSettings | None = None,
    *,
    folder: str | Path | None = None,
    progress: bool | None = None,
    backend: RayCells | None = None,
) -> BenchResult:
    """One-shot vs contrastive vectors, at equal cost, on A/B behaviour data.

    Args:
        model: a TransformerLens model with a chat template.
        behaviours: bundled names (A/B: `steerlens.datasets.bundled_behaviours`;
            open-ended: `steerlens.datasets.bundled_open_ended`), or `Behaviour` and
            `OpenEndedBehaviour` objects from your own files
            (`steerlens.datasets.load_behaviour`, `steerlens.datasets.load_open_ended`).
        methods: the entries to compare (default: `default_methods`); best-of-E is added
            when the single-example one-shot method is among them.
        layers: the layers to steer at (default: `default_layers`, a quarter and half of the
            way up).
        settings: a `BenchSettings`.
        folder: a folder to write each (behaviour, layer) cell to as it finishes; run again
            with the same arguments, it reads the finished cells and runs only the rest.
        progress: print one line per phase.
        backend: `RayCells` to run each behaviour as a Ray task (default: in this process,
            one behaviour after another).

    Returns:
        A `BenchResult`.

    Example:
        >>> from steerlens.datasets import ABItem, Behaviour
        >>> from steerlens.testing import tiny_model
        >>> from steerlens.studies.bench.methods import CAA, RandomDirection
        >>> def items(tag, n):
        ...     return tuple(ABItem(f"{tag} {i}?", "yes", "no", "AB"[i % 2]) for i in range(n))
        >>> toy = Behaviour("toy", train=items("train", 4), test=items("test", 2))
        >>> s = BenchSettings(test_items=2, examples=2, entanglement_items=2, rollout_tokens=2,
        ...                   bootstrap=10, neutral_prompts=("Hi",))
        >>> r = benchmark(tiny_model(), [toy], [CAA(n=4), RandomDirection()], [1], s)
        >>> sorted({row["method"] for row in r.rows})
        ['CAA', 'random']
    """
    settings = settings or BenchSettings()
    methods = tuple(default_methods() if methods is None else methods)
    if not methods:
        raise SpecError("methods is empty; pass some, e.g. default_methods().")
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise SpecError(f"method names must differ, got {names}; give each a name=.")
    layers = runtime.check_layers(model, default_layers(model) if layers is None else list(layers))
    data = [_behaviour(b) for b in behaviours]
    names = [b.name for b in data]
    if len(set(names)) != len(names):
        raise SpecError(f"behaviour names must differ, got {names}; load one with name=.")
    for b in data:
        if isinstance(b, Behaviour) and len(b.test) == 0:
            raise SpecError(f"behaviour {b.name!r} has no test items; load it with a test split.")
    shared = shared_for(model, data, layers, settings)
    if folder is None:
        return BenchResult.of(
            _cells(data, layers, methods, settings, shared, None, progress, backend), settings
        )
    with writer_lock(folder):  # one run at a time writes a folder
        store = BenchFolder.open(folder, bench_spec(model, data, methods, layers, settings))
        return BenchResult.of(
            _cells(data, layers, methods, settings, shared, store, progress, backend), settings
        )


def _behaviour(b: str | Behaviour | OpenEndedBehaviour) -> Behaviour | OpenEndedBehaviour:
    if isinstance(b, (Behaviour, OpenEndedBehaviour)):
        return b
    if isinstance(b, str) and b in bundled_open_ended():
        return load_open_ended(b)
    return load_behaviour(b)


def _cells(
    data: Sequence[Behaviour | OpenEndedBehaviour],
    layers: Sequence[int],
    methods: Sequence[Method],
    settings: BenchSettings,
    shared: Shared,
    store: BenchFolder | None,
    progress: bool | None,
    backend: RayCells | None = None,
) -> list[CellResult]:
    """Every (behaviour, layer) cell: read from ``store`` when it finished before, else run
    (and written to ``store`` as it finishes)."""
    cells: dict[tuple[str, int], CellResult] = {}
    todo: dict[str, list[int]] = {}
    for behaviour in data:
        for layer in layers:
            if store is not None and store.has(behaviour.name, layer):
                cells[(behaviour.name, layer)] = store.read(behaviour.name, layer)
                if progress:
                    print(f"bench: {behaviour.name} at layer {layer} read from the folder")
            else:
                todo.setdefault(behaviour.name, []).append(layer)

    def done(cell: CellResult) -> None:
        if store is not None:
            store.write(cell)
        cells[(cell.behaviour, cell.layer)] = cell
        if progress and backend is not None:
            print(f"bench: {cell.behaviour} at layer {cell.layer} done on Ray")

    if backend is not None and todo:
        model_id = runtime.model_id(shared.model)
        backend.run(model_id, data, todo, layers, methods, settings, done)
    else:
        for behaviour in data:
            if behaviour.name in todo:
                behaviour_cells(
                    shared, behaviour, todo[behaviour.name], methods, settings, progress, done
                )
    return [cells[(b.name, layer)] for b in data for layer in layers]


def default_layers(model: Any) -> list[int]:
    """The benchmark's default layers: a quarter and half of the way up the model (8 and 15
    of the embedded model's 30).

    Example:
        >>> from steerlens.testing import tiny_model
        >>> default_layers(tiny_model())
        [0, 1]
    """
    n = runtime.n_layers(model)
    return sorted({min(n - 1, round(n * f)) for f in LAYER_FRACTIONS})


def bench_spec(
    model: Any,
    behaviours: Sequence[Behaviour | OpenEndedBehaviour],
    methods: Sequence[Method],
    layers: Sequence[int],
    settings: BenchSettings,
) -> dict[str, Any]:
    """What makes two runs the same benchmark: the model, the data (by content), the methods,
    the layers and the settings, as plain JSON data."""
    plain = {
        f.name: getattr(settings, f.name)
        for f in dataclasses.fields(settings)
        if f.name != "optimizer"
    }
    plain["neutral_prompts"] = list(settings.neutral_prompts)
    plain["grid"] = list(settings.grid)
    return {
        "model": runtime.model_id(model),
        "behaviours": {b.name: _fingerprint(b) for b in behaviours},
        "methods": [repr(m) for m in methods],
        "layers": list(layers),
        "settings": plain,
        "optimizer": settings.optimizer.to_dict(),
    }


def _fingerprint(behaviour: Behaviour | OpenEndedBehaviour) -> str:
    """A hash of the behaviour's items (both splits), so a changed file is noticed."""
    items: list[Any]
    if isinstance(behaviour, OpenEndedBehaviour):
        items = [
            [[i.request, i.target] for i in behaviour.train],
            list(behaviour.test),
            behaviour.judge,
            behaviour.positions,
        ]
    else:
        items = [
            [i.question, i.matching, i.not_matching, i.file_letter]
            for split in (behaviour.train, behaviour.test)
            for i in split
        ]
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]


__all__ = ["bench_spec", "benchmark", "default_layers"]
