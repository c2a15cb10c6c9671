"""The benchmark's cells: what every cell of a run shares (`Shared`: scorers, contrasts,
calibration units) and one A/B behaviour at one layer (`CellRun`: build, calibrate, score)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from steerlens import runtime
from steerlens.analysis.scale import residual_norms
from steerlens.datasets import Behaviour
from steerlens.evaluation.scorer import PromptScorer
from steerlens.steering.positions import Positions
from steerlens.steering.steer import Steering
from steerlens.steering.vector import SteeringVector
from steerlens.studies.bench import metrics
from steerlens.studies.bench.methods import ABPrompts, Method, OneShotEach, Setup
from steerlens.studies.bench.results import CellResult
from steerlens.studies.bench.settings import BEST_OF, CALIBRATION_FRACTIONS, BenchSettings


def _unit(vector: SteeringVector, layer: int) -> torch.Tensor:
    v = vector.directions[layer].detach().float()
    return v / v.norm().clamp_min(1e-12)


def unit_plans(
    units: Sequence[torch.Tensor], layer: int, strengths: Sequence[float], positions: Positions
) -> list[Steering]:
    return [
        Steering(u, layer=layer, strength=s, positions=positions)
        for u, s in zip(units, strengths, strict=True)
    ]


def no_training_groups(setup: Setup) -> list[tuple[int, ...]]:
    """The training groups of a method that trains nothing."""
    return []


def cosine_table(vectors: dict[tuple[str, str], SteeringVector], layer: int) -> dict[str, Any]:
    """The vectors' labels and their pairwise cosines at ``layer``."""
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
    # by rollout length and position rule
    rollouts: dict[tuple[int, Positions], PromptScorer] = field(default_factory=dict)
    _rollouts: dict[int, list[list[int]]] = field(default_factory=dict)  # tokens, by length

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

    def calibration(self, n_tokens: int, positions: Positions | None = None) -> PromptScorer:
        """The scorer of the neutral prompts, whose completions are the unsteered model's
        greedy rollouts of ``n_tokens`` (decoded once), for steerings at ``positions`` (default:
        the run's rule): its ``kl`` is `steerlens.evaluation.rollout_kl` along them."""
        positions = self.positions if positions is None else positions
        if (n_tokens, positions) not in self.rollouts:
            rows = [runtime.encode(self.model, t) for t in self.neutral]
            rollouts = self._rollouts.get(n_tokens)
            if rollouts is None:
                rollouts = []
                for chunk in runtime.chunks(len(rows), self.batch_size):
                    batch = [rows[i] for i in chunk]
                    rollouts += runtime.decode_tokens(self.model, batch, max_new_tokens=n_tokens)
                self._rollouts[n_tokens] = rollouts
            self.rollouts[(n_tokens, positions)] = PromptScorer(
                self.model,
                rows,
                positions,
                self.layers,
                completions=rollouts,
                batch_size=self.batch_size,
                copies=CALIBRATION_COPIES,
            )
        return self.rollouts[(n_tokens, positions)]

    def drop(self, name: str) -> None:
        """Forget a prompt set and its scorer (their memory is freed)."""
        self.sets.pop(name, None)
        self.scorers.pop(name, None)


@dataclass
class Laps:
    """Seconds per phase, each measured from the end of the one before (printed when
    ``progress``)."""

    where: str
    progress: bool | None
    times: dict[str, float] = field(default_factory=dict)
    start: float = field(default_factory=time.perf_counter)

    def __call__(self, phase: str) -> None:
        now = time.perf_counter()
        self.times[phase] = now - self.start
        self.start = now
        if self.progress:
            print(f"bench: {self.where}: {phase} took {self.times[phase]:.1f} s")


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
    # What the cell's methods build from (an open-ended cell's differs).
    setup_type: ClassVar[type[Setup]] = Setup

    def __post_init__(self) -> None:
        self.setup = self.setup_type(
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

    def laps(self) -> Laps:
        """A stopwatch for this cell's phases."""
        return Laps(f"{self.behaviour.name} at layer {self.layer}", self.progress)

    def build(self, methods: Sequence[Method], lap: Laps) -> dict[tuple[str, str], SteeringVector]:
        """Every method's vectors by ``(method, label)``; the one-shot vectors of all methods
        are trained first, in one batched call."""
        groups = [
            g
            for m in methods
            for g in getattr(m, "training_groups", no_training_groups)(self.setup)
        ]
        if groups:
            self.setup.one_shot(groups)
            lap("vectors: one-shot training")
        vectors: dict[tuple[str, str], SteeringVector] = {}
        for method in methods:
            for label, vector in method.vectors(self.setup).items():
                vectors[(method.name, label)] = vector
            lap(f"vectors: {method.name}")
        return vectors

    def run(self, methods: Sequence[Method]) -> CellResult:
        """Every phase of this cell, timed."""
        others = [k for k in self.shared.test_sets if k != self.behaviour.name]
        lap = self.laps()
        times = lap.times
        vectors = self.build(methods, lap)
        multipliers = self.calibrate(vectors)
        lap("calibration")
        curves, base = self.curves(vectors, multipliers)
        lap("steerability")
        changes = self.entanglement(vectors, multipliers, others)
        lap("entanglement")
        best = self.pick_best(methods, vectors, multipliers, lap)
        rows = [
            self.row(name, label, vector, multipliers[label], curves[label], base, changes[label])
            for (name, label), vector in vectors.items()
        ]
        grid = np.asarray(self.settings.grid)
        slopes = {label: metrics.item_slopes(grid, curves[label]).tolist() for _, label in vectors}
        return self.result(vectors, rows, best, slopes, times)

    def pick_best(
        self,
        methods: Sequence[Method],
        vectors: dict[tuple[str, str], SteeringVector],
        multipliers: dict[str, float | None],
        lap: Laps,
    ) -> str | None:
        """`best_of`'s pick, timed, when a method trains on each example alone (else None)."""
        if not any(isinstance(m, OneShotEach) for m in methods):
            return None
        best = self.best_of(vectors, multipliers)
        lap("best of E")
        return best

    def result(
        self,
        vectors: dict[tuple[str, str], SteeringVector],
        rows: list[dict[str, Any]],
        best: str | None,
        slopes: dict[str, list[float]],
        times: dict[str, float],
    ) -> CellResult:
        """The cell's result from one row per vector; the row of ``best`` (`pick_best`) is
        repeated, right after it, as the best-of-E method's."""
        out = []
        for row in rows:
            out.append(row)
            if row["vector"] == best:
                out.append({**row, "method": BEST_OF, "vector": f"{BEST_OF} ({best})"})
        return CellResult(
            behaviour=self.behaviour.name,
            layer=self.layer,
            rows=tuple(out),
            slopes=slopes,
            cosines=cosine_table(vectors, self.layer),
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
        plans = unit_plans(
            [u for u in units for _ in grid], self.layer, grid * len(units), self.positions
        )
        kl = self.shared.calibration(self.settings.rollout_tokens, self.positions).kl(plans)
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
        plans += unit_plans([u for u in units for _ in grid], self.layer, strengths, self.positions)
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
        plans: list[Steering | None] = [
            None,
            *unit_plans(units, self.layer, strengths, self.positions),
        ]
        changes: dict[str, dict[str, float]] = {label: {} for _, label in vectors}
        for name in others:
            scores = self._score(plans, name, self.settings.entanglement_items)
            base = metrics.behaviour_rate(scores[0])
            for i, (_, label) in enumerate(vectors):
                changes[label][name] = metrics.behaviour_rate(scores[1 + i]) - base
        return changes

    def validation(
        self, vectors: dict[tuple[str, str], SteeringVector]
    ) -> tuple[dict[tuple[str, str], SteeringVector], list[Any]]:
        """What `best_of` chooses among and on: the single-example vectors, and the validation
        items (training items that are none of the E examples); either may be empty."""
        singles = {k: v for k, v in vectors.items() if k[0] == OneShotEach().name}
        start = self.settings.examples
        order = self.setup.order[start : start + self.settings.validation_items]
        return singles, [self.behaviour.train[i] for i in order]

    def best_of(
        self, vectors: dict[tuple[str, str], SteeringVector], multipliers: dict[str, float | None]
    ) -> str | None:
        """The single-example vector with the highest mean propensity on validation items
        (training items that are none of the E examples) at its equal-cost multiplier."""
        singles, items = self.validation(vectors)
        if not singles or not items:
            return None
        name = f"{self.behaviour.name} validation"
        self.shared.sets.setdefault(name, ABPrompts.of(self.model, items))
        units = self._units(singles)
        strengths = [self._strength(multipliers[label]) for _, label in singles]
        scores = self._score(
            unit_plans(units, self.layer, strengths, self.positions), name, len(items)
        )
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


__all__ = [
    "CALIBRATION_COPIES",
    "CellRun",
    "Laps",
    "Shared",
    "cosine_table",
    "no_training_groups",
    "unit_plans",
]
