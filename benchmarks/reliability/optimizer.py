"""Cases: the optimizer (optimize_vector and its config, constraints, stopping rules)."""

# mypy: ignore-errors
# (the cases pass wrong types on purpose)

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from steerlens import NormCap, OptimizeConfig, Positions, evaluate_objective, optimize_vector
from steerlens.training.kinds import ClampSteering
from steerlens.training.loop import optimize_many
from steerlens.training.regularizers import SideEffect
from steerlens.training.stopping import Plateau, TargetLoss

from .helpers import dp, make, nan, opt, result_vector_ok
from .runner import Ctx, cases

# A bad layer, and what the error must name.
BAD_LAYERS = [
    (5, "5"),
    (-1, "-1"),
    ("1", "'1'"),
    (np.float64(1.0), "float"),
    ([], "layer"),
    (None, "None"),
    (1.0, "float"),
    (True, "bool"),
]

# A bad OptimizeConfig field and value, and what the error must name.
BAD_CONFIGS = [
    ("max_steps", -1, "max_steps"),
    ("max_steps", 2.5, "max_steps"),
    ("lr", float("nan"), "nan"),
    ("lr", 0.0, "learning rate"),
    ("lr", -1.0, "learning rate"),
    ("seed", None, "seed"),
    ("seed", -1, "seed"),
    ("starting_norm", 0.0, "starting_norm"),
    ("starting_norm", float("inf"), "starting_norm"),
    ("betas", (0.9, 1.5), "betas"),
    ("constraints", ("cap",), "constraints"),
    ("objective", "promotion", "objective"),
    ("positions", "bogus", "bogus"),
]


def _opt_at(layer: Any) -> Callable[[Ctx], Any]:
    return lambda c: opt(c, layer=layer)


def _grads(ctx: Ctx) -> Any:
    opt(ctx, max_steps=2)
    return [p.grad is None for p in ctx.tiny.parameters()], [
        p.requires_grad for p in ctx.tiny.parameters()
    ]


def _grads_interrupted(ctx: Ctx) -> Any:
    class Interrupt(Plateau):
        def check(self, history: Any, targets: Any = ()) -> str | None:
            raise KeyboardInterrupt

    with contextlib.suppress(KeyboardInterrupt):
        opt(ctx, max_steps=3, stop=(Interrupt(),))
    return [p.grad is None for p in ctx.tiny.parameters()], [
        p.requires_grad for p in ctx.tiny.parameters()
    ]


def _no_grads_left(r: Any) -> bool:
    return all(r[0]) and all(r[1])


def _eval_obj(v: Any, **kw: Any) -> Callable[[Ctx], Any]:
    return lambda c: evaluate_objective(c.tiny, dp(), 1, v, **kw)


# (name, run, ok: None where only an error is right, what the error must name)
CASES = cases(
    "optimizer",
    [
        ("layer=[0, 1]", _opt_at([0, 1]), lambda r: result_vector_ok(r, [0, 1])),
        *[(f"layer={bad!r}", _opt_at(bad), None, mention) for bad, mention in BAD_LAYERS],
        ("layer=np.int64(1)", _opt_at(np.int64(1)), lambda r: result_vector_ok(r, [1])),
        ("datapoints=[]", lambda c: opt(c, []), None, "datapoint"),
        ("datapoints a dict", lambda c: opt(c, {"a": dp()}), None, "dict"),
        ("datapoints a list of str", lambda c: opt(c, ["the cat"]), None, "str"),
        ("datapoints=None", lambda c: optimize_vector(c.tiny, None, 1), None, "datapoints"),
        ("config a dict", lambda c: opt(c, None, 1, {"lr": 0.1}), None, "dict"),
        ("max_steps=0", lambda c: opt(c, max_steps=0), result_vector_ok),
        *[
            (f"OptimizeConfig({key}={bad!r})", make(OptimizeConfig, **{key: bad}), None, mention)
            for key, bad, mention in BAD_CONFIGS
        ],
        ("an unknown keyword (max_step=3)", lambda c: opt(c, max_step=3), None, "max_step"),
        ("init of the wrong shape", lambda c: opt(c, init=torch.ones(32)), None, "32"),
        ("init of NaN", lambda c: opt(c, init=nan()), None, "nan"),
        (
            "init whose norm is inf",
            lambda c: opt(c, init=torch.full((64,), 3e38)),
            None,
            "init",
        ),
        ("lr=1e30 (diverges)", lambda c: opt(c, lr=1e30, max_steps=3), result_vector_ok),
        ("NormCap(-1)", make(NormCap, -1.0), None, "-1"),
        ("NormCap(nan)", make(NormCap, float("nan")), None, "nan"),
        ("ClampSteering(strength=nan)", make(ClampSteering, strength=float("nan")), None, "nan"),
        ("no .grad left on the weights", _grads, _no_grads_left),
        ("no .grad and weights unchanged after Ctrl-C", _grads_interrupted, _no_grads_left),
        ("a datapoint longer than the context", lambda c: opt(c, dp("a " * 300)), None, "context"),
        (
            "positions that select no prompt token",
            lambda c: opt(c, dp("the cat", positions=Positions.at([40]))),
            None,
            "select",
        ),
        ("evaluate_objective with a wrong-size vector", _eval_obj(torch.ones(32)), None, "32"),
        ("evaluate_objective with a NaN vector", _eval_obj(nan()), None, "nan"),
        ("evaluate_objective unit='furlongs'", _eval_obj(None, unit="furlongs"), None, "furlongs"),
        ("SideEffect(prompts=[])", make(SideEffect, prompts=[]), None, "prompt"),
        ("SideEffect(weight=-1)", make(SideEffect, prompts=["hi"], weight=-1.0), None, "weight"),
        (
            "SideEffect(weight=nan)",
            make(SideEffect, prompts=["hi"], weight=float("nan")),
            None,
            "weight",
        ),
        ("TargetLoss(value=nan)", make(TargetLoss, value=float("nan")), None, "nan"),
        (
            "TargetLoss(value=1, patience=0)",
            make(TargetLoss, value=1.0, patience=0),
            None,
            "patience",
        ),
        ("Plateau(patience=0)", make(Plateau, patience=0), None, "patience"),
        ("Plateau(eps=-1)", make(Plateau, eps=-1.0), None, "eps"),
        (
            "stop=Plateau() (one rule, not a tuple)",
            lambda c: OptimizeConfig(stop=Plateau()),
            lambda cfg: len(cfg.stop) == 1,
        ),
        ("stop=('plateau',)", make(OptimizeConfig, stop=("plateau",)), None, "stop"),
        (
            "optimize_many([])",
            lambda c: optimize_many(c.tiny, []),
            lambda r: list(r) == [],
            "no jobs",
        ),
    ],
)
