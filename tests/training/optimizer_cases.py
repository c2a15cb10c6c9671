"""Shared cases for the optimizer tests: random tensors, datapoints, and two references
(the engines' losses, and one plain steered forward per completion)."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from tolerances import loss_bounds

from steerlens import (
    Datapoint,
    optimize_vector,
    steer,
)
from steerlens.runtime import TokenContext, token_context
from steerlens.steering.steer import Steering
from steerlens.training.data import tokenize
from steerlens.training.engines import HookedEngine, PackedEngine, make_engine, steering_function
from steerlens.training.kinds import AddSteering
from steerlens.training.objectives import Objective


def gen(seed):
    return torch.Generator().manual_seed(seed)


def rand(*shape, seed=0, scale=1.0, dtype=torch.float32):
    return (torch.randn(*shape, generator=gen(seed)) * scale).to(dtype)


def datapoints(model):
    """Several datapoints, completions of different lengths (so the hooked engine pads), one
    negated, one in the chat template."""
    return [
        Datapoint("the cat sat", promote=[" on the mat", " in"], suppress=[" xyz"], chat=False),
        Datapoint("a dog ran far", promote=[" away from home!"], negate=True, chat=False),
        Datapoint.from_message(model, "Hi", promote=["Hello there"], suppress=["No"]),
    ]


def engine_losses(model, dps, layers, params, *, spec=None, objective=None, positions=None, fast):
    data = tokenize(model, dps, positions)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine = make_engine(model, data, layers, fast=fast)
    assert not [w for w in caught if "fast path" in str(w.message)], "packed path fell back"
    assert isinstance(engine, PackedEngine if fast else HookedEngine)
    any_neg = any(t.datapoint.negate for t in data)
    spec = spec or AddSteering()
    fn = steering_function(spec.intervention(params), spec.strength, any_neg)
    with torch.no_grad():
        return (objective or Objective()).losses(engine.logits(fn), engine.layout).double()


def hand_losses(model, dps, layers, make_iv, *, positions=None, coldness=0.7, strength=1.0):
    """Straightforward reference: one plain forward per completion, the intervention installed
    by ``steer`` (``make_iv(sign)``), float64 log-softmax, the METHOD.md formulas."""
    out = []
    for tdp in tokenize(model, dps, positions):
        sign = -1.0 if tdp.datapoint.negate else 1.0
        p = len(tdp.prompt_tokens)
        for comp in tdp.completions:
            tokens = torch.tensor([tdp.prompt_tokens + comp.tokens])
            ctx = TokenContext(torch.tensor([0]), torch.tensor([p]), 0)
            with (
                torch.no_grad(),
                steer(
                    model,
                    Steering(
                        make_iv(sign), layer=layers, positions=tdp.positions, strength=strength
                    ),
                ),
                token_context(ctx),
            ):
                logits = model(tokens)[0].double()
            lp = torch.log_softmax(coldness * logits, -1)
            rows = torch.arange(p - 1, p - 1 + len(comp.tokens))
            lp = lp[rows, torch.tensor(comp.tokens)]
            if comp.kind == "promote":
                out.append(float(-lp.sum()))
            else:
                out.append(float(-torch.log(-torch.expm1(lp)).sum()))
    return out


DP_ON = ("the cat sat", [" on"])


def hist(*rows):
    return [torch.tensor(r, dtype=torch.float32) for r in rows]


def initial_loss(model, dp):
    return float(optimize_vector(model, dp, 1, max_steps=0).loss_history[0].sum())


def check_phase(res, model, dps):
    """The output-constrained phase's result: its norm is the vector's, and no loss of ``dps``
    rose above its bound (the first phase's last losses)."""
    assert res.norm_phase is not None
    before, after = res.norm_phase
    assert after == res.vector.norm()  # the same tensor's norm, the same operation
    bounds, final = res.loss_history[-2], res.loss_history[-1]
    # The phase keeps the point whose losses met the bounds in its own forward; the bounds come
    # from the training loop's forward (with autograd, all jobs' rows), which may add the same
    # float32 terms in another order: each loss within loss_bounds (tests/tolerances.py).
    slack = loss_bounds(model, dps)
    assert np.all(final <= bounds + slack), (final, bounds, slack)
    return before, after
