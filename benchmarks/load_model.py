"""Cold and warm load time of the embedded model, each in a fresh process.

Run alone on a quiet machine (the 1-minute load average before each child is recorded):
    .venv/bin/python benchmarks/load_model.py   (writes benchmarks/results/load_model.json)

``libraries_import_s`` is the part of a warm ``load_model()`` that steerlens cannot cut: the
first import of transformers (with the Llama modeling code) and TransformerLens, timed alone in
fresh processes after ``import steerlens``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

CHILD = """
import os, time, json
load = os.getloadavg()[0]
t0 = time.perf_counter()
import steerlens
t1 = time.perf_counter()
steerlens.load_model(device="cpu")
t2 = time.perf_counter()
steerlens.load_model(device="cpu")  # again, libraries already imported (as in a notebook)
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_model_s": t2 - t1, "total_s": t2 - t0,
                  "second_load_model_s": t3 - t2, "loadavg_1min": load}))
"""

LIBRARIES = """
import time, json
import steerlens
t0 = time.perf_counter()
import transformer_lens.model_bridge
import transformers.models.llama.modeling_llama
print(json.dumps({"libraries_import_s": time.perf_counter() - t0}))
"""


def run_child(env: dict[str, str], code: str = CHILD) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    threads = os.environ.get("BENCH_THREADS", "2")
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "STEERLENS_CACHE": cache, "OMP_NUM_THREADS": threads}
        cold = run_child(env)
        warm = [run_child(env) for _ in range(3)]
        libraries = [run_child(env, LIBRARIES)["libraries_import_s"] for _ in range(3)]
    result = {
        "benchmark": "load_model",
        "threads": int(threads),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        # transformers imports scipy.optimize when scipy is there (not a steerlens dependency).
        "scipy_installed": importlib.util.find_spec("scipy") is not None,
        "cold": cold,
        "warm": warm,
        "warm_load_model_s_best": min(w["load_model_s"] for w in warm),
        "warm_total_s_best": min(w["total_s"] for w in warm),
        "libraries_import_s_best": min(libraries),
    }
    out = Path(__file__).parent / "results" / "load_model.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
