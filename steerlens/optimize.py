"""One-shot steering-vector optimization (Dunefsky & Cohan, 2025): ``optimize_vector`` and
``evaluate_objective``. The loop only wires together the engine (forward), the objective
(losses), the constraints (after each step) and the stop rules."""

from __future__ import annotations

import dataclasses
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from steerlens import runtime
from steerlens._engine import HookedEngine, PackedEngine, SteerFn, make_engine
from steerlens.constraints import Constraint, Noise, NormCap
from steerlens.data import Datapoint, tokenize
from steerlens.errors import NonFiniteError, SpecError, SteerlensError
from steerlens.interventions import Add, Affine, Clamp, Intervention, check_vector
from steerlens.objectives import Objective, completion_losses, convert_loss
from steerlens.positions import PositionsLike
from steerlens.runtime import token_logprobs
from steerlens.stopping import StopRule
from steerlens.vector import SteeringVector


@dataclass(frozen=True, kw_only=True)
class AddSteering:
    """Optimize ``v`` in ``x + v``."""

    name: str = "add"


@dataclass(frozen=True, kw_only=True)
class ClampSteering:
    """Optimize ``v`` in ``x - (v v^T/||v||^2) x + strength * v`` (fixed strength)."""

    strength: float = 1.0
    name: str = "clamp"


@dataclass(frozen=True, kw_only=True)
class AffineSteering:
    """Optimize ``L``, ``R`` (rank ``rank``) and ``v`` in ``x + L^T R x + v``; each row of ``L``
    and ``R`` is capped at ``factor_norm_cap`` after every step."""

    rank: int = 1
    factor_norm_cap: float | None = None
    init_scale: float = 1e-3
    name: str = "affine"

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise SpecError(f"affine rank must be >= 1, got {self.rank}.")
        if self.factor_norm_cap is not None and not self.factor_norm_cap > 0:
            raise SpecError(f"factor_norm_cap must be > 0, got {self.factor_norm_cap}.")


SteeringSpec = AddSteering | ClampSteering | AffineSteering


@dataclass(frozen=True, kw_only=True)
class OutputConstraint:
    """Second phase: minimise ``||v||`` while no completion's loss rises above where it was
    when the phase began (gradient projection with restoration; see ``_minimize_norm``).

    Attributes:
        lr: the fraction of the norm removed per shrinking step.
        max_steps: steps of this phase (each costs one forward and one backward per completion).
        margin: how far (nats) inside a violated bound a restoration step aims.
    """

    lr: float = 0.05
    max_steps: int = 100
    margin: float = 1e-3


@dataclass(frozen=True, kw_only=True)
class OptimizeConfig:
    """Settings of :func:`optimize_vector`; defaults follow the paper and its authors' library.

    Attributes:
        lr: Adam learning rate (the paper used 0.01-0.5 depending on the model).
        betas: Adam betas.
        max_steps: the most optimizer steps.
        seed: seed for the random init and noise (the same seed gives bit-identical vectors).
        starting_norm: norm of the random init (a Gaussian direction, normalised).
        init: a start vector instead of a random one.
        steering: ``AddSteering()``, ``ClampSteering(strength)`` or ``AffineSteering(rank)``.
        constraints: applied after each step, in order: ``NormCap(r)``, ``Noise(scale)``.
        stop: extra stop rules: ``Plateau(eps, patience)``, ``TargetLoss(...)``.
        objective: coldness, suppression variant, length normalisation.
        positions: where to steer (datapoints may override).
        output_constraint: run the norm-minimising second phase after the first.
        progress: show a progress bar (default: only when stderr is a terminal).
        fast: use the packed fast path when it reproduces the model (checked once).
    """

    lr: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    max_steps: int = 100
    seed: int = 0
    starting_norm: float = 1.0
    init: Tensor | None = None
    steering: SteeringSpec = field(default_factory=AddSteering)
    constraints: tuple[Constraint, ...] = ()
    stop: tuple[StopRule, ...] = ()
    objective: Objective = field(default_factory=Objective)
    positions: PositionsLike = None
    output_constraint: OutputConstraint | None = None
    progress: bool | None = None
    fast: bool = True

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise SpecError(f"learning rate must be > 0, got lr={self.lr}.")
        if self.max_steps < 0:
            raise SpecError(f"max_steps must be >= 0, got {self.max_steps}.")
        if not self.starting_norm > 0:
            raise SpecError(f"starting_norm must be > 0, got {self.starting_norm}.")
        if not isinstance(self.steering, (AddSteering, ClampSteering, AffineSteering)):
            raise SpecError(
                f"steering must be AddSteering(), ClampSteering(...) or AffineSteering(...), "
                f"got {self.steering!r}; clamp and affine together are not supported."
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
    """What :func:`optimize_vector` returns.

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
    """Per-completion losses of a vector, without optimizing (see :func:`evaluate_objective`)."""

    losses: dict[str, float]
    unit: str

    @property
    def total(self) -> float:
        return float(sum(self.losses.values()))

    def __repr__(self) -> str:
        rows = "\n".join(f"  {k}: {v:.6g}" for k, v in self.losses.items())
        return f"ObjectiveEvaluation(total={self.total:.6g} {self.unit}\n{rows})"


# -- the steering function ----------------------------------------------------------------


def _intervention(params: dict[str, Tensor], spec: SteeringSpec) -> Intervention:
    """The intervention the optimizer trains, built from its current parameters."""
    v = params["v"]
    if isinstance(spec, AffineSteering):
        return Affine(params["left"], params["right"], v)
    if isinstance(spec, ClampSteering):
        return Clamp(v)
    return Add(v)


def _strength(spec: SteeringSpec) -> float:
    return spec.strength if isinstance(spec, ClampSteering) else 1.0


def _steer_fn(params: dict[str, Tensor], spec: SteeringSpec, any_negated: bool) -> SteerFn:
    pos = _intervention(params, spec)
    neg = pos.negated() if any_negated else None
    strength = _strength(spec)

    def apply(layer: int, x: Tensor, mask: Tensor, sign: Tensor) -> Tensor:
        y = pos.apply(x, strength)
        if neg is not None:
            y = torch.where((sign < 0)[..., None], neg.apply(x, strength), y)
        return torch.where(mask[..., None], y, x)

    return apply


def _losses(
    engine: PackedEngine | HookedEngine, fn: SteerFn, objective: Objective
) -> Float[Tensor, " completions"]:
    layout = engine.layout
    logits = engine.logits(fn)
    lp = token_logprobs(logits, layout.targets, objective.coldness)
    return completion_losses(
        lp, layout.completion_index, layout.is_suppress, layout.lengths, objective
    )


def _init_params(model: Any, config: OptimizeConfig) -> dict[str, Tensor]:
    d = runtime.d_model(model)
    dev, dtype = runtime.device(model), runtime.dtype(model)
    gen = torch.Generator().manual_seed(config.seed)
    if config.init is not None:
        init = config.init.vector if isinstance(config.init, SteeringVector) else config.init
        v = check_vector(init.detach(), name="init vector", d_model=d).clone().float()
    else:
        v = torch.randn(d, generator=gen, dtype=torch.float32)
        v = v / v.norm() * config.starting_norm
    params = {"v": v}
    spec = config.steering
    if isinstance(spec, AffineSteering):
        params["left"] = torch.randn(spec.rank, d, generator=gen) * spec.init_scale
        params["right"] = torch.randn(spec.rank, d, generator=gen) * spec.init_scale
    return {k: t.to(device=dev, dtype=dtype).requires_grad_(True) for k, t in params.items()}


def _progress(enabled: bool | None, total: int) -> Any:
    from tqdm.auto import tqdm

    show = sys.stderr.isatty() if enabled is None else enabled
    return tqdm(total=total, disable=not show, desc="optimize", leave=False)


def with_overrides(config: OptimizeConfig, overrides: dict[str, Any]) -> OptimizeConfig:
    """``config`` with fields replaced; an unknown name gets an error listing the valid ones."""
    valid = [f.name for f in dataclasses.fields(OptimizeConfig)]
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise SpecError(
            f"unknown OptimizeConfig setting(s) {', '.join(map(repr, unknown))}; the settings "
            f"are: {', '.join(valid)}."
        )
    return dataclasses.replace(config, **overrides)


def optimize_vector(
    model: Any,
    datapoints: Datapoint | Sequence[Datapoint],
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
    config = with_overrides(config or OptimizeConfig(), overrides)
    layers = runtime.check_layers(model, layer)
    t0 = time.perf_counter()
    data = tokenize(model, datapoints, config.positions)
    engine = make_engine(model, data, layers, fast=config.fast)
    any_negated = any(t.datapoint.negate for t in data)
    params = _init_params(model, config)
    with torch.no_grad():  # the start vector obeys the norm cap too
        for c in config.constraints:
            if isinstance(c, NormCap):
                c.apply(params["v"])
    noise_gen = torch.Generator().manual_seed(config.seed + 1)
    noise_prev: dict[int, Tensor] = {}
    spec = config.steering
    history, steps, stop_reason = _adam_loop(
        params,
        lambda: _losses(engine, _steer_fn(params, spec, any_negated), config.objective),
        config,
        targets=engine.layout.loss_targets,
        after_step=lambda: _apply_constraints(params, config, noise_gen, noise_prev),
        desc="optimize",
    )
    norm_phase = None
    if config.output_constraint is not None:
        bounds = history[-1].to(params["v"].device)
        before = float(params["v"].detach().norm())
        _minimize_norm(engine, params, spec, any_negated, config, bounds)
        with torch.no_grad():
            history.append(
                _losses(engine, _steer_fn(params, spec, any_negated), config.objective)
                .float()
                .cpu()
            )
        norm_phase = (before, float(params["v"].detach().norm()))
    wall = time.perf_counter() - t0
    loss_history = torch.stack(history).numpy()
    labels = engine.layout.labels
    vector = _make_vector(
        model, layers, params, config, data, loss_history, labels, steps, stop_reason
    )
    return OptimizeResult(
        vector=vector,
        loss_history=loss_history,
        labels=labels,
        steps=steps,
        stop_reason=stop_reason,
        wall_time_s=wall,
        engine="packed" if isinstance(engine, PackedEngine) else "hooked",
        norm_phase=norm_phase,
    )


def _adam_loop(
    params: dict[str, Tensor],
    loss_fn: Callable[[], Tensor],
    config: OptimizeConfig,
    *,
    targets: Sequence[float | None],
    after_step: Callable[[], None],
    desc: str,
) -> tuple[list[Tensor], int, str]:
    """The optimizer loop shared by every optimization in steerlens.

    Row ``t`` of the returned history is the loss before update ``t``; stop rules are checked
    after each evaluation; ``after_step`` (constraints) runs after each update, without grad.
    When the parameters or the loss stop being finite, the last finite parameters are restored
    and the loop stops with a reason naming the step.

    Returns:
        ``(history, steps, stop_reason)``.
    """
    opt = torch.optim.Adam(list(params.values()), lr=config.lr, betas=config.betas)
    history: list[Tensor] = []
    last_good = {k: p.detach().clone() for k, p in params.items()}
    stop_reason, steps = f"max steps ({config.max_steps})", 0
    bar = _progress(config.progress, config.max_steps)
    bar.set_description(desc)
    for step in range(config.max_steps + 1):
        finite = all(bool(torch.isfinite(p).all()) for p in params.values())
        losses = loss_fn() if finite else None
        if losses is None or not bool(torch.isfinite(losses).all()):
            if not history:
                raise NonFiniteError(
                    f"{desc}: the loss is NaN/inf at the start point (before any update); "
                    "check the model and the start vector (init=...)."
                )
            with torch.no_grad():
                for k, p in params.items():
                    p.copy_(last_good[k])
            steps -= 1  # the update that produced the non-finite state is discarded
            stop_reason = (
                f"non-finite loss at step {step}; returned the last finite vector (step "
                f"{step - 1}). Lower the learning rate or add a NormCap."
            )
            warnings.warn(f"steerlens: {stop_reason}", stacklevel=3)
            break
        history.append(losses.detach().float().cpu())
        last_good = {k: p.detach().clone() for k, p in params.items()}
        rule_reason = next((r for rule in config.stop if (r := rule.check(history, targets))), None)
        if rule_reason is not None:
            stop_reason = rule_reason
            break
        if step == config.max_steps:
            break
        opt.zero_grad(set_to_none=True)
        losses.sum().backward()
        opt.step()
        steps += 1
        with torch.no_grad():
            after_step()
        bar.update(1)
        bar.set_postfix(loss=f"{float(losses.detach().sum()):.4f}")
    bar.close()
    return history, steps, stop_reason


def _finite_losses(
    engine: PackedEngine | HookedEngine,
    params: dict[str, Tensor],
    spec: SteeringSpec,
    any_negated: bool,
    objective: Objective,
) -> Tensor | None:
    """The losses, or ``None`` when the parameters or the losses are not all finite."""
    if not all(bool(torch.isfinite(p).all()) for p in params.values()):
        return None
    losses = _losses(engine, _steer_fn(params, spec, any_negated), objective)
    return losses if bool(torch.isfinite(losses).all()) else None


def _apply_constraints(
    params: dict[str, Tensor],
    config: OptimizeConfig,
    gen: torch.Generator,
    noise_prev: dict[int, Tensor],
) -> None:
    v = params["v"]
    for i, c in enumerate(config.constraints):
        if isinstance(c, NormCap):
            c.apply(v)
        elif isinstance(c, Noise):
            step, noise_prev[i] = c.sample(v, v.grad, noise_prev.get(i), gen)
            v.add_(step)
    spec = config.steering
    if isinstance(spec, AffineSteering) and spec.factor_norm_cap is not None:
        for name in ("left", "right"):
            rows = params[name]
            norms = rows.norm(dim=1, keepdim=True)
            rows.mul_(torch.clamp(spec.factor_norm_cap / norms.clamp_min(1e-12), max=1.0))


def _minimize_norm(
    engine: PackedEngine | HookedEngine,
    params: dict[str, Tensor],
    spec: SteeringSpec,
    any_negated: bool,
    config: OptimizeConfig,
    bounds: Tensor,
) -> None:
    """Minimise ``||v||`` subject to ``loss_i(v) <= bound_i`` for every completion, by gradient
    projection with restoration.

    Each step computes the constraint Jacobian ``J`` (one row per completion). If some
    constraint is violated, a Gauss-Newton restoration step moves ``v`` back to ``margin``
    inside the violated bounds; otherwise ``v`` shrinks along ``-v`` projected off the span of
    ``J`` (to first order no loss changes), by up to ``lr`` times its norm (halved after a step
    that broke a bound; if restoration fails, back to the best point). The smallest-norm ``v``
    that meets every bound exactly is kept; the start point meets them, so the norm never
    grows.
    """
    oc = config.output_constraint
    assert oc is not None
    v = params["v"]
    best, best_norm = v.detach().clone(), float(v.detach().norm())
    rate, restoring = oc.lr, 0
    for _ in range(oc.max_steps):
        losses = _finite_losses(engine, params, spec, any_negated, config.objective)
        if losses is None:
            break
        rows = [torch.autograd.grad(li, v, retain_graph=True)[0] for li in losses]
        jac = torch.stack(rows).float()
        gap = (losses.detach() - bounds).float()
        with torch.no_grad():
            norm = float(v.norm())
            violated = gap > 0
            if not bool(violated.any()) and norm < best_norm:
                best, best_norm = v.detach().clone(), norm
            # Shrink gently after a step that broke a bound, boldly after one that did not.
            rate = rate / 2 if bool(violated.any()) else min(rate * 1.5, oc.lr)
            restoring = restoring + 1 if bool(violated.any()) else 0
            if restoring > 3:
                v.copy_(best)  # restoration failed: back to the best point, smaller steps
                restoring = 0
                continue
            if restoring:
                ja = jac[violated]
                rhs = gap[violated] + oc.margin
                step = -ja.T @ torch.linalg.solve(ja @ ja.T + 1e-8 * torch.eye(len(ja)), rhs)
            else:
                d = -v.detach().float()
                coef = torch.linalg.solve(jac @ jac.T + 1e-8 * torch.eye(len(jac)), jac @ d)
                step = rate * (d - jac.T @ coef)
            v.add_(step.to(v))
            for c in config.constraints:
                if isinstance(c, NormCap):
                    c.apply(v)
    with torch.no_grad():
        v.copy_(best)


def _make_vector(
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
    v = params["v"].detach().clone()
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
        objective: Objective | None = None,
        positions: PositionsLike = None,
        unit: str = "nats",
        fast: bool = True,
    ) -> None:
        layers = runtime.check_layers(model, layer)
        convert_loss(0.0, unit)  # validate the unit before any work
        self.model, self.unit = model, unit
        self.spec = steering or AddSteering()
        self.objective = objective or Objective()
        data = tokenize(model, datapoints, positions)
        with torch.no_grad():
            self.engine = make_engine(model, data, layers, fast=fast)
        self.any_negated = any(t.datapoint.negate for t in data)

    @torch.no_grad()
    def __call__(self, vector: Tensor | SteeringVector | None) -> ObjectiveEvaluation:
        """Per-completion losses with ``vector`` applied (``None``: unsteered)."""
        model, spec = self.model, self.spec
        if vector is None:
            fn: SteerFn = lambda la, x, mask, sign: x  # noqa: E731
        else:
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
            dev, dtype = runtime.device(model), runtime.dtype(model)
            params = {k: t.to(device=dev, dtype=dtype) for k, t in params.items()}
            fn = _steer_fn(params, spec, self.any_negated)
        losses = _losses(self.engine, fn, self.objective).float().cpu()
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
    objective: Objective | None = None,
    positions: PositionsLike = None,
    unit: str = "nats",
    fast: bool = True,
) -> ObjectiveEvaluation:
    """The optimizer's per-completion losses for a given vector (``None``: unsteered).

    To score many vectors on the same datapoints, keep an :class:`ObjectiveScorer`.

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
    "SteerlensError",
    "evaluate_objective",
    "optimize_vector",
]
