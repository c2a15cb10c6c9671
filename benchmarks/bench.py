"""The benchmark on the embedded model, timed per phase: ``--size default`` is `steerlens bench
run`'s default (4 behaviours, 2 layers, E = 8, 40 test items); ``--size miniature`` is notebook
09's (refusal and sycophancy, layer 8, E = 4, 20 test items); ``--size open-ended`` runs the
two bundled open-ended behaviours (benign-refusal, french) at the default layers, judging
32-token replies to 20 test requests.

Run alone (nothing else busy on the CPU): ``python benchmarks/bench.py --size default``. Writes
benchmarks/results/bench_<size>.json with the leaderboard, the rows and the phase times.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import steerlens
from steerlens.studies.bench import BenchSettings, benchmark
from steerlens.studies.bench.settings import DEFAULT_BEHAVIOURS

SIZES = {
    "miniature": (
        ("refusal", "sycophancy"),
        [8],
        BenchSettings(test_items=20, examples=4, validation_items=8, entanglement_items=10),
    ),
    "default": (DEFAULT_BEHAVIOURS, None, BenchSettings()),
    "open-ended": (("benign-refusal", "french"), None, BenchSettings()),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="miniature")
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    behaviours, layers, settings = SIZES[args.size]
    torch.set_num_threads(2)
    start = time.perf_counter()
    model = steerlens.load_model()
    result = benchmark(model, behaviours, layers=layers, settings=settings, progress=True)
    total = time.perf_counter() - start
    board = result.leaderboard()
    print(board.round(3).to_string())
    print(f"total {total:.0f} s (model load included), {torch.get_num_threads()} threads")
    out = Path(__file__).parent / "results" / f"bench_{args.size}.json"
    out.write_text(
        json.dumps(
            {
                "behaviours": list(behaviours),
                "layers": sorted({row["layer"] for row in result.rows}),
                "threads": torch.get_num_threads(),
                "total_s": total,
                "phase_s": result.times,
                "leaderboard": json.loads(board.to_json(orient="index")),
                "rows": [dict(r) for r in result.rows],
                "command": f"python benchmarks/bench.py --size {args.size}",
                "note": args.note,
            },
            indent=1,
            default=float,
        )
    )


if __name__ == "__main__":
    main()
