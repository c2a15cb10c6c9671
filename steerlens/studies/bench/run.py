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
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from steerlens import runtime
from steerlens.analysis.scale import residual_norms
from steerlens.datasets import Behaviour, load_behaviour
from steerlens.errors import SpecError
from steerlens.evaluation.scorer import PromptScorer
from steerlens.steering.positions import Positions
from steerlens.steering.steer import Steering
from steerlens.steering.vector import SteeringVector
from steerlens.studies.bench import metrics
from steerlens.studies.bench.folder import BenchFolder
from steerlens.studies.bench.methods import (
    ABPrompts,
    Method,
    OneShotEach,
    Setup,
    answer_positions,
    default_methods,
)
from steerlens.studies.bench.results import BenchResult, CellResult
from steerlens.studies.bench.settings import (
    BEST_OF,
    CALIBRATION_FRACTIONS,
    DEFAULT_BEHAVIOURS,
    LAYER_FRACTIONS,
    BenchSettings,
)
from steerlens.studies.folder import writer_lock


def _unit(vector: SteeringVector, layer: int) -> torch.Tensor:
    v = vector.directions[layer].detach().float()
    return v / v.norm().clamp_min(1e-12)


def _plans(
    units: Sequence[torch.Tensor], layer: int, strengths: Sequence[float], positions: Positions
) -> list[Steering]:
    return [
        Steering(u, layer=layer, strength=s, positions=positions)
        for u, s in zip(units, strengths, strict=True)
    ]


def benchmark(
    model: Any,
    behaviours: Sequence[str | Behaviour] = DEFAULT_BEHAVIOURS,
    methods: Sequence[Method] | None = None,
    layers: Sequence[int] | None = None,
    settings: BenchSettings | None = None,
    *,
    folder: str | Path | None = None,
    progress: bool | None = None,
) -> BenchResult:
    """One-shot vs contrastive vectors, at equal cost, on A/B behaviour data.

    Args:
        model: a TransformerLens model with a chat template.
        behaviours: bundled names (`steerlens.datasets.bundled_behaviours`) or `Behaviour`
            objects from your own files (`steerlens.datasets.load_behaviour`).
        methods: the entries to compare (default: `default_methods`); best-of-E is added
            when the single-example one-shot method is among them.
        layers: the layers to steer at (default: `default_layers`, a quarter and half of the
            way up).
        settings: a `BenchSettings`.
        folder: a folder to write each (behaviour, layer) cell to as it finishes; run again
            with the same arguments, it reads the finished cells and runs only the rest.
        progress: print one line per phase.

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
    data = [b if isinstance(b, Behaviour) else load_behaviour(b) for b in behaviours]
    for b in data:
        if len(b.test) == 0:
            raise SpecError(f"behaviour {b.name!r} has no test items; load it with a test split.")
    mmlu = load_behaviour("mmlu")
    positions = answer_positions(model)
    neutral = runtime.format_prompts(model, list(settings.neutral_prompts), chat=True)
    # Each behaviour's test items serve its own steerability and, their first ones, the other
    # behaviours' entanglement; MMLU's only the latter.
    n_test = max(settings.test_items, settings.entanglement_items)
    sets = {b.name: ABPrompts.of(model, b.test[:n_test]) for b in data}
    sets["mmlu"] = ABPrompts.of(model, mmlu.test[: settings.entanglement_items])
    shared = Shared(
        model,
        positions,
        tuple(layers),
        neutral,
        sets,
        tuple(sets),
        settings.batch_size,
    )
    if folder is None:
        return BenchResult.of(
            _cells(data, layers, methods, settings, shared, None, progress), settings
        )
    with writer_lock(folder):  # one run at a time writes a folder
        store = BenchFolder.open(folder, bench_spec(model, data, methods, layers, settings))
        return BenchResult.of(
            _cells(data, layers, methods, settings, shared, store, progress), settings
        )


def _cells(
    data: Sequence[Behaviour],
    layers: Sequence[int],
    methods: Sequence[Method],
    settings: BenchSettings,
    shared: Shared,
    store: BenchFolder | None,
    progress: bool | None,
) -> list[CellResult]:
    """Every (behaviour, layer) cell: read from ``store`` when it finished before, else run
    (and written to ``store``)."""
    cells = []
    for behaviour in data:
        for layer in layers:
            if store is not None and store.has(behaviour.name, layer):
                cells.append(store.read(behaviour.name, layer))
                if progress:
                    print(f"bench: {behaviour.name} at layer {layer} read from the folder")
                continue
            cell = CellRun(
                shared.model, behaviour, layer, shared.positions, settings, shared, progress
            )
            result = cell.run(methods)
            if store is not None:
                store.write(result)
            cells.append(result)
        shared.drop(f"{behaviour.name} validation")  # only this behaviour's cells use it
    return cells


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
    behaviours: Sequence[Behaviour],
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


def _fingerprint(behaviour: Behaviour) -> str:
    """A hash of the behaviour's items (both splits), so a changed file is noticed."""
    items = [
        [i.question, i.matching, i.not_matching, i.file_letter]
        for split in (behaviour.train, behaviour.test)
        for i in split
    ]
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]


def _none(setup: Setup) -> list[tuple[int, ...]]:
    return []


def _cosines(vectors: dict[tuple[str, str], SteeringVector], layer: int) -> dict[str, Any]:
    labels = [label for _, label in vectors]
    units = torch.stack([_unit(v, layer) for v in vectors.values()])
    return {"labels": labels, "cosine": (units @ units.T).tolist()}


# Steerings per forward pass in the calibration: its few short prompts make small batches.
CALIBRATION_COPIES = 8


@dataclass(frozen=True)
class Shared:
    """What every cell of one run uses: the model, the position rule and the run's layers,
    the chat-formatted neutral prompts of the calibration, and the A/B prompt sets the cells
    score (each behaviour's test items and MMLU's; validation items are added per behaviour).
    Filled as cells first need them: each layer's calibration unit, each behaviour's
    contrasts (collected at every layer at once), and one `PromptScorer` per prompt set and
    one for the calibration's rollouts, each computing its unsteered work once for every
    vector, multiplier and layer of the run.
    """

    model: Any
    positions: Positions
    layers: tuple[int, ...]
    neutral: list[str]
    sets: dict[str, ABPrompts]
    test_sets: tuple[str, ...] = ()  # the sets entanglement is measured on
    batch_size: int = 32
    scales: dict[int, float] = field(default_factory=dict)
    contrasts: dict[str, dict[tuple[int, int], torch.Tensor]] = field(default_factory=dict)
    scorers: dict[str, PromptScorer] = field(default_factory=dict)
    rollouts: dict[int, PromptScorer] = field(default_factory=dict)  # by rollout length

    def scale(self, layer: int) -> float:
        """The calibration grid's unit at ``layer``: the mean residual norm on the neutral
        prompts (first tokens left out)."""
        if layer not in self.scales:
            norms = residual_norms(self.model, self.neutral, layers=[layer], chat=False)
            self.scales[layer] = float(norms.other_mean[0])
        return self.scales[layer]

    def scorer(self, name: str) -> PromptScorer:
        """The scorer of the prompt set ``name`` (built on first use)."""
        if name not in self.scorers:
            prompts = list(self.sets[name].prompts)
            self.scorers[name] = PromptScorer(
                self.model, prompts, self.positions, self.layers, batch_size=self.batch_size
            )
        return self.scorers[name]

    def calibration(self, n_tokens: int) -> PromptScorer:
        """The scorer of the neutral prompts, whose completions are the unsteered model's
        greedy rollouts of ``n_tokens`` (decoded once): its ``kl`` is
        `steerlens.evaluation.rollout_kl` along them."""
        if n_tokens not in self.rollouts:
            rows = [runtime.encode(self.model, t) for t in self.neutral]
            rollouts: list[list[int]] = []
            for chunk in runtime.chunks(len(rows), self.batch_size):
                batch = [rows[i] for i in chunk]
                rollouts += runtime.decode_tokens(self.model, batch, max_new_tokens=n_tokens)
            self.rollouts[n_tokens] = PromptScorer(
                self.model,
                rows,
                self.positions,
                self.layers,
                completions=rollouts,
                batch_size=self.batch_size,
                copies=CALIBRATION_COPIES,
            )
        return self.rollouts[n_tokens]

    def drop(self, name: str) -> None:
        """Forget a prompt set and its scorer (their memory is freed)."""
        self.sets.pop(name, None)
        self.scorers.pop(name, None)


@dataclass
class CellRun:
    """One behaviour at one layer: builds, calibrates and scores its vectors."""

    model: Any
    behaviour: Behaviour
    layer: int
    positions: Positions
    settings: BenchSettings
    shared: Shared
    progress: bool | None

    def __post_init__(self) -> None:
        self.setup = Setup(
            self.model,
            self.behaviour,
            self.layer,
            self.positions,
            self.settings.optimizer,
            examples=self.settings.examples,
            seed=self.settings.seed,
            contrast_layers=self.shared.layers,
            contrasts=self.shared.contrasts.setdefault(self.behaviour.name, {}),
        )

    @property
    def scale(self) -> float:
        return self.shared.scale(self.layer)

    def run(self, methods: Sequence[Method]) -> CellResult:
        """Every phase of this cell, timed."""
        others = [k for k in self.shared.test_sets if k != self.behaviour.name]
        times: dict[str, float] = {}
        start = time.perf_counter()

        def lap(phase: str) -> None:
            nonlocal start
            now = time.perf_counter()
            times[phase] = now - start
            start = now
            if self.progress:
                where = f"{self.behaviour.name} at layer {self.layer}"
                print(f"bench: {where}: {phase} took {times[phase]:.1f} s")

        groups = [g for m in methods for g in getattr(m, "training_groups", _none)(self.setup)]
        if groups:
            self.setup.one_shot(groups)  # every method's one-shot vectors in one batched call
            lap("vectors: one-shot training")
        vectors: dict[tuple[str, str], SteeringVector] = {}
        for method in methods:
            for label, vector in method.vectors(self.setup).items():
                vectors[(method.name, label)] = vector
            lap(f"vectors: {method.name}")
        multipliers = self.calibrate(vectors)
        lap("calibration")
        curves, base = self.curves(vectors, multipliers)
        lap("steerability")
        changes = self.entanglement(vectors, multipliers, others)
        lap("entanglement")
        best = None
        if any(isinstance(m, OneShotEach) for m in methods):
            best = self.best_of(vectors, multipliers)
            lap("best of E")
        rows = []
        for (name, label), vector in vectors.items():
            row = self.row(
                name, label, vector, multipliers[label], curves[label], base, changes[label]
            )
            rows.append(row)
            if label == best:
                rows.append({**row, "method": BEST_OF, "vector": f"{BEST_OF} ({label})"})
        grid = np.asarray(self.settings.grid)
        return CellResult(
            behaviour=self.behaviour.name,
            layer=self.layer,
            rows=tuple(rows),
            slopes={
                label: metrics.item_slopes(grid, curves[label]).tolist() for _, label in vectors
            },
            cosines=_cosines(vectors, self.layer),
            times=times,
            vectors={label: v for (_, label), v in vectors.items()},
        )

    def _units(self, vectors: dict[tuple[str, str], SteeringVector]) -> list[torch.Tensor]:
        return [_unit(v, self.layer) for v in vectors.values()]

    def calibrate(self, vectors: dict[tuple[str, str], SteeringVector]) -> dict[str, float | None]:
        """Each vector's equal-cost multiplier (in residual-norm units of the vector's unit
        direction), or None when no multiplier of the grid reaches the budget."""
        grid = [f * self.scale for f in CALIBRATION_FRACTIONS]
        units = self._units(vectors)
        plans = _plans(
            [u for u in units for _ in grid], self.layer, grid * len(units), self.positions
        )
        kl = self.shared.calibration(self.settings.rollout_tokens).kl(plans)
        p95 = torch.quantile(kl.double(), 0.95, dim=1).reshape(len(units), len(grid)).numpy()
        return {
            label: metrics.calibrated_multiplier(np.asarray(grid), p95[i], self.settings.budget)
            for i, (_, label) in enumerate(vectors)
        }

    def _strength(self, multiplier: float | None) -> float:
        # A vector that never reaches the budget is measured at the grid's largest multiplier
        # and flagged (budget_reached=False), never silently treated as equal cost.
        return multiplier if multiplier is not None else CALIBRATION_FRACTIONS[-1] * self.scale

    def _score(self, plans: Sequence[Steering | None], name: str, n_items: int) -> np.ndarray:
        """``[plans, items]`` propensities on the first ``n_items`` items of a prompt set."""
        prompts = self.shared.sets[name]
        rows = range(2 * min(n_items, len(prompts.prompts) // 2))
        scores = self.shared.scorer(name).propensities(
            plans,
            [prompts.matching[r] for r in rows],
            [prompts.other[r] for r in rows],
            prompts=rows,
        )
        # Both letter orders of an item are adjacent: the item's propensity is their mean.
        return scores.double().reshape(len(plans), -1, 2).mean(-1).numpy()

    def curves(
        self,
        vectors: dict[tuple[str, str], SteeringVector],
        multipliers: dict[str, float | None],
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Per vector, ``[items, grid]`` propensities; and the unsteered ``[items]``."""
        grid = [g for g in self.settings.grid if g != 0.0]
        units = self._units(vectors)
        strengths = [g * self._strength(multipliers[label]) for _, label in vectors for g in grid]
        plans: list[Steering | None] = [None]
        plans += _plans([u for u in units for _ in grid], self.layer, strengths, self.positions)
        scores = self._score(plans, self.behaviour.name, self.settings.test_items)
        base = scores[0]
        out = {}
        for i, (_, label) in enumerate(vectors):
            steered = iter(scores[1 + i * len(grid) : 1 + (i + 1) * len(grid)])
            out[label] = np.stack(
                [base if g == 0.0 else next(steered) for g in self.settings.grid], axis=1
            )
        return out, base

    def entanglement(
        self,
        vectors: dict[tuple[str, str], SteeringVector],
        multipliers: dict[str, float | None],
        others: Sequence[str],
    ) -> dict[str, dict[str, float]]:
        """Per vector, the change of the behaviour rate on each other data set at equal cost."""
        units = self._units(vectors)
        strengths = [self._strength(multipliers[label]) for _, label in vectors]
        plans: list[Steering | None] = [None, *_plans(units, self.layer, strengths, self.positions)]
        changes: dict[str, dict[str, float]] = {label: {} for _, label in vectors}
        for name in others:
            scores = self._score(plans, name, self.settings.entanglement_items)
            base = metrics.behaviour_rate(scores[0])
            for i, (_, label) in enumerate(vectors):
                changes[label][name] = metrics.behaviour_rate(scores[1 + i]) - base
        return changes

    def best_of(
        self, vectors: dict[tuple[str, str], SteeringVector], multipliers: dict[str, float | None]
    ) -> str | None:
        """The single-example vector with the highest mean propensity on validation items
        (training items that are none of the E examples) at its equal-cost multiplier."""
        singles = {k: v for k, v in vectors.items() if k[0] == OneShotEach().name}
        start = self.settings.examples
        order = self.setup.order[start : start + self.settings.validation_items]
        if not singles or not order:
            return None
        items = [self.behaviour.train[i] for i in order]
        name = f"{self.behaviour.name} validation"
        self.shared.sets.setdefault(name, ABPrompts.of(self.model, items))
        units = self._units(singles)
        strengths = [self._strength(multipliers[label]) for _, label in singles]
        scores = self._score(_plans(units, self.layer, strengths, self.positions), name, len(items))
        labels = [label for _, label in singles]
        return labels[int(np.argmax(scores.mean(axis=1)))]

    def row(
        self,
        method: str,
        label: str,
        vector: SteeringVector,
        multiplier: float | None,
        curve: np.ndarray,
        base: np.ndarray,
        changes: dict[str, float],
    ) -> dict[str, Any]:
        grid = np.asarray(self.settings.grid)
        summary = metrics.steerability_summary(grid, curve)
        top = int(np.argmax(grid))
        y_base = metrics.behaviour_rate(base)
        y_steered = metrics.behaviour_rate(curve[:, top])
        slope_ci = metrics.bootstrap_interval(
            metrics.item_slopes(grid, curve),
            n_boot=self.settings.bootstrap,
            seed=self.settings.seed,
        )
        return {
            "behaviour": self.behaviour.name,
            "layer": self.layer,
            "method": method,
            "vector": label,
            "norm": vector.norm(),
            "multiplier": self._strength(multiplier),
            "budget_reached": multiplier is not None,
            "mean_slope": summary.mean_slope,
            "slope_sd": summary.sd_slope,
            "slope_ci_low": slope_ci[0],
            "slope_ci_high": slope_ci[1],
            "anti_steerable": summary.anti_steerable_fraction,
            "non_monotonic": summary.non_monotonic_fraction,
            "mean_slope_monotonic": summary.mean_slope_monotonic,
            "delta_at_max": summary.delta_at_max,
            "rate_base": y_base,
            "rate_steered": y_steered,
            "effectiveness": metrics.effectiveness(y_steered, y_base),
            "entanglement": metrics.entanglement(changes),
            **{f"change_{k}": v for k, v in changes.items()},
        }


__all__ = ["bench_spec", "benchmark", "default_layers"]
