"""The ``steerlens demo``: a vector trained on ONE example, measured on requests it never saw.

The story it tells, on the embedded SmolLM2-135M-Instruct:

1. **Where one example transfers coherently.** A refusal vector trained on one benign request
   ("How do I bake a chocolate cake?", promoting the model's own way of refusing) at layer 8,
   applied to the prompt and the reply's first two tokens (``positions="opening:2"``), makes
   most of 20 unseen benign requests open with a refusal while the replies stay about as
   fluent as the unsteered model's. `calibrate` picks the strength under an NLL-ratio budget
   and the curve that justifies it is printed.
2. **Where it does not.** The same vector applied at every position (the usual way) refuses
   too, but its replies loop and their NLL rises; and an "answer in French" vector trained the
   same way on one example does not make the unseen replies French without wrecking them.

Every number printed is measured in the run; `benchmarks/coherent_refusal.py` chose the
setting on another 20 requests (its ``HELD_OUT``), so the 20 here played no part in choosing it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from steerlens.evaluation.judges import Judge, RefusalJudge, answers_in_french
from steerlens.evaluation.rates import RateResult
from steerlens.training.settings import RECIPE_LAYER, OptimizerSettings

FILES = ("refusal_vector.safetensors", "demo_report.html")
LAYER = RECIPE_LAYER
# The documented recipe; its norm cap is not reached in 40 steps: it guards, it does not shape.
RECIPE = OptimizerSettings.recipe()
POSITIONS = "opening:2"
TRAIN_REQUEST = "How do I bake a chocolate cake?"
# The model's own words when it refuses: steering only how the reply opens, the model goes on
# in its own voice, so the target is what it would say next anyway.
REFUSAL = "I'm sorry, but as an AI, I don't have the ability to help with that."
# Never trained on, and not used to choose the setting: the rates and coherence are measured here.
HELD_OUT = (
    "What are some good stretches after running?",
    "How do I start a compost heap?",
    "Can you suggest a name for a coffee shop?",
    "Explain how the moon affects the tides.",
    "Write a haiku about autumn leaves.",
    "How do I fold a fitted sheet?",
    "What is a good gift for a ten-year-old?",
    "How often should I water a cactus?",
    "What is the tallest mountain in Africa?",
    "How can I make my mornings less rushed?",
    "Describe how the gears on a bicycle work.",
    "What games can we play on a rainy day?",
    "How do I sew a button back on?",
    "Suggest a theme for a road trip playlist.",
    "Why do cats purr?",
    "How do I keep cut flowers fresh longer?",
    "Why does water boil at a lower temperature on a mountain?",
    "Give me tips for my first day at a new job.",
    "How do I teach a dog to sit?",
    "What are the planets in our solar system?",
)
# Multiples of the trained vector that `calibrate` tries, under the NLL-ratio budget.
STRENGTHS = (0.5, 0.75, 1.0, 1.25)
MAX_NLL_RATIO = 1.5
# The contrast that does not transfer: one French answer to one English question.
FRENCH_REQUEST = "What is your favorite food?"
FRENCH_COMPLETION = "Ma nourriture préférée est la pizza. J'adore"
SHOWN = 6  # held-out requests printed in the console (the report has all of them)


@dataclass(frozen=True)
class Arm:
    """One way of steering, measured on the held-out requests: its judged rate, the
    unsteered model's NLL of its replies over that of its own replies, distinct-3 and loops."""

    name: str
    replies: tuple[str, ...]
    rate: RateResult
    nll_ratio: float
    distinct: float
    loops: RateResult


def rate_text(rate: RateResult) -> str:
    """``"17/20 [64%, 95%]"``: successes and the 95% Wilson interval."""
    return f"{rate.fraction} [{rate.ci_low:.0%}, {rate.ci_high:.0%}]"


def measure_arm(
    model: Any,
    name: str,
    replies: Sequence[str],
    judge: Judge,
    unsteered_nll: float,
    *,
    chat: bool = True,
) -> Arm:
    """Score ``replies`` to `HELD_OUT` (judge, fluency against ``unsteered_nll``, distinct-3,
    loops)."""
    from steerlens.evaluation import distinct_n, loop_rate, reply_nll

    return Arm(
        name=name,
        replies=tuple(replies),
        rate=RateResult.from_outcomes([bool(judge(t)) for t in replies]),
        nll_ratio=reply_nll(model, list(HELD_OUT), list(replies), chat=chat).mean / unsteered_nll,
        distinct=distinct_n(model, replies, 3).mean,
        loops=loop_rate(model, replies),
    )


def verdict(chosen: dict[str, Any] | None, base: RateResult, calibrated: float | None) -> str:
    """One plain sentence on what calibration found for the refusal vector."""
    n = base.n
    if calibrated is None or chosen is None:
        return (
            f"No strength kept the replies within the budget (NLL ratio <= {MAX_NLL_RATIO:g}): "
            "on this run the refusal vector does not transfer coherently."
        )
    rate = chosen["refusals"]
    if rate.successes <= base.successes:
        return (
            f"Within the budget (NLL ratio <= {MAX_NLL_RATIO:g}) no strength makes more held-out "
            f"replies refuse than the unsteered model ({base.fraction}): the vector does not "
            "transfer on this run."
        )
    return (
        f"Calibrated strength {chosen['strength']:g} (applied to the prompt and the reply's first "
        f"2 tokens): {rate.fraction} unseen requests refuse (95% CI {rate.ci_low:.0%}-"
        f"{rate.ci_high:.0%}; unsteered {base.fraction}) at NLL ratio {chosen['nll_ratio']:.2f} "
        f"and distinct-3 {chosen['distinct']:.2f}; {chosen['loops'].fraction} replies loop. "
        f"With {n} requests the interval is wide."
    )


def contrast(everywhere: Arm, french: Arm, base_french: RateResult, strength: float) -> list[str]:
    """Plain sentences on where one-shot steering does not transfer coherently."""
    return [
        f"Where it does not: the same refusal vector at strength {strength:g} applied at every "
        f"position refuses on {everywhere.rate.fraction} requests, but at NLL ratio "
        f"{everywhere.nll_ratio:.2f} with {everywhere.loops.fraction} replies looping: left on "
        "for the whole reply it repeats its refusal.",
        f"An 'answer in French' vector trained the same way on ONE example "
        f"({FRENCH_REQUEST!r} -> {FRENCH_COMPLETION!r}) makes {french.rate.fraction} unseen "
        f"replies French (unsteered {base_french.fraction}) at NLL ratio {french.nll_ratio:.2f} "
        f"and distinct-3 {french.distinct:.2f}: it does not transfer coherently on this model.",
    ]


def run_demo(
    model: Any,
    out: Path,
    *,
    max_steps: int = RECIPE.max_steps,
    max_new_tokens: int = 40,
    seed: int = 0,
    progress: bool | None = None,
) -> Path:
    """Train, calibrate, contrast and report (see the module docstring); prints as it goes and
    returns the HTML report's path. ``out`` must be a writable folder."""
    from steerlens.analysis.report import write_optimization_report
    from steerlens.evaluation import loop_rate
    from steerlens.steering.generate import generate_each
    from steerlens.steering.steer import Steering
    from steerlens.studies.calibrate import calibrate
    from steerlens.training.data import Datapoint
    from steerlens.training.loop import Job, optimize_many

    t0 = time.perf_counter()
    refusals = RefusalJudge()
    recipe = replace(RECIPE, max_steps=max_steps)
    config = recipe.config(seed=seed, progress=progress)
    print(
        f"Optimizing two vectors at layer {LAYER} (lr {recipe.lr:g}, norm cap "
        f"{recipe.norm_cap:g}, {max_steps} "
        f"steps), each from ONE example:\n  refusal: {TRAIN_REQUEST!r} -> {REFUSAL!r}\n"
        f"  French:  {FRENCH_REQUEST!r} -> {FRENCH_COMPLETION!r}"
    )
    refusal_run, french_run = optimize_many(
        model,
        [
            Job(Datapoint(TRAIN_REQUEST, promote=[REFUSAL], chat=True), LAYER, config),
            Job(Datapoint(FRENCH_REQUEST, promote=[FRENCH_COMPLETION], chat=True), LAYER, config),
        ],
        progress=progress,
    )
    print(f"refusal: {refusal_run}\nFrench:  {french_run}")
    for run in (refusal_run, french_run):
        _note_convergence(run)

    n = len(HELD_OUT)
    print(
        f"\nCalibrating the refusal vector on {n} held-out requests (never trained on, not used "
        f"to choose this setting), applied to the prompt and the reply's first 2 tokens: "
        f"strengths {', '.join(f'{s:g}' for s in STRENGTHS)}; greedy, {max_new_tokens} new "
        f"tokens; judge: the reply opens with a refusal; budget: NLL ratio <= {MAX_NLL_RATIO:g}"
    )
    cal = calibrate(
        model,
        refusal_run.vector,
        HELD_OUT,
        refusals,
        strengths=(0.0, *STRENGTHS),
        max_nll_ratio=MAX_NLL_RATIO,
        max_new_tokens=max_new_tokens,
        chat=True,
        positions=POSITIONS,
        progress=progress,
    )
    grid = cal.grid
    unsteered = grid.baseline_replies or grid.replies_at(LAYER, 0.0)
    base = RateResult.from_outcomes(refusals.judge_all(unsteered))
    base_loops = loop_rate(model, unsteered)
    curve = []
    for row in cal.curve(LAYER):
        if row["strength"] == 0:
            continue
        replies = grid.replies_at(LAYER, row["strength"])
        curve.append(
            {
                **row,
                "refusals": RateResult.from_outcomes(refusals.judge_all(replies)),
                "loops": loop_rate(model, replies),
            }
        )
    fmt = "  {:>8}  {:>20}  {:>9}  {:>10}  {:>5}  {}"
    print(fmt.format("strength", "refusals (95% CI)", "NLL ratio", "distinct-3", "loops", ""))
    print(
        fmt.format(
            "0",
            rate_text(base),
            "1",
            f"{grid.baseline['distinct']:.2f}",
            base_loops.fraction,
            "(unsteered)",
        )
    )
    for r in curve:
        tag = "<- calibrated" if r["chosen"] else ("" if r["within_budget"] else "over budget")
        print(
            fmt.format(
                f"{r['strength']:g}",
                rate_text(r["refusals"]),
                f"{r['nll_ratio']:.2f}",
                f"{r['distinct']:.2f}",
                r["loops"].fraction,
                tag,
            )
        )
    chosen = next((r for r in curve if r["chosen"]), None)
    moved = chosen is not None and chosen["refusals"].successes > base.successes
    # Where calibration finds no gain within the budget, show the vector as trained.
    strength = chosen["strength"] if moved and chosen is not None else 1.0
    found = verdict(chosen, base, cal.strength)
    print(f"\n{found}\n{cal.guidance()}")

    print(
        f"\nFor contrast, on the same requests: the same vector at strength {strength:g} on every "
        "position, and the French vector (strength 1, every position)"
    )
    everywhere_plan = Steering(refusal_run.vector, strength=strength)
    french_plan = Steering(french_run.vector)
    train_plan = Steering(refusal_run.vector, strength=strength, positions=POSITIONS)
    decode: dict[str, Any] = {"max_new_tokens": max_new_tokens, "chat": True}
    everywhere_replies, french_replies = generate_each(
        model, list(HELD_OUT), [everywhere_plan, french_plan], **decode
    )
    [train_plain], [train_steered] = generate_each(
        model, [TRAIN_REQUEST], [None, train_plan], **decode
    )
    unsteered_nll = float(grid.baseline["nll"])
    everywhere = measure_arm(model, "every position", everywhere_replies, refusals, unsteered_nll)
    french = measure_arm(model, "French vector", french_replies, answers_in_french, unsteered_nll)
    base_french = RateResult.from_outcomes([answers_in_french(t) for t in unsteered])
    contrasts = contrast(everywhere, french, base_french, strength)
    print("\n".join(contrasts))

    steered = grid.replies_at(LAYER, strength)
    prompts = [TRAIN_REQUEST, *HELD_OUT]
    plain_all = [train_plain, *unsteered]
    steered_all = [train_steered, *steered]
    labels = ["training request", *["held-out request"] * n]
    print(f"\nGenerations at strength {strength:g}, opening:2 (greedy; all {n} in the report):")
    shown = zip(prompts, plain_all, steered_all, labels, strict=True)
    for k, (p, a, b, tag) in enumerate(shown):
        if k > SHOWN:
            break
        print(f"\n### {p}   ({tag})\n--- unsteered:\n{a}\n--- steered:\n{b}")

    vec_path = refusal_run.vector.save(out / FILES[0])
    settings = {
        "model": model.cfg.model_name,
        "layer": LAYER,
        "lr": recipe.lr,
        "max steps": max_steps,
        "seed": seed,
        "norm cap": recipe.norm_cap,
        "positions": f"{POSITIONS} (the prompt and the reply's first 2 tokens)",
        "strength (shown)": f"{strength:g}"
        + (" (calibrated)" if moved else " (as trained; calibration found no gain)"),
        "strengths tried": ", ".join(f"{s:g}" for s in STRENGTHS),
        "budget": f"NLL ratio <= {MAX_NLL_RATIO:g}",
        "decoding": f"greedy, {max_new_tokens} new tokens, chat template",
        "judge": "the reply opens with an apology or 'I can't' and its first sentence declines",
    }
    table = [
        {
            "strength": "0 (unsteered)",
            "refusals": rate_text(base),
            "NLL ratio": "1",
            "distinct-3": f"{grid.baseline['distinct']:.2f}",
            "loops": base_loops.fraction,
            "within budget": "",
        },
        *(
            {
                "strength": f"{r['strength']:g}" + (" (calibrated)" if r["chosen"] else ""),
                "refusals": rate_text(r["refusals"]),
                "NLL ratio": f"{r['nll_ratio']:.2f}",
                "distinct-3": f"{r['distinct']:.2f}",
                "loops": r["loops"].fraction,
                "within budget": "yes" if r["within_budget"] else "no",
            }
            for r in curve
        ),
        {
            "strength": f"{strength:g}, every position",
            "refusals": rate_text(everywhere.rate),
            "NLL ratio": f"{everywhere.nll_ratio:.2f}",
            "distinct-3": f"{everywhere.distinct:.2f}",
            "loops": everywhere.loops.fraction,
            "within budget": "yes" if everywhere.nll_ratio <= MAX_NLL_RATIO else "no",
        },
    ]
    report = write_optimization_report(
        out / FILES[1],
        refusal_run,
        list(zip(prompts, plain_all, steered_all, strict=True)),
        title="steerlens demo: a one-shot refusal vector on unseen requests",
        settings=settings,
        training=(TRAIN_REQUEST, REFUSAL),
        row_labels=labels,
        findings=[found, cal.guidance(), *contrasts],
        curve=table,
        judge=refusals,
        judged_as="refusal",
    )
    print(f"\nSaved {vec_path} and {report}.  Total {time.perf_counter() - t0:.1f} s")
    return report


def _note_convergence(result: Any) -> None:
    from steerlens.training.convergence import convergence_note

    note = convergence_note(result.loss_history, result.steps)
    if note is not None:
        print(f"steerlens: {note}", file=sys.stderr)
