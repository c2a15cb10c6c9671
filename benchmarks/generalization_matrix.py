"""Prompts per second for a generalization matrix: `generalization_matrix` (every vector x
prompt row decoded in shared batches, each row under its own steering) vs what a study does
without it: per vector, `generate` on the prompts and `completion_logprobs` on the examples.

Both sides do the same work at the same batch size: greedy replies of every vector to every
prompt, judged, and each example's target log-probability under every vector. The replies must
be identical (checked before the timing is written).

Run: .venv/bin/python benchmarks/generalization_matrix.py [--vectors 16] [--prompts 32]
     [--tokens 24] [--threads 2] [--device cpu]
Writes benchmarks/results/generalization_matrix_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import steerlens
from steerlens import Datapoint, SteeringVector, generate
from steerlens.evaluation import StringMatchJudge, completion_logprobs
from steerlens.studies import generalization_matrix

TOPICS = [
    "dogs", "the ocean", "bread", "music", "rain", "computers", "friendship", "mountains",
    "coffee", "trains", "the moon", "gardens", "chess", "winter", "books", "bicycles",
]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vectors", type=int, default=16)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--layer", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = steerlens.load_model(device=args.device)
    chat = steerlens.runtime.chat_prompt
    prompts = [
        chat(model, f"{kind} {TOPICS[i % len(TOPICS)]}.")
        for i, kind in enumerate(["Tell me about"] * 16 + ["Write one sentence about"] * 16)
    ][: args.prompts]
    examples = [Datapoint(prompts[i], promote=[" Bien sûr"], chat=False) for i in range(4)]
    gen = torch.Generator().manual_seed(0)
    d = steerlens.runtime.d_model(model)
    vectors = {
        f"v{i}": SteeringVector.from_tensor(
            torch.randn(d, generator=gen) * 8.0, layer=args.layer, model=model
        )
        for i in range(args.vectors)
    }
    judge = StringMatchJudge([" est ", " la ", " le "])
    kw = {"max_new_tokens": args.tokens, "batch_size": args.batch_size, "progress": False}

    t0 = time.perf_counter()
    matrix = generalization_matrix(model, vectors, examples, held_out=prompts, judge=judge,
                                   trained_on={k: [] for k in vectors}, **kw)  # fmt: skip
    t_matrix = time.perf_counter() - t0

    t0 = time.perf_counter()
    texts = [e.prompt for e in examples] + prompts
    loop_replies = {}
    for name, vector in vectors.items():
        loop_replies[name] = generate(model, texts, vector, chat=False, **kw)
        judge.judge_all(loop_replies[name])
        completion_logprobs(model, [e.prompt for e in examples], [" Bien sûr"], steering=vector,
                            chat=False, batch_size=args.batch_size)  # fmt: skip
    t_loop = time.perf_counter() - t0

    by_vector = {name: {} for name in vectors}
    for row in matrix.rows:
        by_vector[row.vector][row.prompt] = row.reply
    mismatches = sum(
        by_vector[name][p] != r
        for name in vectors
        for p, r in zip(texts, loop_replies[name], strict=True)
    )
    rows = args.vectors * len(texts)
    result = {
        "model": steerlens.runtime.model_id(model),
        "device": args.device,
        "vectors": args.vectors,
        "prompts": len(texts),
        "new_tokens": args.tokens,
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "seconds_matrix": t_matrix,
        "seconds_loop": t_loop,
        "prompts_per_second_matrix": rows / t_matrix,
        "prompts_per_second_loop": rows / t_loop,
        "speedup": t_loop / t_matrix,
        "reply_mismatches": mismatches,
    }
    out = (
        Path(__file__).parent
        / "results"
        / f"generalization_matrix_{args.device.split(':')[0]}.json"
    )
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
