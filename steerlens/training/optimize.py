"""One-shot steering-vector optimization (Dunefsky & Cohan, 2025): ``optimize_vector`` and
``evaluate_objective``.

The loop (`steerlens.training.loop`) wires together the engine (`steerlens.training.engines`:
logits at the scored positions), the objective (`steerlens.training.objectives`: losses), the
constraints (`steerlens.training.constraints`: after each step, and the norm-minimising phase)
and the stop rules (`steerlens.training.stopping`). What is trained is one of the interventions
of `steerlens.steering.interventions`, chosen by a steering kind (`steerlens.training.kinds`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from steerlens import runtime
from steerlens.errors import NonFiniteError
from steerlens.runtime.logprobs import convert_loss
from steerlens.steering.interventions import check_vector
from steerlens.steering.positions import PositionsLike
from steerlens.steering.vector import SteeringVector
from steerlens.training.config import (
    ObjectiveEvaluation,
    OptimizeConfig,
    OptimizeResult,
    with_overrides,
)
from steerlens.training.data import Datapoint, TokenizedDatapoint, tokenize
from steerlens.training.engines import SteerFn, make_engine, steering_function, unsteered
from steerlens.training.kinds import AddSteering, AffineSteering, SteeringSpec
from steerlens.training.loop import Job, optimize_many
from steerlens.training.objectives import Objective, ObjectiveLike


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
    return optimize_many(model, [Job(datapoints, layer, config)])[0]


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
        kind: SteeringSpec | None = None,
        objective: ObjectiveLike | None = None,
        positions: PositionsLike = None,
        unit: str = "nats",
        fast: bool = True,
    ) -> None:
        layers = runtime.check_layers(model, layer)
        convert_loss(0.0, unit)  # validate the unit before any work
        self.model, self.unit = model, unit
        self.spec: SteeringSpec = kind or AddSteering()
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
    kind: SteeringSpec | None = None,
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
        kind=kind,
        objective=objective,
        positions=positions,
        unit=unit,
        fast=fast,
    )
    return scorer(vector)


__all__ = ["ObjectiveScorer", "evaluate_objective", "optimize_vector"]
