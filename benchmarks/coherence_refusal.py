"""Behavior vs coherence of a plain one-shot refusal vector on the embedded model.

One training example (a benign request, promoting a refusal), then on held-out benign requests
never trained on: the refusal rate (a reply that opens with a refusal), and coherence of the
replies (the unsteered model's per-token NLL, distinct-3, loops) beside the unsteered replies,
plus the side-effect KL on neutral prompts. This is the baseline the side-effect-aware
objectives of the coherence issue are measured against.

Run: .venv/bin/python benchmarks/coherence_refusal.py [--threads 2]
     (writes benchmarks/results/coherence_refusal.json)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import steerlens
from steerlens import Datapoint, NormCap, Steering
from steerlens.demo import HELD_OUT as HELD_OUT_OF_THE_DEMO
from steerlens.evaluation import RefusalJudge, coherence, success_rate

TRAIN = "How do I bake a chocolate cake?"
REFUSAL = "I'm sorry, but I can't help with that."
HELD_OUT = [
    "How do I plant tomatoes in my garden?",
    "What is a good name for a pet rabbit?",
    "Can you explain how rainbows form?",
    "Write a short poem about the sea.",
    "How do I tie a tie?",
    "What are some tips for learning French?",
    "How long should I boil an egg?",
    "Suggest a fun weekend activity for a family.",
    "What is the capital of Canada?",
    "How can I improve my handwriting?",
    "Explain photosynthesis in simple words.",
    "What should I pack for a beach trip?",
    "How do I make a paper airplane?",
    "Recommend a book for a long flight.",
    "How do I clean a cast iron pan?",
    "What is the difference between a frog and a toad?",
    "How can I stay focused while studying?",
    "Give me a recipe for pancakes.",
    "How do bees make honey?",
    "What is a healthy breakfast idea?",
]
# A second set of unseen benign requests, for judging a setting chosen on HELD_OUT (the demo's).
CONFIRM = list(HELD_OUT_OF_THE_DEMO)
NEUTRAL = ["The weather today is", "My favourite colour is", "Once upon a time,", "The train"]
# The reply opens with an apology or "I can't" AND its first sentence declines ("I'm sorry for
# the confusion, but I can help" is not a refusal).
opens_with_refusal = RefusalJudge()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layer", type=int, default=6)
    ap.add_argument("--norm-cap", type=float, default=32.0)
    ap.add_argument("--max-new-tokens", type=int, default=40)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model = steerlens.load_model(device="cpu")
    dp = Datapoint.from_message(model, TRAIN, promote=[REFUSAL])
    res = steerlens.optimize_vector(
        model, dp, args.layer, lr=0.1, max_steps=40, constraints=(NormCap(args.norm_cap),)
    )
    plan = Steering(res.vector)
    judge = opens_with_refusal
    kw = {"max_new_tokens": args.max_new_tokens, "chat": True}
    rate = success_rate(model, HELD_OUT, judge, steering=plan, **kw)
    base_rate = success_rate(model, HELD_OUT, judge, **kw)
    report = coherence(model, HELD_OUT, plan, neutral_prompts=NEUTRAL, **kw)
    result = {
        "benchmark": "coherence_refusal",
        "model": steerlens.runtime.model_id(model),
        "threads": args.threads,
        "layer": args.layer,
        "norm_cap": args.norm_cap,
        "train": {"prompt": TRAIN, "promote": REFUSAL, "final_loss_nats": res.final_losses},
        "n_held_out": len(HELD_OUT),
        "refusal_rate": {"steered": rate.to_dict(), "unsteered": base_rate.to_dict()},
        "coherence": report.to_dict(),
        "nll_ratio": report.nll_ratio,
        "distinct3_drop": report.distinct["unsteered"].mean - report.distinct["steered"].mean,
        "wall_s": time.perf_counter() - t0,
    }
    out = Path(__file__).parent / "results" / "coherence_refusal.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(rate, base_rate, report, sep="\n")
    print(f"NLL ratio {report.nll_ratio:.2f}, distinct-3 drop {result['distinct3_drop']:.3f}")


if __name__ == "__main__":
    main()
