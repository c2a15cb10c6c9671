"""Seconds per optimization step, per model family: the packed engine (through the family's
adapter) vs the hooked engine, on random models of a realistic shape.

Per family: a random model built from the family's Hugging Face config (8 layers, d_model 512,
8 heads, vocabulary 32,000; `steerlens.testing.tiny_family_model`), one chat prompt with 2
promote + 2 suppress completions, steering at the middle layer. A step is one forward and one
backward into the vector only, as `optimize_vector` runs it (the median over interleaved steps of
the two engines); both engines are built once
(set-up not timed). Equal losses are checked before timing.

Run: .venv/bin/python benchmarks/families.py [--steps 10] [--threads 2] [--device cpu]
[--dtype float32]
Writes benchmarks/results/families_{device}[_{dtype}].json (`device_options`).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from typing import Any

import torch
from device_options import AGREEMENT, DTYPES, add_device_options, check_device, results_path, sync

import steerlens
from steerlens.steering.interventions import Add
from steerlens.testing import TINY_FAMILIES, tiny_family_model
from steerlens.training.data import tokenize
from steerlens.training.engines import HookedEngine, PackedEngine, make_engine, steering_function
from steerlens.training.engines.families import architecture
from steerlens.training.objectives import Objective

PROMPT = "Write a short sentence about the weather today."
PROMOTE = ["Arr, the skies be grey, matey!", "Ahoy! The sun be shinin' bright."]
SUPPRESS = ["The weather today is sunny and warm.", "Today it is cloudy with light rain."]
N_LAYERS, D_MODEL, VOCAB = 8, 512, 32_000


def _shape(family: str) -> dict[str, Any]:
    """Config overrides for 8 heads of 64 (GQA 2:1 where the family has it), MLP 4x."""
    if family == "gpt2":
        return {"n_head": 8}
    if family == "opt":
        return {"num_attention_heads": 8, "ffn_dim": 4 * D_MODEL}
    out = {"num_attention_heads": 8, "num_key_value_heads": 4, "intermediate_size": 4 * D_MODEL}
    if family == "gpt_neox":
        out["num_key_value_heads"] = 8
    if family in ("gemma", "gemma2", "gemma3", "qwen3"):
        out["head_dim"] = 64
    return out


def _step(engine: Any, v: torch.Tensor, objective: Objective) -> list[float]:
    losses = objective.losses(engine.logits(steering_function(Add(v))), engine.layout)
    losses.sum().backward(inputs=[v])
    v.grad = None
    return losses.detach().cpu().tolist()  # waits for the GPU: each step is timed whole


def _seconds_per_step(
    engines: tuple[Any, Any], v: torch.Tensor, objective: Objective, steps: int
) -> tuple[float, float]:
    """Median seconds per step of each engine, their steps interleaved so that a slow
    stretch of the machine hits both alike."""
    times: tuple[list[float], list[float]] = ([], [])
    for engine in engines:
        _step(engine, v, objective)  # warm-up
    for _ in range(steps):
        for engine, out in zip(engines, times, strict=True):
            t0 = time.perf_counter()
            _step(engine, v, objective)
            out.append(time.perf_counter() - t0)
    return statistics.median(times[0]), statistics.median(times[1])


def _head_seconds(engine: PackedEngine, objective: Objective, steps: int) -> float:
    """Median seconds of the part both engines share: final norm, unembedding and loss at the
    scored positions, forward and backward (into the residual stream there)."""
    n = sum(len(s) for s in engine.scored)
    start = engine.h_start
    h = torch.randn(n, D_MODEL, device=start.device, dtype=start.dtype, requires_grad=True)
    adapter = engine.adapter

    def once() -> float:
        sync(str(h.device))
        t0 = time.perf_counter()
        logits = adapter.unembed(adapter.final_norm(h))
        objective.losses(logits, engine.layout).sum().backward(inputs=[h])
        h.grad = None
        sync(str(h.device))
        return time.perf_counter() - t0

    once()
    return statistics.median(once() for _ in range(steps))


def _work(engine: Any, layer: int) -> int:
    """Token-layer passes per step through the blocks: forward from the first block the
    engine runs, backward down to the steered one."""
    if isinstance(engine, PackedEngine):
        return int(engine.h_start.shape[0] * engine.h_start.shape[1]) * 2 * (N_LAYERS - layer)
    return int(engine.tokens.numel()) * (N_LAYERS + N_LAYERS - layer)


def measure(family: str, steps: int, device: str, dtype: str) -> dict[str, Any]:
    model = tiny_family_model(
        family,
        n_layers=N_LAYERS,
        d_model=D_MODEL,
        dtype=DTYPES[dtype],
        device=None if device == "cpu" else device,
        vocab_size=VOCAB,
        **_shape(family),
    )
    model.requires_grad_(False)
    layer = N_LAYERS // 2
    dp = steerlens.Datapoint.from_message(model, PROMPT, promote=PROMOTE, suppress=SUPPRESS)
    data = tokenize(model, [dp])
    objective = Objective()
    t0 = time.perf_counter()
    fast = make_engine(model, data, [layer])
    setup_fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    hooked = make_engine(model, data, [layer], fast=False)
    setup_hooked = time.perf_counter() - t0
    assert isinstance(hooked, HookedEngine)
    gen = torch.Generator().manual_seed(0)
    v = (torch.randn(D_MODEL, generator=gen) * 0.5).to(device).requires_grad_(True)
    a, b = _step(fast, v, objective), _step(hooked, v, objective)
    # Relative to the loss, or to 1 nat for losses near 0 (a suppressed completion's).
    rel = max(abs(x - y) / max(abs(y), 1.0) for x, y in zip(a, b, strict=True))
    assert rel < AGREEMENT[dtype], (family, a, b)
    s_fast, s_hooked = _seconds_per_step((fast, hooked), v, objective, steps)
    packed = isinstance(fast, PackedEngine)
    return {
        "family": family,
        "architecture": architecture(model),
        "fast_path": isinstance(fast, PackedEngine),
        "engine": type(fast).__name__,
        "layer": layer,
        "tokens": {
            "prompt": len(data[0].prompt_tokens),
            "completions": [len(c.tokens) for c in data[0].completions],
        },
        "max_relative_loss_difference": rel,
        "engine_setup_s": {"fast": setup_fast, "hooked": setup_hooked},
        "seconds_per_step_fast": s_fast,
        "seconds_per_step_hooked": s_hooked,
        "speedup": s_hooked / s_fast,
        # The blocks' share of the saving; the unembedding and loss cost both engines alike.
        "block_work_ratio": _work(hooked, layer) / _work(fast, layer) if packed else 1.0,
        "seconds_head": _head_seconds(fast, objective, steps) if packed else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    add_device_options(ap)
    ap.add_argument("--families", nargs="*", default=list(TINY_FAMILIES))
    args = ap.parse_args()
    check_device(args.device)
    torch.set_num_threads(args.threads)
    rows = []
    for family in args.families:
        rows.append(measure(family, args.steps, args.device, args.dtype))
        r = rows[-1]
        print(
            f"{family:10s} {r['engine']:13s} fast {r['seconds_per_step_fast']:.4f} s  "
            f"hooked {r['seconds_per_step_hooked']:.4f} s  {r['speedup']:.2f}x  "
            f"(blocks: {r['block_work_ratio']:.1f}x less work; shared head "
            f"{r['seconds_head'] or 0:.4f} s)  "
            f"(loss rel diff {r['max_relative_loss_difference']:.1e})",
            flush=True,
        )
    result = {
        "benchmark": "families",
        "shape": {"n_layers": N_LAYERS, "d_model": D_MODEL, "n_heads": 8, "vocab": VOCAB},
        "steps": args.steps,
        "threads": args.threads,
        "device": args.device,
        "dtype": args.dtype,
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "completions": {"promote": len(PROMOTE), "suppress": len(SUPPRESS)},
        "families": rows,
    }
    out = results_path("families", args.device, args.dtype)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
