"""Cases: model loading (load_model's device, dtype and name)."""

# mypy: ignore-errors
# (the cases pass wrong types on purpose)

from __future__ import annotations

import os
import time
from typing import Any

import torch

from steerlens import errors, load_model

from .helpers import make
from .runner import Ctx, cases

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def _unknown(ctx: Ctx) -> Any:
    before = {k: os.environ.get(k) for k in OFFLINE_VARIABLES}
    t0 = time.perf_counter()
    try:
        load_model("no-such-org/no-such-model")
    except Exception as exc:
        after = {k: os.environ.get(k) for k in before}
        return type(exc).__name__, str(exc), after == before, time.perf_counter() - t0
    return None


def _unknown_ok(r: Any) -> bool:
    """A steerlens error naming the model, the environment untouched, within a minute."""
    return (
        r is not None and hasattr(errors, r[0]) and "no-such-model" in r[1] and r[2] and r[3] < 60
    )


# (name, run, ok: None where only an error is right, what the error must name)
CASES = cases(
    "model",
    [
        (
            "load_model(device='cuda') on a CPU machine",
            make(load_model, device="cuda"),
            None,
            "cuda",
        ),
        ("load_model(device='tpu')", make(load_model, device="tpu"), None, "tpu"),
        ("load_model(dtype='float16')", make(load_model, dtype="float16"), None, "float16"),
        ("load_model(dtype=torch.int8)", make(load_model, dtype=torch.int8), None, "int8"),
        ("load_model(123)", make(load_model, 123), None, "123"),
        ("an unknown hub model offline: clear, fast, env untouched", _unknown, _unknown_ok),
    ],
)
