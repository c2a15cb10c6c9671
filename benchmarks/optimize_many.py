"""Vectors per minute: K one-shot vectors trained in one batched loop (`optimize_many`) vs a
loop of `optimize_vector` calls, the way a study is written without it.

The baseline is steerlens's own single-vector optimizer (already the fast packed engine, weights
frozen), so the ratio is what batching adds on top of it. Every job is the same amount of work
in both (a fixed step budget, no early stop), and the two must reach the same losses (checked
before the timing is written).

Run: .venv/bin/python benchmarks/optimize_many.py [--vectors 16] [--steps 10] [--threads 2]
     [--device cpu] [--dtype float32] [--tag K16]
Writes benchmarks/results/optimize_many[_<tag>]_<device>[_<dtype>].json (`device_options`).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import replace

import numpy as np
import torch
from device_options import AGREEMENT, DTYPES, add_device_options, check_device, results_path, sync

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
    ap.add_argument("--tag", default="", help="added to the results file's name (e.g. K64)")
    add_device_options(ap)
    args = ap.parse_args()
    check_device(args.device)
    torch.set_num_threads(args.threads)
    model = steerlens.load_model(device=args.device, dtype=DTYPES[args.dtype])
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
    sync(args.device)
    t0 = time.perf_counter()
    batched = optimize_many(model, jobs)
    sync(args.device)
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    loop = [optimize_vector(model, j.datapoints, j.layer, j.config) for j in jobs]
    sync(args.device)
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
        "dtype": args.dtype,
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
    if max(loss_diff, vec_diff) > AGREEMENT[args.dtype]:
        raise SystemExit(f"batched and looped runs disagree: {result}")
    name = "optimize_many" + (f"_{args.tag}" if args.tag else "")
    out = results_path(name, args.device, args.dtype)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
