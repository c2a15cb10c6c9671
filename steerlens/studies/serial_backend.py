"""The serial backend: a study's work in this process, the model built once."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from steerlens import runtime
from steerlens.steering.vector import SteeringVector
from steerlens.studies.phases import (
    Outcome,
    PhaseOutcome,
    evaluate_units,
    measure_grid,
    measure_steerability,
    train_units,
)
from steerlens.studies.spec import StudySpec, Unit, load_study_model


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


__all__ = ["SerialBackend"]
