"""Cases: interop with other steering libraries (repeng, steering-vectors).

Each needs its optional package (absent in CI; repeng 0.4 cannot be imported under NumPy 2):
where it cannot be imported, the case is not run."""

# mypy: ignore-errors
# (the cases pass wrong types on purpose)

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from steerlens import SteeringVector
from steerlens.interop import libraries as interop

from .helpers import clamp, opt
from .runner import Ctx, cases

REPENG = {"needs": "repeng"}
STEERING_VECTORS = {"needs": "steering_vectors"}


def _deep_vec() -> Any:
    """A seeded vector at layer 2 (of the 4-layer model)."""
    g = torch.Generator().manual_seed(1)
    return SteeringVector({2: torch.randn(64, generator=g)}, "steerlens/tiny-llama")


def _round_trip(to: Callable[..., Any], back: Callable[..., Any]) -> Callable[[Ctx], Any]:
    def run(ctx: Ctx) -> Any:
        v = _deep_vec()
        return v, back(to(v, model=ctx.model(4)), ctx.model(4))

    return run


def _same_vector(r: Any) -> bool:
    return r[1].layers == [2] and torch.allclose(r[0].directions[2], r[1].directions[2])


def _clamp_repeng(ctx: Ctx) -> Any:
    v = opt(ctx, layer=[1], kind=clamp()).vector
    return interop.to_repeng(v, model=ctx.tiny)


def _repeng_other_size(ctx: Ctx) -> Any:
    cv = interop.to_repeng(_deep_vec(), model=ctx.model(4))
    return interop.from_repeng(cv, ctx.model(4, 32))


# (name, run, ok: None where only an error is right, what the error must name, flags)
CASES = cases(
    "interop",
    [
        (
            "to_repeng / from_repeng round trip",
            _round_trip(interop.to_repeng, interop.from_repeng),
            _same_vector,
            None,
            REPENG,
        ),
        (
            "to_steering_vectors / from_steering_vectors round trip",
            _round_trip(interop.to_steering_vectors, interop.from_steering_vectors),
            _same_vector,
            None,
            STEERING_VECTORS,
        ),
        ("to_repeng a clamp-steering vector", _clamp_repeng, None, "clamp", REPENG),
        (
            "from_repeng of a dict",
            lambda c: interop.from_repeng({2: [0.0] * 64}, c.model(4)),
            None,
            "dict",
            REPENG,
        ),
        (
            "from_steering_vectors of a str",
            lambda c: interop.from_steering_vectors("vector", c.model(4)),
            None,
            "str",
            STEERING_VECTORS,
        ),
        (
            "from_repeng onto a model of another d_model",
            _repeng_other_size,
            None,
            "64",
            REPENG,
        ),
        (
            "to_repeng of a str",
            lambda c: interop.to_repeng("v", model=c.tiny),
            None,
            "str",
            REPENG,
        ),
    ],
)
