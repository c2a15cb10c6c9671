"""A/B propensities of many steerings: shared batches vs one steering at a time.

5 multipliers x 6 random unit vectors (scaled to norm 20, applied at layer 8) x 40 chat-formatted
A/B prompts (the bundled corrigible-neutral-HHH test items, each ending in "(" so the next token
is the answer letter). Shared: `steerlens.evaluation.propensities`, every (steering, prompt) pair
a row of batches that mix steerings; with ``--positions answer`` (the benchmark's rule: only
the tokens after the question are steered) each prompt's unsteered prefix runs once and its
rows share its KV cache. One at a time: for each (vector, multiplier), ``with steer(model,
plan)`` around `steerlens.runtime.last_logits` over the 40 prompts (what a user would write).
Both get the same token lists and batch size; their propensities are compared.

Run alone: .venv/bin/python benchmarks/many_steerings.py [--positions answer|all]
Writes benchmarks/results/many_steerings_<positions>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import steerlens
from steerlens import runtime
from steerlens.datasets import load_behaviour
from steerlens.evaluation import propensities
from steerlens.studies.bench.methods import answer_positions

MULTIPLIERS = (-2.0, -1.0, 0.5, 1.0, 2.0)


def ab_prompts(model, n):
    """``n`` chat-formatted A/B prompts ending in "(", their tokens, and the token ids of the
    matching and the other answer letter after each."""
    items = load_behaviour("corrigible-neutral-HHH").test[:n]
    if len(items) < n:
        raise SystemExit(f"only {len(items)} test items; ask for fewer prompts.")
    rows, matching, other = [], [], []
    for item in items:
        text = runtime.chat_prompt(model, item.prompt()) + "("
        ids = runtime.encode(model, text)
        letters = {}
        for letter in ("A", "B"):
            tokens, merged = runtime.completion_tokens(model, ids, text, letter)
            if merged or len(tokens) != 1:
                raise SystemExit(f"answer {letter!r} is not one token after the prompt.")
            letters[letter] = tokens[0]
        yes = item.matching_letter()
        rows.append(ids)
        matching.append(letters[yes])
        other.append(letters["B" if yes == "A" else "A"])
    return rows, matching, other


def one_at_a_time(model, rows, plans, matching, other, batch_size):
    """For each plan: ``steer`` + ``runtime.last_logits`` over every prompt."""
    m, o = torch.tensor(matching), torch.tensor(other)
    out = []
    with torch.no_grad():
        for plan in plans:
            with steerlens.steer(model, plan):
                logp = runtime.last_logits(model, rows, batch_size=batch_size).log_softmax(-1)
            logp = logp.cpu()
            index = torch.arange(len(rows))
            out.append(logp[index, m] - logp[index, o])
    return torch.stack(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--layer", type=int, default=8)
    ap.add_argument("--norm", type=float, default=20.0)
    ap.add_argument("--vectors", type=int, default=6)
    ap.add_argument("--prompts", type=int, default=40)
    ap.add_argument(
        "--positions",
        choices=["all", "answer"],
        default="answer",
        help="all: steer every token; answer: the benchmark's rule (the tokens after the "
        "question), where the unsteered prefix is shared",
    )
    ap.add_argument("--note", default="", help="recorded with the result (e.g. machine load)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = steerlens.load_model(device=args.device)
    rows, matching, other = ab_prompts(model, args.prompts)
    g = torch.Generator().manual_seed(0)
    directions = [torch.randn(runtime.d_model(model), generator=g) for _ in range(args.vectors)]
    vectors = [args.norm * d / d.norm() for d in directions]
    where = answer_positions(model) if args.positions == "answer" else "all"
    plans = [
        steerlens.Steering(v, layer=args.layer, strength=mult, positions=where)
        for v in vectors
        for mult in MULTIPLIERS
    ]

    # Warm-up (allocator, first-call costs) on a few rows, then each method once.
    warm = rows[:4]
    one_at_a_time(model, warm, plans[:1], matching[:4], other[:4], args.batch_size)
    propensities(model, warm, plans[:2], matching[:4], other[:4], progress=False)

    t0 = time.perf_counter()
    alone = one_at_a_time(model, rows, plans, matching, other, args.batch_size)
    s_alone = time.perf_counter() - t0
    t0 = time.perf_counter()
    shared = propensities(
        model, rows, plans, matching, other, batch_size=args.batch_size, progress=False
    )
    s_shared = time.perf_counter() - t0

    lengths = [len(r) for r in rows]
    result = {
        "benchmark": "many_steerings",
        "model": runtime.model_id(model),
        "layer": args.layer,
        "vector_norm": args.norm,
        "positions": args.positions if args.positions == "all" else where.describe(),
        "multipliers": list(MULTIPLIERS),
        "vectors": args.vectors,
        "prompts": len(rows),
        "steerings": len(plans),
        "rows": len(plans) * len(rows),
        "prompt_tokens": {"min": min(lengths), "max": max(lengths), "total": sum(lengths)},
        "batch_size": args.batch_size,
        "threads": args.threads,
        "device": args.device,
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "seconds_one_at_a_time": s_alone,
        "seconds_shared_batches": s_shared,
        "speedup": s_alone / s_shared,
        "max_abs_propensity_difference": float((alone - shared.to(alone.dtype)).abs().max()),
        "mean_abs_propensity": float(alone.abs().mean()),
        "note": args.note,
    }
    out = Path(__file__).parent / "results" / f"many_steerings_{args.positions}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
