"""Cases: steering (Steering, steer(), hooks)."""

# mypy: ignore-errors
# (the cases pass wrong types on purpose)

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

import steerlens
from steerlens import Steering, steer
from steerlens.steering.interventions import Ablate

from .helpers import make, nan
from .runner import Ctx, cases


def _gen(plan: Callable[[], Any]) -> Callable[[Ctx], Any]:
    """Generate from the tiny model under ``plan()``, built when the case runs."""
    return lambda c: steerlens.generate(c.tiny, "the cat", plan(), max_new_tokens=2)


def _hooks_removed(ctx: Ctx) -> Any:
    try:
        with steer(ctx.tiny, Steering(torch.ones(64), layer=1)):
            raise RuntimeError("user code failed")
    except RuntimeError:
        pass
    return len([h for h in ctx.tiny.hook_dict.values() if h.fwd_hooks])


def _strength_zero(ctx: Ctx) -> Any:
    plain = steerlens.generate(ctx.tiny, "the cat", max_new_tokens=4)
    zero = steerlens.generate(
        ctx.tiny,
        "the cat",
        Steering(torch.ones(64) * 50, layer=1, strength=0.0),
        max_new_tokens=4,
    )
    return plain, zero


# (name, run, ok: None where only an error is right, what the error must name)
CASES = cases(
    "steering",
    [
        *[
            (
                f"Steering(strength={bad!r})",
                make(Steering, torch.ones(64), layer=1, strength=bad),
                None,
                "strength",
            )
            for bad in (float("nan"), float("inf"), "2", [1.0, 2.0], None)
        ],
        ("a tensor of the wrong size", _gen(lambda: Steering(torch.ones(32), layer=1)), None, "32"),
        ("a tensor without a layer", lambda c: Steering(torch.ones(64)), None, "layer"),
        ("layer 99", _gen(lambda: Steering(torch.ones(64), layer=99)), None, "99"),
        ("a NaN tensor", _gen(lambda: Steering(nan(), layer=1)), None, "nan"),
        (
            "positions past the prompt",
            _gen(lambda: Steering(torch.ones(64), layer=1, positions=[40])),
            None,
            "select",
        ),
        ("kind='bogus'", lambda c: Steering(torch.ones(64), layer=1, kind="bogus"), None, "bogus"),
        ("steer(model, 'a string')", lambda c: steer(c.tiny, "a string").__enter__(), None, "str"),
        (
            "a complex tensor",
            _gen(lambda: Steering(torch.ones(64, dtype=torch.complex64), layer=1)),
            None,
            "complex",
        ),
        ("a 2-D tensor", _gen(lambda: Steering(torch.ones(2, 64), layer=1)), None, "shape"),
        (
            "an int tensor",
            _gen(lambda: Steering(torch.ones(64, dtype=torch.int64), layer=1)),
            None,
            "int64",
        ),
        (
            "a tensor on the meta device",
            _gen(lambda: Steering(torch.ones(64, device="meta"), layer=1)),
            None,
            "meta",
        ),
        (
            "Ablate of a zero vector",
            _gen(lambda: Steering(Ablate(torch.zeros(64)), layer=1)),
            None,
            "zero",
        ),
        ("hooks removed after an error inside steer()", _hooks_removed, lambda n: n == 0),
        ("strength 0 equals unsteered", _strength_zero, lambda r: r[0] == r[1]),
    ],
)
