"""The optimizer's settings (`OptimizeConfig`) and what it returns (`OptimizeResult`,
`ObjectiveEvaluation`, the trained vector with its provenance)."""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from steerlens.errors import SpecError, check_keywords
from steerlens.runtime.logprobs import convert_loss
from steerlens.steering.positions import Positions, PositionsLike, as_positions
from steerlens.steering.vector import SteeringVector
from steerlens.training.constraints import Constraint, Noise, NormCap, OutputConstraint
from steerlens.training.kinds import (
    KINDS,
    AddSteering,
    AffineSteering,
    ClampSteering,
    RankOneSteering,
    is_number,
)
from steerlens.training.objectives import KLObjective, Objective, ObjectiveLike
from steerlens.training.regularizers import SideEffect
from steerlens.training.stopping import Plateau, StopRule, TargetLoss


@dataclass(frozen=True, kw_only=True)
class OptimizeConfig:
    """Settings of `optimize_vector`; defaults follow the paper and its authors' library.

    Attributes:
        lr: Adam learning rate (the paper used 0.01-0.5 depending on the model).
        betas: Adam betas.
        max_steps: the most optimizer steps.
        seed: seed for the random init and noise (the same seed gives bit-identical vectors).
        starting_norm: norm of the random init (a Gaussian direction, normalised).
        init: a start vector instead of a random one.
        kind: what is trained (the steering kind): ``AddSteering()``, ``ClampSteering(strength)``,
            ``AffineSteering(rank)`` or ``RankOneSteering()``.
        constraints: applied after each step, in order: ``NormCap(r)``, ``Noise(scale)``.
        stop: extra stop rules: ``Plateau(eps, patience)``, ``TargetLoss(...)``.
        objective: ``Objective(...)`` (coldness, suppression variant, length normalisation)
            or ``KLObjective(target_logprobs)``.
        regularizers: terms added to the objective, e.g. ``SideEffect(prompts, weight=...)``
            (KL to the unsteered model on neutral prompts); one loss-history column each.
        positions: where to steer (datapoints may override).
        output_constraint: run the norm-minimising second phase after the first.
        progress: show a progress bar (default: in a terminal or a notebook).
        fast: use the packed fast path when it reproduces the model (checked once).
    """

    lr: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    max_steps: int = 100
    seed: int = 0
    starting_norm: float = 1.0
    init: Tensor | None = None
    kind: AddSteering | ClampSteering | AffineSteering | RankOneSteering = field(
        default_factory=AddSteering
    )
    constraints: tuple[Constraint, ...] = ()
    stop: tuple[StopRule, ...] = ()
    objective: ObjectiveLike = field(default_factory=Objective)
    regularizers: tuple[SideEffect, ...] = ()
    positions: PositionsLike = None
    output_constraint: OutputConstraint | None = None
    progress: bool | None = None
    fast: bool = True

    def __post_init__(self) -> None:
        for name, what in (("lr", "learning rate"), ("starting_norm", "starting_norm")):
            value = getattr(self, name)
            if not is_number(value) or not (math.isfinite(value) and value > 0):
                raise SpecError(f"{what} must be > 0 and finite, got {name}={value!r}.")
        for name in ("max_steps", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
                raise SpecError(f"{name} must be an int >= 0, got {name}={value!r}.")
        if len(self.betas) != 2 or not all(is_number(b) and 0 <= b < 1 for b in self.betas):
            raise SpecError(f"betas must be two numbers in [0, 1), got {self.betas!r}.")
        if not isinstance(self.objective, (Objective, KLObjective)):
            raise SpecError(
                f"objective must be Objective(...) or KLObjective(...), got {self.objective!r}."
            )
        if isinstance(self.regularizers, SideEffect):
            object.__setattr__(self, "regularizers", (self.regularizers,))
        if not isinstance(self.regularizers, (list, tuple)) or not all(
            isinstance(r, SideEffect) for r in self.regularizers
        ):
            raise SpecError(
                "regularizers must be a tuple of SideEffect(...) terms, got "
                f"{self.regularizers!r:.80}."
            )
        object.__setattr__(self, "regularizers", tuple(self.regularizers))
        for c in self.constraints:
            if not isinstance(c, (NormCap, Noise)):
                raise SpecError(f"constraints must be NormCap(...) or Noise(...), got {c!r}.")
        if callable(getattr(self.stop, "check", None)):  # one rule, as with regularizers
            object.__setattr__(self, "stop", (self.stop,))
        if not isinstance(self.stop, (list, tuple)):
            raise SpecError(f"stop must be a tuple of stop rules, got {self.stop!r:.80}.")
        for rule in self.stop:
            if not callable(getattr(rule, "check", None)):
                raise SpecError(
                    f"stop must be a tuple of stop rules (Plateau(...), TargetLoss(...)), got "
                    f"{rule!r:.80}."
                )
        as_positions(self.positions)  # a bad spec fails here, not after the model is prepared
        if not isinstance(self.kind, KINDS):
            raise SpecError(
                f"kind must be AddSteering(), ClampSteering(...), AffineSteering(...) or "
                f"RankOneSteering(), got {self.kind!r}."
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings (recorded on the vector)."""

        def plain(x: Any) -> Any:
            if isinstance(x, Tensor):
                return {"tensor_norm": float(x.norm())}
            if dataclasses.is_dataclass(x) and not isinstance(x, type):
                return {"type": type(x).__name__} | {
                    f.name: plain(getattr(x, f.name)) for f in dataclasses.fields(x)
                }
            if isinstance(x, (list, tuple)):
                return [plain(i) for i in x]
            return x if isinstance(x, (int, float, str, bool, type(None))) else repr(x)

        return {k: v for k, v in plain(self).items() if k != "type"}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OptimizeConfig:
        """The settings `to_dict` wrote (e.g. a vector's ``provenance["hyperparameters"]``):
        one set of optimizer settings that studies, the benchmark and the CLI can rebuild.

        Raises:
            SpecError: an unknown key or type name, or a tensor (``init``; ``to_dict`` keeps
                only its norm), which cannot be rebuilt.

        Example:
            >>> config = OptimizeConfig(lr=0.2, constraints=(NormCap(8.0),))
            >>> OptimizeConfig.from_dict(config.to_dict()) == config
            True
        """
        if not isinstance(data, Mapping):
            raise SpecError(
                f"OptimizeConfig.from_dict takes a dict such as config.to_dict(), got "
                f"{type(data).__name__}."
            )
        known = {k.__name__: k for k in _SETTINGS_TYPES}

        def build(x: Any, where: str) -> Any:
            if isinstance(x, list):
                return tuple(build(i, f"{where}[{n}]") for n, i in enumerate(x))
            if not isinstance(x, Mapping):
                return x
            if "tensor_norm" in x:
                raise SpecError(
                    f"{where} was a tensor; to_dict kept only its norm, so it cannot be rebuilt. "
                    "Drop it from the dict and pass the tensor yourself (init=...)."
                )
            name = x.get("type")
            if name not in known:
                raise SpecError(
                    f"{where} has type {name!r}; from_dict rebuilds {', '.join(sorted(known))}."
                )
            fields = {k: build(v, f"{where}.{k}") for k, v in x.items() if k != "type"}
            return known[name](**fields)

        fields = {k: build(v, k) for k, v in data.items()}
        if isinstance(fields.get("betas"), tuple):
            fields["betas"] = tuple(fields["betas"])
        check_keywords(fields, [f.name for f in dataclasses.fields(cls)], where="OptimizeConfig")
        return cls(**fields)


@dataclass(frozen=True)
class OptimizeResult:
    """What `optimize_vector` returns.

    Attributes:
        vector: the optimized ``SteeringVector`` (provenance filled in).
        loss_history: ``[evaluations, completions]`` losses in nats; row ``t`` is the loss
            before update ``t`` (the last row is the returned vector's loss).
        labels: one label per completion column.
        steps: the number of updates made.
        stop_reason: why it stopped.
        wall_time_s: seconds spent.
        engine: ``"packed"`` (fast path) or ``"hooked"``.
        norm_phase: the output-constrained phase's ``(norm before, norm after)``, if run.
        setup_time_s: the seconds of ``wall_time_s`` before the first step: tokenising and
            building the engine (the first time for a model and layer set, also checking the
            fast path against the hooked forward); in `steerlens.training.loop.optimize_many`,
            shared by every job of the call.
    """

    vector: SteeringVector
    loss_history: Float[np.ndarray, "evals completions"]
    labels: list[str]
    steps: int
    stop_reason: str
    wall_time_s: float
    engine: str
    norm_phase: tuple[float, float] | None = None
    setup_time_s: float = 0.0

    @property
    def final_losses(self) -> dict[str, float]:
        """Each completion's final loss, in nats."""
        return dict(zip(self.labels, self.loss_history[-1].tolist(), strict=True))

    def losses(self, unit: str = "nats") -> Float[np.ndarray, "evals completions"]:
        """The loss history in ``"nats"``, ``"bits"`` or ``"hartleys"``."""
        return np.asarray(convert_loss(torch.from_numpy(self.loss_history), unit))

    def __repr__(self) -> str:
        total = float(self.loss_history[-1].sum())
        first = float(self.loss_history[0].sum())
        return (
            f"OptimizeResult(steps={self.steps}, loss {first:.4g} -> {total:.4g} nats, "
            f"stop={self.stop_reason!r}, {self.wall_time_s:.1f} s, engine={self.engine!r}, "
            f"norm={self.vector.norm():.4g})"
        )


@dataclass(frozen=True)
class ObjectiveEvaluation:
    """Per-completion losses of a vector, without optimizing (see `evaluate_objective`)."""

    losses: dict[str, float]
    unit: str

    @property
    def total(self) -> float:
        return float(sum(self.losses.values()))

    def __repr__(self) -> str:
        rows = "\n".join(f"  {k}: {v:.6g}" for k, v in self.losses.items())
        return f"ObjectiveEvaluation(total={self.total:.6g} {self.unit}\n{rows})"


def with_overrides(config: OptimizeConfig, overrides: dict[str, Any]) -> OptimizeConfig:
    """``config`` with fields replaced; an unknown name gets an error listing the valid ones."""
    if not isinstance(config, OptimizeConfig):
        raise SpecError(
            f"config must be an OptimizeConfig, got {type(config).__name__}; write "
            "OptimizeConfig(**settings) or pass the settings as keywords."
        )
    valid = [f.name for f in dataclasses.fields(OptimizeConfig)]
    check_keywords(overrides, valid, where="OptimizeConfig")
    return dataclasses.replace(config, **overrides)


# What from_dict can rebuild: every settings object to_dict writes with its type name.
_SETTINGS_TYPES = (
    AddSteering,
    ClampSteering,
    AffineSteering,
    RankOneSteering,
    NormCap,
    Noise,
    OutputConstraint,
    Objective,
    Plateau,
    TargetLoss,
    SideEffect,
    Positions,
)
