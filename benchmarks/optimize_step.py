"""Seconds per optimization step: steerlens's engine vs a straightforward implementation, and
what a whole `optimize_vector` call costs: its set-up and its steps, for the first call in a
process and for later calls on the same model and layer.

The straightforward one is what the authors' code does: for each completion, one full forward
(steering hook at ``blocks.{layer}.hook_resid_pre``) and one backward. Both compute the same
losses at the same vector (checked to 1e-5 relative before timing).

Calls: ``optimize_vector`` as a user writes it (lr 0.1, ``--call-steps`` steps). The first call
in the process builds the engine and checks its fast path against the hooked forward; one more
call, after ``forget_checks``, checks it again in a warm process; later calls find the check's
verdict kept on the model. Set-up is ``OptimizeResult.setup_time_s`` (everything before the
first step); the steady state is the rest of the call per step.

Run: .venv/bin/python benchmarks/optimize_step.py [--steps 10] [--call-steps 20] [--threads 2]
[--device cpu] [--dtype float32] [--note "..."]
Writes benchmarks/results/optimize_step_{device}[_{dtype}].json (`device_options`).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import time

import torch
from device_options import DTYPES, add_device_options, check_device, results_path, sync

import steerlens
from steerlens import runtime
from steerlens.runtime import token_logprobs
from steerlens.steering.interventions import Add
from steerlens.training.data import tokenize
from steerlens.training.engines import forget_checks, make_engine, steering_function
from steerlens.training.objectives import Objective, completion_losses

PROMPT = "Write a short sentence about the weather today."
PROMOTE = ["Arr, the skies be grey, matey!", "Ahoy! The sun be shinin' bright."]
SUPPRESS = ["The weather today is sunny and warm.", "Today it is cloudy with light rain."]


def naive_losses_and_grad(model, data, layer, v, objective, *, frozen=False):
    """One full forward + backward per completion, hooks only (no sharing, no caching).

    ``frozen``: back-propagate into ``v`` only, as with the model's weights frozen; otherwise
    into every weight too, as a model with ``requires_grad`` left on does."""
    total, losses = 0.0, []
    for tdp in data:
        p = len(tdp.prompt_tokens)
        for comp in tdp.completions:
            tokens = torch.tensor([tdp.prompt_tokens + comp.tokens], device=v.device)
            with steerlens.steer(model, steerlens.Steering(steerlens.Add(v), layer=layer)):
                logits = model(tokens)[0, p - 1 : p - 1 + len(comp.tokens)]
            lp = token_logprobs(logits, tokens[0, p:], objective.coldness)
            idx = torch.zeros(len(comp.tokens), dtype=torch.long, device=v.device)
            sup = torch.tensor([comp.kind == "suppress"], device=v.device)
            loss = completion_losses(
                lp, idx, sup, torch.tensor([float(len(comp.tokens))]), objective
            )
            loss.sum().backward(inputs=[v] if frozen else None)
            losses.append(float(loss.detach()))
            total += float(loss.detach())
    return losses


def ours_losses_and_grad(engine, v, objective):
    losses = objective.losses(engine.logits(steering_function(Add(v))), engine.layout)
    losses.sum().backward(inputs=[v])  # as optimize_vector: the steering parameters only
    return losses.detach().cpu().tolist()


def time_steps(fn, steps, device):
    fn()  # warm-up
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / steps


def time_call(model, dp, layer, steps):
    """One ``optimize_vector`` call: its set-up, the seconds per step after it, the whole call."""
    config = steerlens.OptimizeConfig(lr=0.1, max_steps=steps, seed=0, progress=False)
    t0 = time.perf_counter()
    r = steerlens.optimize_vector(model, dp, layer, config)
    total = time.perf_counter() - t0
    return {
        "engine": r.engine,
        "steps": r.steps,
        "setup_s": r.setup_time_s,
        "seconds_per_step": (total - r.setup_time_s) / max(r.steps, 1),
        "total_s": total,
    }


def time_calls(model, dp, layer, steps, later):
    """The first call in this process; a call after the check's verdict is forgotten (the check
    again, in a warm process); ``later`` calls that find the verdict kept (and the median of
    each field); ``later`` one-step calls (the median whole call)."""
    first = time_call(model, dp, layer, steps)
    forget_checks(model)
    checked_again = time_call(model, dp, layer, steps)
    again = [time_call(model, dp, layer, steps) for _ in range(later)]
    one_step = [time_call(model, dp, layer, 1)["total_s"] for _ in range(later)]
    fields = ("setup_s", "seconds_per_step", "total_s")
    return {
        "steps": steps,
        "first": first,
        "checked_again": checked_again,
        "later": again,
        "later_median": {k: statistics.median(c[k] for c in again) for k in fields},
        "one_step_call_s": statistics.median(one_step),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layer", type=int, default=15)
    add_device_options(ap)
    ap.add_argument("--call-steps", type=int, default=20, help="steps of each timed call")
    ap.add_argument("--later-calls", type=int, default=3, help="later calls timed (median)")
    ap.add_argument("--note", default="", help="recorded with the result (e.g. machine load)")
    args = ap.parse_args()
    check_device(args.device)
    torch.set_num_threads(args.threads)
    model = steerlens.load_model(device=args.device, dtype=DTYPES[args.dtype])
    dp = steerlens.Datapoint.from_message(model, PROMPT, promote=PROMOTE, suppress=SUPPRESS)
    # Before anything else runs on the model: the first call is the process's first.
    calls = time_calls(model, dp, args.layer, args.call_steps, args.later_calls)
    objective = Objective()
    data = tokenize(model, [dp])
    engine = make_engine(model, data, [args.layer])
    v = (torch.randn(runtime.d_model(model), generator=torch.Generator().manual_seed(0)) * 2).to(
        args.device
    )
    v.requires_grad_(True)

    naive = naive_losses_and_grad(model, data, args.layer, v, objective)
    g_naive = v.grad.clone()
    v.grad = None
    ours = ours_losses_and_grad(engine, v, objective)
    g_ours = v.grad.clone()
    v.grad = None
    rel = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(naive, ours, strict=True))
    grad_rel = float((g_naive - g_ours).norm() / g_naive.norm())

    def step_naive():
        naive_losses_and_grad(model, data, args.layer, v, objective)
        v.grad = None
        model.zero_grad(set_to_none=True)

    def step_frozen():
        naive_losses_and_grad(model, data, args.layer, v, objective, frozen=True)
        v.grad = None

    def step_ours():
        ours_losses_and_grad(engine, v, objective)
        v.grad = None

    s_naive = time_steps(step_naive, args.steps, args.device)
    s_frozen = time_steps(step_frozen, args.steps, args.device)
    s_ours = time_steps(step_ours, args.steps, args.device)
    result = {
        "benchmark": "optimize_step",
        "model": runtime.model_id(model),
        "layer": args.layer,
        "threads": args.threads,
        "device": args.device,
        "dtype": args.dtype,
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "completions": {"promote": len(PROMOTE), "suppress": len(SUPPRESS)},
        "tokens": {
            "prompt": len(data[0].prompt_tokens),
            "completions": [len(c.tokens) for c in data[0].completions],
        },
        "engine": type(engine).__name__,
        "losses_naive_nats": naive,
        "losses_steerlens_nats": ours,
        "max_relative_loss_difference": rel,
        "relative_gradient_difference": grad_rel,
        "seconds_per_step_naive": s_naive,
        "seconds_per_step_naive_frozen": s_frozen,
        "seconds_per_step_steerlens": s_ours,
        "speedup": s_naive / s_ours,
        "speedup_vs_frozen": s_frozen / s_ours,
        # Whole calls, set-up included, against as many straightforward frozen steps.
        "calls": calls,
        "speedup_vs_frozen_first_call": s_frozen * calls["steps"] / calls["first"]["total_s"],
        "speedup_vs_frozen_later_call": s_frozen
        * calls["steps"]
        / calls["later_median"]["total_s"],
        "command": shlex.join(["python", "benchmarks/optimize_step.py", *sys.argv[1:]]),
        "note": args.note,
    }
    out = results_path("optimize_step", args.device, args.dtype)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
