"""Vectors per minute: K one-shot vectors trained in one batched loop (`optimize_many`) vs a
loop of `optimize_vector` calls, the way a study is written without it.

The baseline is steerlens's own single-vector optimizer (already the fast packed engine, weights
frozen), so the ratio is what batching adds on top of it. Every job is the same amount of work
in both (a fixed step budget, no early stop), and the two must reach the same losses (checked
before the timing is written).

Run: .venv/bin/python benchmarks/optimize_many.py [--vectors 16] [--steps 10] [--threads 2]
     [--device cpu]
Writes benchmarks/results/optimize_many_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

import steerlens
from steerlens import Datapoint, NormCap, OptimizeConfig, optimize_vector
from steerlens.training.loop import Job, optimize_many

# Sixteen single examples of one behaviour (answer in French), as in the paper's study.
PROMPTS = [
    "Tell me about dogs.",
    "What is the capital of Japan?",
    "Give me advice for a job interview.",
    "Why is the sky blue?",
    "How do I bake bread?",
    "What is your favourite food?",
    "Describe a rainy day.",
    "How do plants grow?",
    "What should I do this weekend?",
    "Explain what a computer is.",
    "Tell me a fact about the ocean.",
    "How do I learn to swim?",
    "What is music?",
    "Describe your morning.",
    "Why do cats purr?",
    "What makes a good friend?",
]
TARGET = "Bien sûr ! Voici"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vectors", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--layer", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = steerlens.load_model(device=args.device)
    cfg = OptimizeConfig(lr=0.1, max_steps=args.steps, constraints=(NormCap(32.0),), progress=False)
    jobs = [
        Job(
            Datapoint.from_message(model, PROMPTS[i % len(PROMPTS)], promote=[TARGET]),
            args.layer,
            replace(cfg, seed=i),
        )
        for i in range(args.vectors)
    ]
    optimize_many(model, jobs[:2])  # warm-up: first-call allocations, not steady state

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    sync()
    t0 = time.perf_counter()
    batched = optimize_many(model, jobs)
    sync()
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    loop = [optimize_vector(model, j.datapoints, j.layer, j.config) for j in jobs]
    sync()
    t_loop = time.perf_counter() - t0
    loss_diff = max(
        float(np.max(np.abs(a.loss_history - b.loss_history) / np.abs(b.loss_history)))
        for a, b in zip(batched, loop, strict=True)
    )
    vec_diff = max(
        float((a.vector.vector - b.vector.vector).norm() / b.vector.vector.norm())
        for a, b in zip(batched, loop, strict=True)
    )
    result = {
        "model": steerlens.runtime.model_id(model),
        "device": args.device,
        "vectors": args.vectors,
        "steps_per_vector": args.steps,
        "layer": args.layer,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "engine": batched[0].engine,
        "seconds_batched": t_batched,
        "seconds_loop": t_loop,
        "vectors_per_minute_batched": 60 * args.vectors / t_batched,
        "vectors_per_minute_loop": 60 * args.vectors / t_loop,
        "speedup": t_loop / t_batched,
        "max_relative_loss_difference": loss_diff,
        "max_relative_vector_difference": vec_diff,
    }
    if loss_diff > 1e-4 or vec_diff > 1e-4:
        raise SystemExit(f"batched and looped runs disagree: {result}")
    out = Path(__file__).parent / "results" / f"optimize_many_{args.device.split(':')[0]}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
