"""Cases: vector values (from_tensor, arithmetic, the constructor)."""

# mypy: ignore-errors
# (the cases pass wrong types on purpose)

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from steerlens import SteeringVector

from .helpers import is_vector, nan
from .runner import Ctx, cases


def _from_tensor(values: Any, layer: Any = 1) -> Callable[[Ctx], Any]:
    """`SteeringVector.from_tensor` of ``values`` at ``layer`` of the tiny model."""
    return lambda c: SteeringVector.from_tensor(values, layer=layer, model=c.tiny)


def _at_layer_1(v: Any) -> bool:
    return is_vector(v, [1])


# (name, run, ok: None where only an error is right, what the error must name[, flags])
CASES = cases(
    "vector",
    [
        ("from_tensor of a 2-D tensor", _from_tensor(torch.ones(2, 64)), None, "shape"),
        ("from_tensor of NaN", _from_tensor(nan()), None, "nan"),
        (
            "from_tensor of entries ~1e30 (norm inf)",
            _from_tensor(torch.full((64,), 3e38)),
            None,
            "norm",
        ),
        ("from_tensor at layer -1", _from_tensor(torch.ones(64), layer=-1), None, "-1"),
        ("from_tensor at layer '1'", _from_tensor(torch.ones(64), layer="1"), None, "'1'"),
        (
            "from_tensor at layer 5 of a 2-layer model",
            _from_tensor(torch.ones(64), layer=5),
            None,
            "5",
        ),
        ("from_tensor at no layer ([])", _from_tensor(torch.ones(64), layer=[]), None, "layer"),
        (
            "from_tensor of a complex tensor",
            _from_tensor(torch.ones(64, dtype=torch.complex64)),
            None,
            "complex",
        ),
        (
            "from_tensor of an int tensor",
            _from_tensor(torch.ones(64, dtype=torch.int64)),
            None,
            "int64",
        ),
        (
            "from_tensor of a numpy array",
            _from_tensor(np.ones(64, dtype=np.float32)),
            _at_layer_1,
            "ndarray",
        ),
        ("from_tensor of a list", _from_tensor([1.0] * 64), _at_layer_1, "list"),
        (
            "from_tensor of the wrong size for the model",
            _from_tensor(torch.ones(32)),
            None,
            ("32", "64"),
        ),
        (
            "from_tensor without model or model_id",
            lambda c: SteeringVector.from_tensor(torch.ones(64), layer=1),
            None,
            "model",
        ),
        ("v * nan", lambda c: c.vector() * float("nan"), None, "nan"),
        ("v * inf", lambda c: c.vector() * float("inf"), None, "inf"),
        ("v / 0", lambda c: c.vector() / 0, None, "0"),
        ("v * 'x'", lambda c: c.vector() * "x", None, None, {"python_ok": (TypeError,)}),
        (
            "v + a vector of another d_model",
            lambda c: c.vector() + c.vector(d_model=32),
            None,
            "32",
        ),
        (
            "v + a vector at other layers",
            lambda c: c.vector(layers=(0,)) + c.vector(layers=(1,)),
            is_vector,
            "layer",
        ),
        (
            "SteeringVector with no directions",
            lambda c: SteeringVector({}, "m"),
            None,
            "direction",
        ),
        (
            "SteeringVector with an empty model_id",
            lambda c: SteeringVector({1: torch.ones(64)}, ""),
            None,
            "model_id",
        ),
        (
            "SteeringVector with a NaN direction",
            lambda c: SteeringVector({1: nan()}, "m"),
            None,
            "nan",
        ),
        ("v * 1e38 (norm overflows)", lambda c: c.vector() * 1e38, None, "inf"),
    ],
)
