"""The ``--device`` and ``--dtype`` options every timed benchmark takes, and where each
(device, dtype) pair writes its results.

float32 keeps the file names the CPU results have always had (``optimize_step_cpu.json``);
another dtype adds its short name (``optimize_step_cuda_bf16.json``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
SHORT = {"float32": "fp32", "bfloat16": "bf16"}
# How closely two computations of the same losses must agree (relative): they add the same
# float terms in another order. float32's unit roundoff is 6e-8, so 1e-4 is a wide margin;
# bfloat16's is 3.9e-3, and a loss passes through a few dozen roundings of it.
AGREEMENT = {"float32": 1e-4, "bfloat16": 5e-2}


def add_device_options(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="model dtype")


def check_device(device: str) -> None:
    """Exit with a clear message when ``device`` is CUDA and this machine has none."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(
            f"--device {device}: torch {torch.__version__} sees no CUDA device here; "
            "run on a machine with a GPU or pass --device cpu."
        )


def sync(device: str) -> None:
    """Wait for queued GPU work, so that a timer read after it counts that work."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def results_path(benchmark: str, device: str, dtype: str) -> Path:
    """``results/{benchmark}_{device}[_{dtype}].json`` (no dtype part for float32)."""
    kind = device.split(":")[0]
    name = kind if dtype == "float32" else f"{kind}_{SHORT[dtype]}"
    RESULTS.mkdir(exist_ok=True)
    return RESULTS / f"{benchmark}_{name}.json"
