"""Many one-shot vectors in one optimization: `optimize_many`.

Each `Job` (its datapoints, layer and `OptimizeConfig`) trains one vector, exactly as
`steerlens.optimize_vector` would: the same random start for the same seed, its own Adam state,
constraints and stop rules. What is shared is the work: jobs steering the same layers form one
engine whose lower blocks are computed once, every step runs one forward and one backward for all
of its jobs (each vector steers only its own batch row), and a job that has stopped leaves the
batch, so a finished vector stops costing compute.

A job's regularizers (`steerlens.training.SideEffect`) add their scored rows (the neutral
prompts) to the job's batch row, so the same forward scores them; their unsteered targets are
recorded once, by one unsteered forward of the group, before the first step. Each adds one
loss-history column (the weighted term). Stop rules: ``TargetLoss`` reads the objective's
columns only (the behavior target), ``Plateau`` the total with the terms; the output-constrained
phase keeps every column, the terms included, at or below its first-phase value.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from steerlens import runtime
from steerlens.errors import NonFiniteError, SpecError, user_stacklevel
from steerlens.steering.vector import SteeringVector
from steerlens.training.config import OptimizeConfig, OptimizeResult
from steerlens.training.constraints import NormCap, apply_constraints, minimize_norm
from steerlens.training.data import (
    Datapoint,
    ScoreLayout,
    TokenizedDatapoint,
    score_layout,
    tokenize,
)
from steerlens.training.engines import PackedEngine, SteerFn, make_engine, steering_function
from steerlens.training.kinds import Params
from steerlens.training.regularizers import unsteered_logprobs
from steerlens.training.stopping import TargetLoss

DatapointsLike = Datapoint | TokenizedDatapoint | Sequence[Datapoint | TokenizedDatapoint]


@dataclass(frozen=True)
class Job:
    """One vector to train: its datapoints, its layer(s) and its settings.

    Example:
        >>> from steerlens import Datapoint, OptimizeConfig
        >>> Job(Datapoint("the cat", promote=[" sat"]), 1, OptimizeConfig(seed=3)).config.seed
        3
    """

    datapoints: DatapointsLike
    layer: int | Sequence[int]
    config: OptimizeConfig = field(default_factory=OptimizeConfig)


def _finite_params(params: Params) -> bool:
    """Finite entries and a finite norm (entries near 1e38 overflow the norm to inf)."""
    return all(
        bool(torch.isfinite(p).all()) and math.isfinite(float(p.detach().norm()))
        for p in params.values()
    )


class JobRun:
    """One job's state through the loop: parameters, Adam, history, stop reason."""

    def __init__(self, model: Any, job: Job, index: int) -> None:
        config = job.config
        self.config, self.index = config, index
        self.layers = runtime.check_layers(model, job.layer)
        self.data = tokenize(model, job.datapoints, config.positions)
        self.spec = config.kind
        gen = torch.Generator().manual_seed(config.seed)
        # Float32 parameters (cast to the residual's dtype when applied): exact Adam state and
        # unit norms in half-precision models too.
        start = self.spec.parameters(runtime.d_model(model), gen, config)
        dev = runtime.device(model)
        self.params = {k: t.to(dev).requires_grad_(True) for k, t in start.items()}
        self.v = self.params.get("v")
        self.caps = [c for c in config.constraints if isinstance(c, NormCap)]
        if self.v is not None:
            with torch.no_grad():  # the start vector obeys the norm cap too
                for cap in self.caps:
                    cap.apply(self.v)
        self.any_negated = any(t.datapoint.negate for t in self.data)
        self.layout: ScoreLayout = score_layout(self.data, runtime.device(model))
        self.n_scored = int(self.layout.targets.numel())
        self.terms = config.regularizers
        # The regularizers' scored rows follow the datapoints in this job's engine rows.
        self.term_rows = [term.rows(model, config.positions) for term in self.terms]
        self.term_sizes = [
            sum(len(c.tokens) for row in rows for c in row.completions) for rows in self.term_rows
        ]
        self.term_targets: list[Tensor] = []  # recorded by LayerGroup before the first step
        self.labels = self.layout.labels + [term.label for term in self.terms]
        self.n_completions = len(self.layout.labels)
        self.opt = torch.optim.Adam(list(self.params.values()), lr=config.lr, betas=config.betas)
        self.noise_gen = torch.Generator().manual_seed(config.seed + 1)
        self.noise_state: dict[int, Tensor] = {}
        self.history: list[Tensor] = []
        self.last_good = {k: p.detach().clone() for k, p in self.params.items()}
        self.steps = 0
        self.stop_reason = f"max steps ({config.max_steps})"
        self.done = False
        self.norm_phase: tuple[float, float] | None = None
        self.wall = 0.0

    @property
    def key(self) -> tuple[tuple[int, ...], bool]:
        """Jobs with the same key share an engine."""
        return tuple(self.layers), self.config.fast

    def steer_fn(self) -> SteerFn:
        return steering_function(
            self.spec.intervention(self.params), self.spec.strength, self.any_negated
        )

    @property
    def engine_data(self) -> list[TokenizedDatapoint]:
        """This job's engine rows: its datapoints, then each regularizer's rows."""
        return self.data + [row for rows in self.term_rows for row in rows]

    @property
    def size(self) -> int:
        """Scored positions of this job in the engine's logits."""
        return self.n_scored + sum(self.term_sizes)

    def losses(self, logits: Tensor) -> Tensor:
        """Per-completion losses, then each regularizer's weighted term (one history row)."""
        values = self.config.objective.losses(logits[: self.n_scored], self.layout)
        if not self.terms:
            return values
        start, extra = self.n_scored, []
        for term, n, target in zip(self.terms, self.term_sizes, self.term_targets, strict=True):
            extra.append(term.loss(logits[start : start + n], target))
            start += n
        return torch.cat([values, torch.stack(extra).to(values.dtype)])

    def observe(self, losses: Tensor | None) -> bool:
        """Record the loss before the next update; ``True`` if the job goes on to update."""
        step = len(self.history)
        if losses is None or not bool(torch.isfinite(losses).all()):
            if not self.history:
                raise NonFiniteError(
                    "the loss is NaN/inf at the start point (before any update); "
                    "check the model and the start vector (init=...)."
                )
            with torch.no_grad():
                for k, p in self.params.items():
                    p.copy_(self.last_good[k])
            self.steps -= 1  # the update that produced the non-finite state is discarded
            self.stop_reason = (
                f"non-finite loss at step {step}; returned the last finite vector (step "
                f"{step - 1}). Lower the learning rate or add a NormCap."
            )
            warnings.warn(f"steerlens: {self.stop_reason}", stacklevel=user_stacklevel())
            self.done = True
            return False
        self.history.append(losses.detach().float().cpu())
        self.last_good = {k: p.detach().clone() for k, p in self.params.items()}
        targets = self.layout.loss_targets
        behavior = [h[: self.n_completions] for h in self.history] if self.terms else self.history
        reason = next(
            (
                r
                for rule in self.config.stop
                if (
                    r := rule.check(
                        behavior if isinstance(rule, TargetLoss) else self.history, targets
                    )
                )
            ),
            None,
        )
        if reason is not None:
            self.stop_reason, self.done = reason, True
        elif step == self.config.max_steps:
            self.done = True
        return not self.done

    def update(self) -> None:
        """The Adam step (gradients already computed), then constraints and projections."""
        self.opt.step()
        self.steps += 1
        with torch.no_grad():  # some noise reads the gradient, so it is cleared after
            if self.v is not None:
                apply_constraints(self.config.constraints, self.v, self.noise_gen, self.noise_state)
            self.spec.after_step(self.params)
        self.opt.zero_grad(set_to_none=True)


class LayerGroup:
    """Jobs that steer the same layers: one engine, one batch row per job."""

    def __init__(self, model: Any, runs: list[JobRun]) -> None:
        self.runs = runs
        data = [t for r in runs for t in r.engine_data]
        groups = [k for k, r in enumerate(runs) for _ in r.engine_data]
        layers, fast = runs[0].key
        with torch.no_grad():
            self.engine = make_engine(model, data, list(layers), fast=fast, groups=groups)
        self.engine_name = "packed" if isinstance(self.engine, PackedEngine) else "hooked"
        self.sizes = [r.size for r in runs]
        self._record_unsteered()

    @torch.no_grad()
    def _record_unsteered(self) -> None:
        """The regularizers' targets: one unsteered forward of the jobs that have any."""
        slots = [k for k, r in enumerate(self.runs) if r.terms]
        if not slots:
            return
        logits = self.engine.logits({k: _unsteered for k in slots})
        start = 0
        for k in slots:
            run = self.runs[k]
            at = start + run.n_scored
            for n in run.term_sizes:
                run.term_targets.append(unsteered_logprobs(logits[at : at + n]))
                at += n
            start += self.sizes[k]

    def losses(self, slots: Sequence[int]) -> list[Tensor]:
        """Each chosen job's per-completion losses, from one forward pass."""
        logits = self.engine.logits({k: self.runs[k].steer_fn() for k in slots})
        out, start = [], 0
        for k in slots:
            n = self.sizes[k]
            out.append(self.runs[k].losses(logits[start : start + n]))
            start += n
        return out

    def step(self) -> list[tuple[JobRun, Tensor]]:
        """Evaluate every running job (one forward pass); those that go on to an update, with
        their losses."""
        slots = []
        for k, r in enumerate(self.runs):
            if r.done:
                continue
            if _finite_params(r.params):
                slots.append(k)
            else:
                r.observe(None)
        if not slots:
            return []
        pairs = zip(slots, self.losses(slots), strict=True)
        return [(self.runs[k], losses) for k, losses in pairs if self.runs[k].observe(losses)]


def optimize_many(
    model: Any, jobs: Sequence[Job], *, progress: bool | None = None
) -> list[OptimizeResult]:
    """Train one vector per job in one batched loop; results in job order.

    Each result equals what ``optimize_vector(model, job.datapoints, job.layer, job.config)``
    returns (same seed, same start, same steps, up to float rounding in the batched forward);
    only ``wall_time_s`` is the time until that job stopped, in the shared loop.

    Example:
        >>> from steerlens.testing import tiny_model
        >>> from steerlens import Datapoint, OptimizeConfig
        >>> dp = Datapoint("the cat", promote=[" in the"])
        >>> jobs = [Job(dp, 1, OptimizeConfig(lr=0.1, max_steps=3, seed=s)) for s in (0, 1)]
        >>> [r.steps for r in optimize_many(tiny_model(), jobs)]
        [3, 3]
    """
    if isinstance(jobs, Job):
        jobs = [jobs]
    if not jobs:
        raise SpecError("no jobs given; pass a list of steerlens.training.loop.Job.")
    for i, job in enumerate(jobs):
        if not isinstance(job, Job):
            raise SpecError(f"jobs[{i}] is a {type(job).__name__}, not a Job(datapoints, layer).")
        if not isinstance(job.config, OptimizeConfig):
            raise SpecError(f"jobs[{i}].config must be an OptimizeConfig, got {job.config!r}.")
    t0 = time.perf_counter()
    runs = [JobRun(model, job, i) for i, job in enumerate(jobs)]
    by_key: dict[tuple[tuple[int, ...], bool], list[JobRun]] = {}
    for r in runs:
        by_key.setdefault(r.key, []).append(r)
    groups = [LayerGroup(model, rs) for rs in by_key.values()]
    setup = time.perf_counter() - t0
    show = progress if progress is not None else runs[0].config.progress
    bar = runtime.progress(sum(r.config.max_steps for r in runs), "optimize", show)
    while going := [(r, losses) for g in groups for r, losses in g.step()]:
        total = torch.stack([losses.sum() for _, losses in going]).sum()
        total.backward(inputs=[p for r, _ in going for p in r.params.values()])
        for r, _ in going:
            r.update()
        bar.update(len(going))
        bar.set_postfix(vectors=len(going))
        for r in runs:
            if r.done and r.wall == 0.0:
                r.wall = time.perf_counter() - t0
    bar.close()
    for r in runs:  # a run that hit max_steps is found done only by the step call after
        if r.wall == 0.0:
            r.wall = time.perf_counter() - t0
    results: dict[int, OptimizeResult] = {}
    for g in groups:
        for k, r in enumerate(g.runs):
            if r.config.output_constraint is not None and r.v is not None:
                _norm_phase(g, k, r)
                r.wall = time.perf_counter() - t0
            results[r.index] = _result(model, r, g.engine_name, setup)
    return [results[i] for i in range(len(runs))]


def _norm_phase(group: LayerGroup, slot: int, run: JobRun) -> None:
    """The output-constrained phase: the smallest vector keeping every loss under its first-
    phase value (`steerlens.training.constraints.minimize_norm`)."""
    assert run.v is not None and run.config.output_constraint is not None
    before = float(run.v.detach().norm())
    bounds = run.history[-1].to(run.v.device)

    def losses() -> Tensor | None:
        if not _finite_params(run.params):
            return None
        values = group.losses([slot])[0]
        return values if bool(torch.isfinite(values).all()) else None

    minimize_norm(run.v, losses, bounds, run.config.output_constraint, run.caps)
    with torch.no_grad():
        run.history.append(group.losses([slot])[0].float().cpu())
    run.norm_phase = (before, float(run.v.detach().norm()))


def _unsteered(layer: int, x: Tensor, mask: Tensor, sign: Tensor) -> Tensor:
    """The steering function that steers nothing."""
    return x


def _result(model: Any, run: JobRun, engine: str, setup: float) -> OptimizeResult:
    loss_history = torch.stack(run.history).numpy()
    labels = run.labels
    vector = _vector(model, run, loss_history)
    return OptimizeResult(
        vector=vector,
        loss_history=loss_history,
        labels=labels,
        steps=run.steps,
        stop_reason=run.stop_reason,
        wall_time_s=run.wall,
        engine=engine,
        norm_phase=run.norm_phase,
        setup_time_s=setup,
    )


def _vector(model: Any, run: JobRun, loss_history: np.ndarray) -> SteeringVector:
    """The run's trained parameters as a ``SteeringVector`` with its provenance."""
    params, layers, config = run.params, run.layers, run.config
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
        "steering": config.kind.name,
        "hyperparameters": config.to_dict(),
        "datapoints": [
            {
                "prompt": t.datapoint.prompt,
                "promote": list(t.datapoint.promote),
                "suppress": list(t.datapoint.suppress),
                "negate": t.datapoint.negate,
                "positions": t.positions.to_dict(),
            }
            for t in run.data
        ],
        "final_losses": dict(zip(run.labels, loss_history[-1].tolist(), strict=True)),
        "loss_unit": "nats",
        "steps": run.steps,
        "stop_reason": run.stop_reason,
    }
    return SteeringVector(
        {la: v for la in layers},
        model_id=runtime.model_id(model),
        affine=affine,
        provenance=provenance,
    )


__all__ = ["Job", "optimize_many"]
