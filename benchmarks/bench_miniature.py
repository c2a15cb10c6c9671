"""The benchmark in miniature on the embedded model (notebook 09's settings), timed per phase.

Run alone (nothing else busy on the CPU): ``python benchmarks/bench_miniature.py``. Writes
benchmarks/results/bench_miniature.json with the leaderboard, the rows and the phase times.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

import steerlens
from steerlens.studies.bench import BenchSettings, benchmark

SETTINGS = BenchSettings(test_items=20, examples=4, validation_items=8, entanglement_items=10)
BEHAVIOURS = ("refusal", "sycophancy")
LAYERS = (8,)


def main() -> None:
    note = sys.argv[sys.argv.index("--note") + 1] if "--note" in sys.argv else ""
    torch.set_num_threads(2)
    start = time.perf_counter()
    model = steerlens.load_model()
    result = benchmark(model, BEHAVIOURS, layers=LAYERS, settings=SETTINGS, progress=True)
    total = time.perf_counter() - start
    board = result.leaderboard()
    print(board.round(3).to_string())
    print(f"total {total:.0f} s (model load included), {torch.get_num_threads()} threads")
    out = Path(__file__).parent / "results" / "bench_miniature.json"
    out.write_text(
        json.dumps(
            {
                "behaviours": BEHAVIOURS,
                "layers": LAYERS,
                "threads": torch.get_num_threads(),
                "total_s": total,
                "phase_s": result.times,
                "leaderboard": json.loads(board.to_json(orient="index")),
                "rows": [dict(r) for r in result.rows],
                "command": "python benchmarks/bench_miniature.py",
                "note": note,
            },
            indent=1,
            default=float,
        )
    )


if __name__ == "__main__":
    main()
