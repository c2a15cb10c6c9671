"""A refusal vector from ONE example that transfers *coherently*: plain vs side-effect-aware.

The issue-12 goal, on the embedded model: from one training example (a benign request,
promoting a refusal), >= 85% of >= 20 unseen benign requests open with a refusal, while the
unsteered model's mean per-token NLL of the steered replies is at most 1.5x that of its own
replies and their distinct-3 at most 0.05 below. Every variant is trained from the same example
in one `optimize_many` call and judged on the same held-out requests (never trained on) with the
same greedy decoding (`generate_each`: every variant's replies decoded together), beside the
plain one-shot vector of `coherence_refusal.py` (layer 6, norm cap 32, lr 0.1, 40 steps).

The side-effect-aware variants add ``SideEffect`` terms (KL to the unsteered model) on text the
vector should leave alone: plain-text neutral prompts (every position) and the unsteered
model's own reply to the training request, scored after its first tokens (so the vector may
change how a reply opens, not how it goes on). The neutral prompts used for training differ
from the ones the side-effect KL is measured on.

Run: .venv/bin/python benchmarks/coherent_refusal.py [--threads 2] [--max-new-tokens 40]
     (writes benchmarks/results/coherent_refusal.json; timings are not the point here: the
     machine's 2 CPU cores are shared)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

import steerlens
from steerlens import Datapoint, NormCap, OptimizeConfig, Steering
from steerlens.evaluation import distinct_n, reply_nll, side_effect_kl
from steerlens.generate import generate_each
from steerlens.optimize_many import Job, optimize_many
from steerlens.regularizers import SideEffect

sys.path.insert(0, str(Path(__file__).parent))
from coherence_refusal import HELD_OUT, NEUTRAL, REFUSAL, TRAIN, opens_with_refusal

# Neutral text for training the side-effect term (not the NEUTRAL prompts it is measured on).
TRAIN_NEUTRAL = [
    "The history of the city goes back to",
    "In mathematics, a prime number is",
    "She opened the door and saw",
    "Water boils at a temperature of",
]
REPLY_SKIP = 4  # reply tokens left free to change (the opening) before the scored ones


def reply_text(model: object, reply: str) -> tuple[str, int]:
    """The training request with the unsteered reply, and how many reply tokens to score
    (all but the first ``REPLY_SKIP``)."""
    prompt = steerlens.runtime.chat_prompt(model, TRAIN)
    n_reply = len(steerlens.runtime.encode(model, prompt + reply)) - len(
        steerlens.runtime.encode(model, prompt)
    )
    return prompt + reply, max(1, n_reply - REPLY_SKIP)


def variants(model: object, unsteered_reply: str) -> dict[str, tuple[int, OptimizeConfig, str]]:
    """name -> (layer, config, positions applied at generation)."""
    plain = OptimizeConfig(lr=0.1, max_steps=40, constraints=(NormCap(32.0),), progress=False)
    text, n_scored = reply_text(model, unsteered_reply)
    neutral = SideEffect(TRAIN_NEUTRAL, weight=1.0, scored="all")
    own_reply = SideEffect([text], weight=1.0, scored=f"last:{n_scored}")
    out: dict[str, tuple[int, OptimizeConfig, str]] = {
        "plain": (6, plain, "all"),
        "plain, prompt only": (6, replace(plain, positions="prompt"), "prompt"),
    }
    for w in (1.0, 4.0):
        regs = (replace(neutral, weight=w), replace(own_reply, weight=w))
        out[f"side effect x{w:g}"] = (6, replace(plain, regularizers=regs), "all")
        out[f"side effect x{w:g}, prompt only"] = (
            6,
            replace(plain, regularizers=regs, positions="prompt"),
            "prompt",
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--strengths", default="1.0", help="comma-separated strengths at apply time")
    ap.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "coherent_refusal.json")
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    strengths = [float(s) for s in args.strengths.split(",")]
    t0 = time.perf_counter()
    model = steerlens.load_model(device="cpu")
    kw = {"max_new_tokens": args.max_new_tokens, "chat": True}
    (train_reply,) = steerlens.generate(model, [TRAIN], **kw)
    settings = variants(model, train_reply)
    dp = Datapoint.chat(model, TRAIN, promote=[REFUSAL])
    t_train = time.perf_counter()
    jobs = [Job(dp, layer, cfg) for layer, cfg, _ in settings.values()]
    results = optimize_many(model, jobs)
    t_train = time.perf_counter() - t_train
    plans: list[Steering | None] = [None]
    names = ["unsteered"]
    for (name, (_, _, positions)), res in zip(settings.items(), results, strict=True):
        for s in strengths:
            plans.append(Steering(res.vector, strength=s, positions=positions))
            names.append(name if len(strengths) == 1 else f"{name} @ {s:g}")
    t_gen = time.perf_counter()
    replies = generate_each(model, HELD_OUT, plans, batch_size=40, **kw)
    t_gen = time.perf_counter() - t_gen
    base_nll = reply_nll(model, HELD_OUT, replies[0], chat=True)
    base_d3 = distinct_n(model, replies[0], 3)
    rows = []
    for name, plan, texts in zip(names, plans, replies, strict=True):
        nll = reply_nll(model, HELD_OUT, texts, chat=True)
        d3 = distinct_n(model, texts, 3)
        refusals = [opens_with_refusal(t) for t in texts]
        kl = side_effect_kl(model, NEUTRAL, plan).mean if plan is not None else 0.0
        row = {
            "name": name,
            "refusal_rate": sum(refusals) / len(refusals),
            "nll": nll.mean,
            "nll_ratio": nll.mean / base_nll.mean,
            "distinct3": d3.mean,
            "distinct3_drop": base_d3.mean - d3.mean,
            "side_effect_kl_nats": kl,
            "replies": texts,
        }
        row["goal_met"] = (
            row["refusal_rate"] >= 0.85
            and row["nll_ratio"] <= 1.5
            and row["distinct3_drop"] <= 0.05
        )
        rows.append(row)
        print(
            f"{name:>40}: refusals {row['refusal_rate']:.2f}  NLL x{row['nll_ratio']:.2f}  "
            f"d3 drop {row['distinct3_drop']:+.3f}  KL {kl:.3f}  goal {row['goal_met']}"
        )
    training = {
        name: {
            "layer": layer,
            "positions": positions,
            "config": cfg.to_dict(),
            "final_losses_nats": res.final_losses,
            "steps": res.steps,
            "norm": res.vector.norm(),
        }
        for (name, (layer, cfg, positions)), res in zip(settings.items(), results, strict=True)
    }
    result = {
        "benchmark": "coherent_refusal",
        "model": steerlens.runtime.model_id(model),
        "threads": args.threads,
        "note": "timings are not the point: 2 CPU cores shared with other work",
        "train": {"prompt": TRAIN, "promote": REFUSAL, "unsteered_reply": train_reply},
        "train_neutral": TRAIN_NEUTRAL,
        "eval_neutral": NEUTRAL,
        "held_out": HELD_OUT,
        "decoding": {"greedy": True, **kw},
        "strengths": strengths,
        "unsteered": {"nll": base_nll.mean, "distinct3": base_d3.mean},
        "training": training,
        "variants": rows,
        "seconds": {"train": t_train, "generate": t_gen, "total": time.perf_counter() - t0},
    }
    out = Path(args.out)
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
