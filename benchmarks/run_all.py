"""Run every benchmark and write the table in docs/benchmarks.md from their JSON results.

Run: .venv/bin/python benchmarks/run_all.py [--table-only]
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
RESULTS = HERE / "results"
DOC = HERE.parent / "docs" / "benchmarks.md"

HEADER = """# Benchmarks

Measured by the scripts in `benchmarks/` (`make bench`, or each script on its own); results are
written as JSON to `benchmarks/results/` and this page is regenerated from them by
`benchmarks/run_all.py`. Timings are never asserted in unit tests.
"""


def table() -> str:
    lines = [HEADER]
    step = RESULTS / "optimize_step_cpu.json"
    if step.exists():
        r = json.loads(step.read_text())
        lines += [
            "## One optimization step (`benchmarks/optimize_step.py`)",
            "",
            f"{r['model']}, layer {r['layer']}, one chat prompt ({r['tokens']['prompt']} tokens) "
            f"with {r['completions']['promote']} promote + {r['completions']['suppress']} "
            f"suppress completions ({r['tokens']['completions']} tokens), {r['threads']} CPU "
            f"threads, torch {r['torch']}. Straightforward = the authors' algorithm, "
            "re-implemented: one full forward (all layers, logits at every position) and one "
            "backward per completion, through hooks; the first row back-propagates into every "
            "weight too (a model left with `requires_grad` on), the second into the vector only "
            "(weights frozen, as a careful user runs it: the baseline to compare against). "
            "steerlens back-propagates into the vector only. It is a re-implementation of the "
            "algorithm, not the authors' library itself."
            + (f" Note: {r['note']}." if r.get("note") else ""),
            "",
            "| implementation | seconds / step | steerlens speed-up over it |",
            "| --- | --- | --- |",
            f"| straightforward, weights not frozen | {r['seconds_per_step_naive']:.3f} | "
            f"{r['speedup']:.1f}x |",
            f"| straightforward, weights frozen | {r['seconds_per_step_naive_frozen']:.3f} | "
            f"{r['speedup_vs_frozen']:.1f}x |",
            f"| steerlens ({r['engine']}) | {r['seconds_per_step_steerlens']:.3f} | 1.0x |",
            "",
            f"Equal losses at an equal vector: max relative difference "
            f"{r['max_relative_loss_difference']:.1e}; gradient relative difference "
            f"{r['relative_gradient_difference']:.1e}.",
            "",
        ]
        if "calls" in r:
            lines += _call_rows(r)
    load = RESULTS / "load_model.json"
    if load.exists():
        r = json.loads(load.read_text())
        best = min(r["warm"], key=lambda w: w["total_s"])
        lines += [
            "## Loading the embedded model (`benchmarks/load_model.py`)",
            "",
            f"Each in a fresh process, {r['threads']} CPU threads, on a machine with nothing else "
            "running. `import` is `import steerlens` (torch); `load_model()` includes the first "
            "import of transformers and TransformerLens (timed alone: "
            f"{r['libraries_import_s_best']:.2f} s, the part steerlens cannot cut). "
            + (
                "Measured with scipy installed: transformers then also imports scipy.optimize "
                "(about 0.2 s)."
                if r.get("scipy_installed")
                else "Measured in the environment the project's own set-up installs (no scipy; "
                "with scipy installed, e.g. by scikit-learn, transformers also imports "
                "scipy.optimize: about 0.2 s more)."
            ),
            "",
            "| cache | import (s) | load_model() (s) | total (s) | load_model() again (s) |",
            "| --- | --- | --- | --- | --- |",
            f"| cold (converts the GGUF) | {r['cold']['import_s']:.2f} | "
            f"{r['cold']['load_model_s']:.2f} | {r['cold']['total_s']:.2f} | "
            f"{r['cold']['second_load_model_s']:.2f} |",
            f"| warm (best of {len(r['warm'])}) | {best['import_s']:.2f} | "
            f"{best['load_model_s']:.2f} | {best['total_s']:.2f} | "
            f"{best['second_load_model_s']:.2f} |",
            "",
        ]
    coh = RESULTS / "coherence_refusal.json"
    if coh.exists():
        r = json.loads(coh.read_text())
        c, rate = r["coherence"], r["refusal_rate"]
        nll, dist, loops = c["nll"], c["distinct"], c["loops"]

        def pct(x: dict) -> str:
            return f"{x['successes']}/{x['n']} ({x['ci_low']:.0%}-{x['ci_high']:.0%})"

        def ci(m: dict) -> str:
            return f"{m['mean']:.3f} ({m['ci_low']:.3f}-{m['ci_high']:.3f})"

        lines += [
            "## A one-shot refusal vector: behavior vs coherence "
            "(`benchmarks/coherence_refusal.py`)",
            "",
            f"{r['model']}, one training example ({r['train']['prompt']!r} promoting "
            f"{r['train']['promote']!r}), layer {r['layer']}, norm cap {r['norm_cap']}, 40 Adam "
            f"steps at lr 0.1; {r['n_held_out']} held-out benign requests never trained on, greedy "
            f"replies, {r['threads']} CPU threads. Fluency is the unsteered model's per-token NLL "
            "of the replies; intervals are 95% (Wilson for rates, bootstrap for means). This "
            "plain vector is the baseline for side-effect-aware objectives.",
            "",
            "| replies | opens with a refusal | NLL (nats/token) | distinct-3 | loops |",
            "| --- | --- | --- | --- | --- |",
            f"| unsteered | {pct(rate['unsteered'])} | {ci(nll['unsteered'])} | "
            f"{ci(dist['unsteered'])} | {pct(loops['unsteered'])} |",
            f"| steered | {pct(rate['steered'])} | {ci(nll['steered'])} | "
            f"{ci(dist['steered'])} | {pct(loops['steered'])} |",
            "",
            f"NLL ratio {r['nll_ratio']:.2f}; side-effect KL on {len(c['side_effect']['values'])} "
            f"neutral prompts {ci(c['side_effect'])} nats.",
            "",
        ]
    coherent = RESULTS / "coherent_refusal.json"
    if coherent.exists():
        r = json.loads(coherent.read_text())
        base = r["unsteered"]
        lines += [
            "## A coherent one-shot refusal vector: where and how it steers "
            "(`benchmarks/coherent_refusal.py`)",
            "",
            f"{r['model']}, one training example ({r['train']['prompt']!r} promoting "
            f"{r['train']['promote']!r}), {len(r['held_out'])} held-out benign requests never "
            f"trained on, greedy replies of {r['decoding']['max_new_tokens']} tokens. Goal: >= 85% "
            "open with a refusal, NLL ratio <= 1.5 (the unsteered model's per-token NLL of the "
            "steered replies over that of its own), distinct-3 drop <= 0.05. Side-effect KL on "
            "neutral prompts not used in training. `all`: the vector at every position; "
            "`opening:N`: the prompt and the reply's first N tokens, then the model writes on "
            "unsteered; `prompt`: the prompt only."
            + "".join(
                f" The {name!r} vector promotes {text!r} instead."
                for name, text in r["train"].get("promote_by_vector", {}).items()
            ),
            "",
            REFUSAL_HEADER,
            "| --- | --- | --- | --- | --- | --- |",
            f"| unsteered | 0% | 1.00 (NLL {base['nll']:.3f}) | 0.000 (distinct-3 "
            f"{base['distinct3']:.3f}) | 0 | - |",
        ]
        lines += _refusal_rows(r["variants"])
        if "confirmation" in r:
            lines += [
                "",
                f"The settings chosen on those requests ({r['chosen']}), judged again beside the "
                f"plain vector on {len(r['confirm_prompts'])} other unseen requests that played "
                "no part in any choice:",
                "",
                REFUSAL_HEADER,
                "| --- | --- | --- | --- | --- | --- |",
                *_refusal_rows(r["confirmation"]),
            ]
        lines.append("")
    for device in ("cpu", "cuda"):
        many = RESULTS / f"optimize_many_{device}.json"
        if many.exists():
            lines += _many_rows(device, json.loads(many.read_text()))
        matrix = RESULTS / f"generalization_matrix_{device}.json"
        if matrix.exists():
            lines += _matrix_rows(device, json.loads(matrix.read_text()))
    for device in ("cpu", "cuda"):
        fam = RESULTS / f"families_{device}.json"
        r = json.loads(fam.read_text()) if fam.exists() else None
        if r is None:
            continue
        shape = r["shape"]
        lines += [
            f"## Model families, {device.upper()} (`benchmarks/families.py`)",
            "",
            f"Per family, a random model built from its Hugging Face config ({shape['n_layers']} "
            f"layers, d_model {shape['d_model']}, {shape['n_heads']} heads, vocabulary "
            f"{shape['vocab']:,}), one chat prompt with {r['completions']['promote']} promote + "
            f"{r['completions']['suppress']} suppress completions, steering at the middle layer, "
            f"{r['threads']} CPU threads, torch {r['torch']}. A step is one forward and one "
            "backward into the vector only; engine set-up is not timed. The fast engine is the "
            "packed engine through the family's adapter; a family without one takes the hooked "
            "path (speed-up about 1x). Times are medians over interleaved steps of the two "
            "engines. Losses are checked equal before timing (difference relative to the loss, "
            "or to 1 nat for smaller losses).",
            "",
            "Where the time goes: the packed engine runs the blocks from the steered layer up, "
            "over the prompt once and each completion once (the *block work* column: how many "
            "times fewer token-layer passes than the hooked engine, forward and backward). The "
            "*head* (final norm, unembedding and loss at the scored positions, forward and "
            "backward) is the same work in both engines and is timed alone. *At equal rate* is "
            "the speed-up the step would have if the packed blocks ran at the hooked blocks' "
            "FLOP rate: hooked / (head + (hooked - head) / block work). A measured speed-up "
            "near it means the packed blocks run as fast per FLOP as the hooked ones; the "
            "block work itself bounds any engine that computes the same logits (about 3.2x at "
            "this shape, steering the middle layer, as the head tends to 0).",
            "",
            "| family | architecture | fast path | fast (s / step) | hooked (s / step) | "
            "speed-up | block work | head (s) | at equal rate | loss difference |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        lines += [
            f"| {f['family']} | `{f['architecture']}` | {'yes' if f['fast_path'] else 'no'} | "
            f"{f['seconds_per_step_fast']:.3f} | {f['seconds_per_step_hooked']:.3f} | "
            f"{f['speedup']:.1f}x | {_ratio(f.get('block_work_ratio'))} | "
            f"{_seconds(f.get('seconds_head'))} | {_ratio(_equal_rate(f))} | "
            f"{f['max_relative_loss_difference']:.1e} |"
            for f in r["families"]
        ]
        lines += [""]
    for positions in ("answer", "all"):
        many = RESULTS / f"many_steerings_{positions}.json"
        if many.exists():
            lines += _many_steerings_rows(json.loads(many.read_text()))
    for size in ("default", "miniature"):
        bench = RESULTS / f"bench_{size}.json"
        if bench.exists():
            lines += _bench_rows(size, json.loads(bench.read_text()))
    open_ended = RESULTS / "bench_open-ended.json"
    if open_ended.exists():
        lines += _open_ended_rows(json.loads(open_ended.read_text()))
    for name in ("cpu", "cuda", "cuda_bf16"):
        gen = RESULTS / f"generation_{name}.json"
        if gen.exists():
            lines += _generation_rows(json.loads(gen.read_text()))
    lines += GPU_SECTION
    return "\n".join(lines)


GPU_SECTION = [
    "## On a GPU",
    "",
    "`benchmarks/gpu.sh` runs `families.py`, `optimize_step.py`, `optimize_many.py` (K = 16 and "
    "64) and `generation.py` with `--device cuda`, once in float32 and once in bfloat16, each "
    "writing `benchmarks/results/<benchmark>_cuda[_bf16].json`. Step counts are cut so that the "
    "whole run fits in about 8 minutes on one H100 (optimize_step: 10 timed steps and 10-step "
    "calls; optimize_many: 10 steps; families: 5 steps; generation: 8 prompts, 64 new tokens, 3 "
    "repeats); each benchmark has its own time limit, and one that fails is logged and skipped. "
    "Where steerlens is installed with its dependencies: `bash benchmarks/gpu.sh run OUT_DIR`. "
    "On a bare GPU machine with PyTorch and transformers, no package index and a 64 MiB upload "
    "per call, first run `benchmarks/gpu_pack.sh` where the project's `.venv` is (it packs the "
    "missing wheels and the embedded model, in two halves, under `.gpu/`), then two calls on "
    "the same machine, back to back: `bash benchmarks/gpu.sh stage` carrying `.gpu/one`, and "
    '`bash benchmarks/gpu.sh run "$OUT"` carrying `.gpu/two`. Without CUDA it stops at once '
    "and says so. `OUT_DIR` receives `results.tar.gz` (the JSON files) and `gpu.log`.",
    "",
    "GPU numbers: pending (no GPU run yet); the CPU numbers above stand.",
    "",
]


def _generation_rows(r: dict) -> list[str]:
    steps, per_step = r["decoding_steps"], r["seconds_per_step"]
    return [
        f"## Steered generation vs Hugging Face `generate`, {r['device']} {r['dtype']} "
        "(`benchmarks/generation.py`)",
        "",
        f"{r['model']}, {r['prompts']} chat prompts left-padded into one batch, greedy, up to "
        f"{r['max_new_tokens']} new tokens, medians of {r['repeats']} interleaved repeats, "
        f"{r['threads']} CPU threads, torch {r['torch']}, transformers {r['transformers']}. "
        "`generate` is `transformers`' own on a plain model with the same weights and the same "
        f"token batch; steered: a direction of norm {r['steering_norm']} at layer {r['layer']}. "
        "Each stops when every row has ended its turn, so seconds are compared per decoding "
        f"step. Unsteered steerlens picks the same tokens as `generate` in "
        f"{r['unsteered_rows_equal_to_hf']} of {r['prompts']} rows. Command: `{r['command']}`.",
        "",
        "With only residual-stream hooks installed (a steering plan, or none), steerlens decodes "
        "on the Hugging Face modules under the Bridge and calls the Bridge's hook points between "
        "the blocks (`steerlens.runtime.plain`); through the Bridge's own forward, which runs "
        "every block's hooks and an eager attention, the steered call measured 0.86x on the "
        "same machine.",
        "",
        "| call | decoding steps | seconds | seconds / step | speed vs `generate` |",
        "| --- | --- | --- | --- | --- |",
        *(
            f"| {label} | {steps[k]} | {r['seconds_median'][k]:.2f} | {per_step[k]:.4f} | "
            f"{per_step['hf'] / per_step[k]:.2f}x |"
            for k, label in (
                ("hf", "`transformers` `generate`, unsteered"),
                ("unsteered", "steerlens `generate`, unsteered"),
                ("steered", "steerlens `generate`, steered"),
            )
        ),
        "",
    ]


def _call_rows(r: dict) -> list[str]:
    """Whole `optimize_vector` calls: set-up and steady state, first and later."""
    c, frozen = r["calls"], r["seconds_per_step_naive_frozen"]
    n = c["steps"]

    def row(name: str, call: dict) -> str:
        return (
            f"| {name} | {call['setup_s']:.3f} | {call['seconds_per_step']:.3f} | "
            f"{call['total_s']:.2f} | {frozen * n / call['total_s']:.1f}x |"
        )

    return [
        f"### Whole calls: set-up and steps (`{r['command']}`)",
        "",
        f"`optimize_vector` on the same example, lr 0.1, {n} steps, as a user calls it. Set-up "
        "is `OptimizeResult.setup_time_s`: everything before the first step (tokenising, the "
        "engine with its lower blocks, and the first time for a model and layer, the check of "
        "the fast path against the hooked forward, whose verdict is then kept on the model). "
        "Seconds per step: the rest of the call over its steps. The speed-up counts the whole "
        f"call, set-up included, against {n} straightforward steps with weights frozen.",
        "",
        f"| call | set-up (s) | seconds / step after set-up | whole call (s) | speed-up over "
        f"{n} straightforward frozen steps |",
        "| --- | --- | --- | --- | --- |",
        row("first in the process (the check runs)", c["first"]),
        row(
            "first for the model, warm process (`forget_checks`: the check runs)",
            c["checked_again"],
        ),
        row(f"later (median of {len(c['later'])}: the verdict is kept)", c["later_median"]),
        "",
        f"A later call with 1 step takes {c['one_step_call_s']:.2f} s in all (median of "
        f"{len(c['later'])}).",
        "",
    ]


def _many_steerings_rows(r: dict) -> list[str]:
    return [
        f"## Many steerings per batch: A/B propensities (`benchmarks/many_steerings.py`), "
        f"steering {r['positions']}",
        "",
        f"{r['model']}, layer {r['layer']}, {r['vectors']} random vectors (norm "
        f"{r['vector_norm']:g}) x {len(r['multipliers'])} multipliers x {r['prompts']} "
        f"chat-formatted A/B prompts ({r['prompt_tokens']['min']}-{r['prompt_tokens']['max']} "
        f"tokens), {r['rows']} rows, batch size {r['batch_size']}, {r['threads']} CPU threads, "
        f"torch {r['torch']}. Baseline: one steering at a time, `with steer(model, plan)` around "
        "`runtime.last_logits` (what a user would write). Shared: `evaluation.propensities`. "
        + (f"Note: {r['note']}." if r.get("note") else ""),
        "",
        "| method | seconds | speed-up |",
        "| --- | --- | --- |",
        f"| one steering at a time | {r['seconds_one_at_a_time']:.1f} | 1.0x |",
        f"| shared batches | {r['seconds_shared_batches']:.1f} | {r['speedup']:.1f}x |",
        "",
        f"Largest propensity difference {r['max_abs_propensity_difference']:.1e} nats (mean "
        f"|propensity| {r['mean_abs_propensity']:.2f}).",
        "",
    ]


BENCH_TITLES = {
    "default": "The default benchmark (`steerlens bench run`'s defaults)",
    "miniature": "The benchmark in miniature (notebook 09's settings)",
}


def _bench_rows(size: str, r: dict) -> list[str]:
    phases = ", ".join(f"{k} {v:.0f} s" for k, v in r["phase_s"].items() if v >= 0.5)
    lines = [
        f"## {BENCH_TITLES[size]}: `{r['command']}`",
        "",
        f"The embedded model, behaviours {', '.join(r['behaviours'])}, layer(s) "
        f"{', '.join(map(str, r['layers']))}, {r['threads']} CPU threads: {r['total_s']:.0f} s "
        f"in all, model load included. Phases (summed over cells): {phases}."
        + (f" Note: {r['note']}." if r.get("note") else ""),
        "",
        "| method | mean slope | anti-steerable | non-monotonic | Δ at max | effectiveness | "
        "entanglement |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for method, m in r["leaderboard"].items():
        lines.append(
            f"| {method} | {m['mean_slope']:.3f} | {m['anti_steerable']:.0%} | "
            f"{m['non_monotonic']:.0%} | {m['delta_at_max']:.3f} | {m['effectiveness']:.2f} | "
            f"{m['entanglement']:.3f} |"
        )
    return [*lines, ""]


def _open_ended_rows(r: dict) -> list[str]:
    phases = ", ".join(f"{k} {v:.0f} s" for k, v in r["phase_s"].items() if v >= 0.5)
    lines = [
        f"## Open-ended behaviours: `{r['command']}`",
        "",
        f"The embedded model, behaviours {', '.join(r['behaviours'])} (steerlens's own requests, "
        "judged by rule: a refusal, a reply in French), layer(s) "
        f"{', '.join(map(str, r['layers']))}, {r['threads']} CPU threads: {r['total_s']:.0f} s "
        f"in all, model load included. Phases (summed over cells): {phases}."
        + (f" Note: {r['note']}." if r.get("note") else ""),
        "",
        "Each vector is applied at its equal-cost multiplier (calibrated on the KL budget, as "
        "for the A/B behaviours) to the prompt and the first two reply tokens. The judged rate "
        "is the share of the test requests whose greedy reply the judge accepts, averaged "
        "over behaviours, layers and vectors; effectiveness is SteeringSafety's (rate - "
        "unsteered) / (1 - unsteered); the reply NLL ratio is the unsteered model's NLL of the "
        "steered replies over that of its own replies (1: as fluent as unsteered).",
        "",
        "| method | judged rate | effectiveness | reply NLL ratio | cells |",
        "| --- | --- | --- | --- | --- |",
    ]
    for method, m in r["leaderboard"].items():
        rates = [row["rate_steered"] for row in r["rows"] if row["method"] == method]
        rate = sum(rates) / len(rates) if rates else float("nan")
        lines.append(
            f"| {method} | {rate:.0%} | {m['effectiveness']:.2f} | {m['nll_ratio']:.2f} | "
            f"{len(rates)} |"
        )
    return [*lines, ""]


def _equal_rate(f: dict) -> float | None:
    """The speed-up at equal FLOP rate in the blocks (see the families section)."""
    head, work = f.get("seconds_head"), f.get("block_work_ratio")
    if not f["fast_path"] or head is None or work is None:
        return None
    hooked = f["seconds_per_step_hooked"]
    return hooked / (head + (hooked - head) / work)


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}x"


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def _many_rows(device: str, r: dict) -> list[str]:
    return [
        f"## Many one-shot vectors at once, {device.upper()} (`benchmarks/optimize_many.py`)",
        "",
        f"{r['model']}, {r['vectors']} vectors (one chat example each, layer {r['layer']}), "
        f"{r['steps_per_vector']} Adam steps each, norm cap 32, {r['threads']} CPU threads, "
        f"torch {r['torch']}. The baseline is a loop of `optimize_vector` calls, the way a "
        "study is written without batching: steerlens's own single-vector optimizer "
        "(packed engine, weights frozen), so the speed-up is what batching adds on top of it. "
        f"Same losses: max relative difference {r['max_relative_loss_difference']:.1e}, "
        f"vectors {r['max_relative_vector_difference']:.1e} (relative to their norm).",
        "",
        "| implementation | seconds | vectors / minute | speed-up |",
        "| --- | --- | --- | --- |",
        f"| loop of `optimize_vector` | {r['seconds_loop']:.1f} | "
        f"{r['vectors_per_minute_loop']:.1f} | 1.0x |",
        f"| `optimize_many` | {r['seconds_batched']:.1f} | "
        f"{r['vectors_per_minute_batched']:.1f} | {r['speedup']:.1f}x |",
        "",
    ]


REFUSAL_HEADER = (
    "| vector, where, strength | refusals | NLL ratio | distinct-3 drop | side-effect KL (nats) "
    "| goal |"
)


def _refusal_rows(variants: list[dict]) -> list[str]:
    return [
        f"| {v['name']} | {v['refusal_rate']:.0%} | {v['nll_ratio']:.2f} | "
        f"{v['distinct3_drop']:+.3f} | {v['side_effect_kl_nats']:.3f} | "
        f"{'met' if v['goal_met'] else 'not met'} |"
        for v in variants
        if v["name"] != "unsteered"
    ]


def _matrix_rows(device: str, r: dict) -> list[str]:
    return [
        f"## A generalization matrix, {device.upper()} (`benchmarks/generalization_matrix.py`)",
        "",
        f"{r['model']}, {r['vectors']} vectors x {r['prompts']} chat prompts, "
        f"{r['new_tokens']} greedy tokens each, judged, plus each example's target "
        f"log-probability under every vector; batch size {r['batch_size']} on both sides, "
        f"{r['threads']} CPU threads. The baseline calls `generate` (and "
        "`completion_logprobs`) once per vector; `generalization_matrix` decodes every "
        "(vector, prompt) row in shared batches, each row under its own steering. "
        f"Replies differing between the two: {r['reply_mismatches']}.",
        "",
        "| implementation | seconds | prompts / second | speed-up |",
        "| --- | --- | --- | --- |",
        f"| `generate` per vector | {r['seconds_loop']:.1f} | "
        f"{r['prompts_per_second_loop']:.1f} | 1.0x |",
        f"| `generalization_matrix` | {r['seconds_matrix']:.1f} | "
        f"{r['prompts_per_second_matrix']:.1f} | {r['speedup']:.1f}x |",
        "",
    ]


def main() -> None:
    if "--table-only" not in sys.argv:
        for script in (
            "load_model.py",
            "optimize_step.py",
            "coherence_refusal.py",
            "optimize_many.py",
            "generalization_matrix.py",
            "families.py",
            "coherent_refusal.py",
            "many_steerings.py",
        ):
            subprocess.run([sys.executable, str(HERE / script)], check=True)
        for size in ("default", "miniature"):
            subprocess.run([sys.executable, str(HERE / "bench.py"), "--size", size], check=True)
    DOC.write_text(table())
    print(DOC.read_text())


if __name__ == "__main__":
    main()
