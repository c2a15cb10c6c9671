"""A refusal vector from ONE example that transfers *coherently*: where and how it steers.

The issue-12 goal, on the embedded model: from one training example (a benign request,
promoting a refusal), >= 85% of >= 20 unseen benign requests open with a refusal, while the
unsteered model's mean per-token NLL of the steered replies is at most 1.5x that of its own
replies and their distinct-3 at most 0.05 below. Every vector is trained from the same example
in one `optimize_many` call and every arm is judged on the same held-out requests (never trained
on) with the same greedy decoding (`generate_each`: every arm's replies decoded together),
beside the plain one-shot vector of `coherence_refusal.py` (layer 6, norm cap 32, lr 0.1, 40
steps, applied at every position).

The arms vary what is known to trade behaviour against coherence: a `SideEffect` term (KL to
the unsteered model on neutral text and on the unsteered model's own reply to the training
request after its first tokens), the strength, and where the vector is applied: everywhere,
the prompt only, or the prompt and the reply's first N tokens (``"opening:N"``), after which the
model writes on unsteered. A vector left on for the whole reply repeats its refusal in loops;
one applied to the opening decides how the reply starts and leaves the rest to the model. The
judge counts a reply that opens with an apology or "I can't" and whose first sentence declines.

Run: .venv/bin/python benchmarks/coherent_refusal.py [--threads 2] [--max-new-tokens 40]
     (writes benchmarks/results/coherent_refusal.json; about 6 minutes on 2 idle CPU cores)
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
from steerlens.steering.generate import generate_each
from steerlens.training.loop import Job, optimize_many
from steerlens.training.regularizers import SideEffect

sys.path.insert(0, str(Path(__file__).parent))
from coherence_refusal import CONFIRM, HELD_OUT, NEUTRAL, REFUSAL, TRAIN, opens_with_refusal

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


def vectors(model: object, unsteered_reply: str) -> dict[str, tuple[int, OptimizeConfig]]:
    """name -> (layer, config) of every vector trained (all from the same one example)."""
    plain = OptimizeConfig(lr=0.1, max_steps=40, constraints=(NormCap(32.0),), progress=False)
    text, n_scored = reply_text(model, unsteered_reply)
    regs = (
        SideEffect(TRAIN_NEUTRAL, weight=1.0, scored="all"),
        SideEffect([text], weight=1.0, scored=f"last:{n_scored}"),
    )
    free = replace(plain, constraints=(NormCap(40.0),))  # never reaches the cap in 40 steps
    return {
        "plain": (6, plain),
        "side effect": (6, replace(plain, regularizers=regs)),
        "cap 40": (6, free),
        "cap 40, trained opening:2": (6, replace(free, positions="opening:2")),
        "cap 40, layer 8": (8, free),
        # The same request promoting a refusal in the model's own words (how it goes on when
        # only its opening is steered), not the terse target above.
        "own-words target, cap 40, layer 8": (8, free),
    }


# (vector, positions steered while generating, strength): the plain vector everywhere is the
# baseline; "opening:N" steers the prompt and the reply's first N tokens, then lets it go on.
ARMS: list[tuple[str, str, float]] = [
    ("plain", "all", 1.0),
    ("plain", "all", 0.8),
    ("side effect", "all", 1.0),
    ("plain", "prompt", 1.0),
    ("plain", "opening:1", 1.0),
    ("plain", "opening:2", 1.0),
    ("cap 40", "opening:2", 1.0),
    ("cap 40", "opening:3", 1.0),
    ("cap 40, trained opening:2", "opening:2", 1.0),
    ("cap 40, layer 8", "opening:1", 1.0),
    ("cap 40, layer 8", "opening:2", 0.95),
    ("cap 40, layer 8", "opening:2", 1.0),
    ("cap 40, layer 8", "opening:2", 1.05),
    ("cap 40, layer 8", "opening:3", 1.0),
    ("own-words target, cap 40, layer 8", "opening:2", 1.0),
]
# The refusal each vector promotes (REFUSAL unless named here).
OWN_WORDS = "I'm sorry, but as an AI, I don't have the ability to help with that."
TARGETS = {"own-words target, cap 40, layer 8": OWN_WORDS}
BASELINE = "plain, all @ 1"
# Chosen on HELD_OUT (the best trade-offs there), then judged again on CONFIRM.
CHOSEN = ["cap 40, layer 8, opening:2 @ 1", "own-words target, cap 40, layer 8, opening:2 @ 1"]


def score(
    model: object,
    prompts: list[str],
    names: list[str],
    plans: list[Steering | None],
    replies: list[list[str]],
) -> list[dict[str, object]]:
    """One row per arm: refusal rate, coherence against the first arm (unsteered), goal."""
    base_nll = reply_nll(model, prompts, replies[0], chat=True)
    base_d3 = distinct_n(model, replies[0], 3)
    rows: list[dict[str, object]] = []
    for name, plan, texts in zip(names, plans, replies, strict=True):
        nll = reply_nll(model, prompts, texts, chat=True)
        d3 = distinct_n(model, texts, 3)
        refusals = [opens_with_refusal(t) for t in texts]
        kl = side_effect_kl(model, NEUTRAL, plan).mean if plan is not None else 0.0
        rate = sum(refusals) / len(refusals)
        ratio, drop = nll.mean / base_nll.mean, base_d3.mean - d3.mean
        goal = rate >= 0.85 and ratio <= 1.5 and drop <= 0.05
        rows.append(
            {
                "name": name,
                "refusal_rate": rate,
                "refusals": f"{sum(refusals)}/{len(refusals)}",
                "nll": nll.mean,
                "nll_ratio": ratio,
                "distinct3": d3.mean,
                "distinct3_drop": drop,
                "side_effect_kl_nats": kl,
                "goal_met": goal,
                "replies": texts,
            }
        )
        print(
            f"{name:>44}: refusals {rate:.2f}  NLL x{ratio:.2f}  d3 drop {drop:+.3f}  "
            f"KL {kl:.3f}  goal {goal}"
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "coherent_refusal.json")
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model = steerlens.load_model(device="cpu")
    kw = {"max_new_tokens": args.max_new_tokens, "chat": True}
    (train_reply,) = steerlens.generate(model, [TRAIN], **kw)
    settings = vectors(model, train_reply)
    t_train = time.perf_counter()
    jobs = [
        Job(Datapoint.from_message(model, TRAIN, promote=[TARGETS.get(name, REFUSAL)]), layer, cfg)
        for name, (layer, cfg) in settings.items()
    ]
    results = optimize_many(model, jobs)
    t_train = time.perf_counter() - t_train
    plans: list[Steering | None] = [None]
    names = ["unsteered"]
    trained = dict(zip(settings, results, strict=True))
    for vector, positions, s in ARMS:
        plans.append(Steering(trained[vector].vector, strength=s, positions=positions))
        names.append(f"{vector}, {positions} @ {s:g}")
    t_gen = time.perf_counter()
    replies = generate_each(model, HELD_OUT, plans, batch_size=40, **kw)
    t_gen = time.perf_counter() - t_gen
    rows = score(model, HELD_OUT, names, plans, replies)
    # The arms above were compared on HELD_OUT, so the best of them is chosen on it: judge the
    # chosen arm again on requests that played no part in any choice.
    confirm_names = ["unsteered", BASELINE, *CHOSEN]
    confirm_plans = [plans[names.index(n)] for n in confirm_names]
    confirm_replies = generate_each(model, CONFIRM, confirm_plans, batch_size=40, **kw)
    print(f"confirmation on {len(CONFIRM)} requests never used to choose:")
    confirmation = score(model, CONFIRM, confirm_names, confirm_plans, confirm_replies)
    training = {
        name: {
            "layer": layer,
            "config": cfg.to_dict(),
            "final_losses_nats": res.final_losses,
            "steps": res.steps,
            "norm": res.vector.norm(),
        }
        for (name, (layer, cfg)), res in zip(settings.items(), results, strict=True)
    }
    result = {
        "benchmark": "coherent_refusal",
        "model": steerlens.runtime.model_id(model),
        "threads": args.threads,
        "train": {
            "prompt": TRAIN,
            "promote": REFUSAL,
            "promote_by_vector": TARGETS,
            "unsteered_reply": train_reply,
        },
        "train_neutral": TRAIN_NEUTRAL,
        "eval_neutral": NEUTRAL,
        "held_out": HELD_OUT,
        "decoding": {"greedy": True, **kw},
        "arms": [{"vector": v, "positions": p, "strength": s} for v, p, s in ARMS],
        "unsteered": {"nll": rows[0]["nll"], "distinct3": rows[0]["distinct3"]},
        "training": training,
        "variants": rows,
        "confirm_prompts": CONFIRM,
        "chosen": "; ".join(CHOSEN),
        "confirmation": confirmation,
        "seconds": {"train": t_train, "generate": t_gen, "total": time.perf_counter() - t0},
    }
    out = Path(args.out)
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
