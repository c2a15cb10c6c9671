"""One-shot steering-vector optimization (Dunefsky & Cohan, 2025): ``optimize_vector`` and
``evaluate_objective``.

The loop only wires together the engine (`steerlens.engines`: logits at the scored
positions), the objective (`steerlens.objectives`: losses), the constraints
(`steerlens.constraints`: after each step, and the norm-minimising phase) and the stop rules
(`steerlens.stopping`). What is trained is one of the interventions of
`steerlens.interventions`, chosen by a steering kind: `AddSteering`,
`ClampSteering`, `AffineSteering` or `RankOneSteering`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from steerlens import runtime
from steerlens.constraints import (
    Constraint,
    Noise,
    NormCap,
    OutputConstraint,
)
from steerlens.data import Datapoint, TokenizedDatapoint, tokenize
from steerlens.engines import SteerFn, make_engine, steering_function, unsteered
from steerlens.errors import NonFiniteError, SpecError, check_keywords
from steerlens.interventions import Add, Affine, Clamp, Intervention, check_vector
from steerlens.objectives import KLObjective, Objective, ObjectiveLike, convert_loss
from steerlens.positions import PositionsLike, as_positions
from steerlens.regularizers import SideEffect
from steerlens.stopping import StopRule
from steerlens.vector import SteeringVector

Params = dict[str, Tensor]


def _start_vector(d_model: int, gen: torch.Generator, init: Any, norm: float) -> Tensor:
    if init is not None:
        start = init.vector if isinstance(init, SteeringVector) else init
        return check_vector(start.detach(), name="init vector", d_model=d_model).clone().float()
    v = torch.randn(d_model, generator=gen, dtype=torch.float32)
    return v / v.norm() * norm


class SteeringSpec(Protocol):
    """What `optimize_vector` trains: which intervention (``intervention(params)``),
    from which start parameters (``parameters(...)``, float32 on the CPU), at which strength,
    and what projection follows each update (``after_step``)."""

    @property
    def name(self) -> str: ...

    @property
    def strength(self) -> float: ...

    def parameters(self, d_model: int, gen: torch.Generator, config: OptimizeConfig) -> Params: ...

    def intervention(self, params: Params) -> Intervention: ...

    def after_step(self, params: Params) -> None: ...


@dataclass(frozen=True, kw_only=True)
class AddSteering:
    """Train ``v`` of `Add`: ``x + v``."""

    name: str = "add"

    @property
    def strength(self) -> float:
        return 1.0

    def parameters(self, d_model: int, gen: torch.Generator, config: OptimizeConfig) -> Params:
        return {"v": _start_vector(d_model, gen, config.init, config.starting_norm)}

    def intervention(self, params: Params) -> Intervention:
        return Add(params["v"])

    def after_step(self, params: Params) -> None:
        """Nothing to project for an added vector."""


@dataclass(frozen=True, kw_only=True)
class ClampSteering:
    """Train ``v`` of `Clamp`: ``x - (v v^T/||v||^2) x + strength * v``
    (fixed strength)."""

    strength: float = 1.0
    name: str = "clamp"

    def __post_init__(self) -> None:
        if not _is_number(self.strength) or not math.isfinite(self.strength):
            raise SpecError(
                f"ClampSteering strength must be a finite number, got {self.strength!r}; it is "
                "the value the component along v is clamped to, e.g. ClampSteering(strength=4.0)."
            )

    def parameters(self, d_model: int, gen: torch.Generator, config: OptimizeConfig) -> Params:
        return {"v": _start_vector(d_model, gen, config.init, config.starting_norm)}

    def intervention(self, params: Params) -> Intervention:
        return Clamp(params["v"])

    def after_step(self, params: Params) -> None:
        """Nothing to project for a clamped vector."""


@dataclass(frozen=True, kw_only=True)
class AffineSteering:
    """Train ``L``, ``R`` (rank ``rank``) and ``v`` of `Affine`:
    ``x + L^T R x + v``; each row of ``L`` and ``R`` is capped at ``factor_norm_cap`` after
    every step."""

    rank: int = 1
    factor_norm_cap: float | None = None
    init_scale: float = 1e-3
    name: str = "affine"

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise SpecError(f"affine rank must be >= 1, got {self.rank}.")
        if self.factor_norm_cap is not None and not self.factor_norm_cap > 0:
            raise SpecError(f"factor_norm_cap must be > 0, got {self.factor_norm_cap}.")

    @property
    def strength(self) -> float:
        return 1.0

    def parameters(self, d_model: int, gen: torch.Generator, config: OptimizeConfig) -> Params:
        return {
            "v": _start_vector(d_model, gen, config.init, config.starting_norm),
            "left": torch.randn(self.rank, d_model, generator=gen) * self.init_scale,
            "right": torch.randn(self.rank, d_model, generator=gen) * self.init_scale,
        }

    def intervention(self, params: Params) -> Intervention:
        return Affine(params["left"], params["right"], params["v"])

    def after_step(self, params: Params) -> None:
        if self.factor_norm_cap is None:
            return
        for name in ("left", "right"):
            rows = params[name]
            norms = rows.norm(dim=1, keepdim=True)
            rows.mul_(torch.clamp(self.factor_norm_cap / norms.clamp_min(1e-12), max=1.0))


@dataclass(frozen=True, kw_only=True)
class RankOneSteering:
    """Train unit ``u``, ``v`` of the rank-one map ``x + (u . x) v`` (an
    `Affine` with ``left = v``, ``right = u`` and no bias), renormalised
    after every step; no scale is learned. It starts from a random direction pair, so
    ``init``, ``constraints`` and ``output_constraint`` do not apply."""

    name: str = "rank_one"

    @property
    def strength(self) -> float:
        return 1.0

    def check(self, config: OptimizeConfig) -> None:
        """Refuse the settings a rank-one map cannot use (before any work)."""
        set_fields = {
            "init": config.init is not None,
            "constraints": bool(config.constraints),
            "output_constraint": config.output_constraint is not None,
        }
        bad = [name for name, is_set in set_fields.items() if is_set]
        if bad:
            raise SpecError(
                "RankOneSteering keeps ||u|| = ||v|| = 1 and starts from a random direction "
                f"pair, so {'/'.join(bad)} cannot be used; leave them at their defaults."
            )

    def parameters(self, d_model: int, gen: torch.Generator, config: OptimizeConfig) -> Params:
        self.check(config)
        u = torch.randn(d_model, generator=gen, dtype=torch.float32)
        v = torch.randn(d_model, generator=gen, dtype=torch.float32)
        return {"left": (v / v.norm())[None], "right": (u / u.norm())[None]}

    def intervention(self, params: Params) -> Intervention:
        return Affine(params["left"], params["right"])

    def after_step(self, params: Params) -> None:
        for p in params.values():
            p.div_(p.norm(dim=1, keepdim=True).clamp_min(1e-12))


_KINDS = (AddSteering, ClampSteering, AffineSteering, RankOneSteering)


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
        steering: what is trained: ``AddSteering()``, ``ClampSteering(strength)``,
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
    steering: AddSteering | ClampSteering | AffineSteering | RankOneSteering = field(
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
            if not _is_number(value) or not (math.isfinite(value) and value > 0):
                raise SpecError(f"{what} must be > 0 and finite, got {name}={value!r}.")
        for name in ("max_steps", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
                raise SpecError(f"{name} must be an int >= 0, got {name}={value!r}.")
        if len(self.betas) != 2 or not all(_is_number(b) and 0 <= b < 1 for b in self.betas):
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
        if not isinstance(self.steering, _KINDS):
            raise SpecError(
                f"steering must be AddSteering(), ClampSteering(...), AffineSteering(...) or "
                f"RankOneSteering(), got {self.steering!r}."
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
    """

    vector: SteeringVector
    loss_history: Float[np.ndarray, "evals completions"]
    labels: list[str]
    steps: int
    stop_reason: str
    wall_time_s: float
    engine: str
    norm_phase: tuple[float, float] | None = None

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


# -- the steering function ----------------------------------------------------------------


def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


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


def optimize_vector(
    model: Any,
    datapoints: Datapoint | TokenizedDatapoint | Sequence[Datapoint | TokenizedDatapoint],
    layer: int | Sequence[int],
    config: OptimizeConfig | None = None,
    **overrides: Any,
) -> OptimizeResult:
    """Optimize a steering vector on one (or a few) examples by gradient descent.

    Args:
        model: a TransformerLens model.
        datapoints: ``Datapoint``\\ s with completions to promote and/or suppress.
        layer: the layer (or layers, sharing one vector) at whose ``hook_resid_pre`` to steer.
        config: an ``OptimizeConfig``; keyword ``overrides`` replace its fields
            (``optimize_vector(model, dp, 6, lr=0.1, max_steps=30)``).

    Returns:
        An ``OptimizeResult`` with the vector, per-completion loss history (nats), steps,
        stop reason and wall time.

    Example:
        >>> from steerlens.testing import tiny_model
        >>> from steerlens import Datapoint
        >>> model = tiny_model()
        >>> dp = Datapoint("the cat", promote=[" in the"])
        >>> res = optimize_vector(model, dp, layer=1, lr=0.1, max_steps=5)
        >>> res.steps, bool(res.loss_history[-1].sum() < res.loss_history[0].sum())
        (5, True)
    """
    config = with_overrides(OptimizeConfig() if config is None else config, overrides)
    # The loop lives in optimize_many (one vector is a batch of one); imported here because
    # that module builds on this one's settings and results.
    from steerlens.optimize_many import Job, optimize_many

    return optimize_many(model, [Job(datapoints, layer, config)])[0]


def make_vector(
    model: Any,
    layers: list[int],
    params: dict[str, Tensor],
    config: OptimizeConfig,
    data: Sequence[Any],
    loss_history: np.ndarray,
    labels: list[str],
    steps: int,
    stop_reason: str,
) -> SteeringVector:
    """The trained parameters as a ``SteeringVector`` with its provenance."""
    d = runtime.d_model(model)
    v = (
        params["v"].detach().clone()
        if "v" in params
        else torch.zeros(d, device=params["left"].device)
    )
    affine = {}
    if "left" in params:
        affine = {
            la: (params["left"].detach().clone(), params["right"].detach().clone()) for la in layers
        }
    provenance = {
        "method": "one_shot_optimization",
        "steering": config.steering.name,
        "hyperparameters": config.to_dict(),
        "datapoints": [
            {
                "prompt": t.datapoint.prompt,
                "promote": list(t.datapoint.promote),
                "suppress": list(t.datapoint.suppress),
                "negate": t.datapoint.negate,
                "positions": t.positions.to_dict(),
            }
            for t in data
        ],
        "final_losses": dict(zip(labels, loss_history[-1].tolist(), strict=True)),
        "loss_unit": "nats",
        "steps": steps,
        "stop_reason": stop_reason,
    }
    return SteeringVector(
        {la: v for la in layers},
        model_id=runtime.model_id(model),
        affine=affine,
        provenance=provenance,
    )


class ObjectiveScorer:
    """Scores many vectors on one objective, building the forward engine once.

    ``evaluate_objective`` is one call of this; sweeps over many vectors (mode connectivity,
    layer sweeps, comparisons) keep one scorer so tokenisation, the lower blocks and the
    engine's self-check are not redone for every vector.

    Example:
        >>> import torch
        >>> from steerlens.testing import tiny_model
        >>> from steerlens import Datapoint
        >>> scorer = ObjectiveScorer(tiny_model(), Datapoint("a", promote=[" b"]), 1)
        >>> [scorer(torch.zeros(64) + s).unit for s in (0.0, 1.0)]
        ['nats', 'nats']
    """

    def __init__(
        self,
        model: Any,
        datapoints: Datapoint | Sequence[Datapoint],
        layer: int | Sequence[int],
        *,
        steering: SteeringSpec | None = None,
        objective: ObjectiveLike | None = None,
        positions: PositionsLike = None,
        unit: str = "nats",
        fast: bool = True,
    ) -> None:
        layers = runtime.check_layers(model, layer)
        convert_loss(0.0, unit)  # validate the unit before any work
        self.model, self.unit = model, unit
        self.spec: SteeringSpec = steering or AddSteering()
        self.objective: ObjectiveLike = objective or Objective()
        data = tokenize(model, datapoints, positions)
        with torch.no_grad():
            self.engine = make_engine(model, data, layers, fast=fast)
        self.any_negated = any(t.datapoint.negate for t in data)

    @torch.no_grad()
    def __call__(self, vector: Tensor | SteeringVector | None) -> ObjectiveEvaluation:
        """Per-completion losses with ``vector`` applied (``None``: unsteered)."""
        model, spec = self.model, self.spec
        fn: SteerFn = unsteered
        if vector is not None:
            if isinstance(vector, SteeringVector):
                vector.check_compatible(model)
                if vector.affine:
                    la0 = vector.layers[0]
                    left, right = vector.affine[la0]
                    params = {"v": vector.directions[la0], "left": left, "right": right}
                    spec = AffineSteering(rank=left.shape[0])
                else:
                    params = {"v": vector.vector}
            else:
                params = {"v": check_vector(vector, d_model=runtime.d_model(model))}
            dev = runtime.device(model)
            params = {k: t.to(device=dev) for k, t in params.items()}
            fn = steering_function(spec.intervention(params), spec.strength, self.any_negated)
        losses = self.objective.losses(self.engine.logits(fn), self.engine.layout)
        losses = losses.float().cpu()
        values = [float(convert_loss(x, self.unit)) for x in losses.tolist()]
        if not all(math.isfinite(x) for x in values):
            raise NonFiniteError(
                "the objective is NaN/inf for this vector; check the vector's values."
            )
        labels = self.engine.layout.labels
        return ObjectiveEvaluation(dict(zip(labels, values, strict=True)), self.unit)


def evaluate_objective(
    model: Any,
    datapoints: Datapoint | Sequence[Datapoint],
    layer: int | Sequence[int],
    vector: Tensor | SteeringVector | None,
    *,
    steering: SteeringSpec | None = None,
    objective: ObjectiveLike | None = None,
    positions: PositionsLike = None,
    unit: str = "nats",
    fast: bool = True,
) -> ObjectiveEvaluation:
    """The optimizer's per-completion losses for a given vector (``None``: unsteered).

    To score many vectors on the same datapoints, keep an `ObjectiveScorer`.

    Example:
        >>> import torch
        >>> from steerlens.testing import tiny_model
        >>> from steerlens import Datapoint
        >>> model = tiny_model()
        >>> ev = evaluate_objective(model, Datapoint("a", promote=[" b"]), 1, torch.zeros(64))
        >>> ev.unit, len(ev.losses)
        ('nats', 1)
    """
    scorer = ObjectiveScorer(
        model,
        datapoints,
        layer,
        steering=steering,
        objective=objective,
        positions=positions,
        unit=unit,
        fast=fast,
    )
    return scorer(vector)


__all__ = [
    "AddSteering",
    "AffineSteering",
    "ClampSteering",
    "ObjectiveEvaluation",
    "ObjectiveScorer",
    "OptimizeConfig",
    "OptimizeResult",
    "OutputConstraint",
    "RankOneSteering",
    "evaluate_objective",
    "optimize_vector",
    "with_overrides",
]
