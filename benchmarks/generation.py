"""Steered generation vs Hugging Face ``generate`` unsteered, on the same batch of prompts.

The embedded model, ``--prompts`` chat prompts (left-padded into one batch), greedy,
``--new-tokens`` new tokens at most. Three calls, interleaved ``--repeats`` times after one
warm-up of each, medians reported:

- steerlens ``generate`` under a `steerlens.Steering` (a fixed random direction of norm
  ``--norm`` at ``--layer``, every position), the whole user call (chat formatting, tokenising,
  decoding the text);
- steerlens ``generate`` unsteered, the same call;
- ``transformers``' ``generate`` on a plain Hugging Face model loaded from the same converted
  weights (not the one inside the Bridge, whose modules the Bridge has wrapped), given the same
  token ids and attention mask.

Each stops when every row has produced an end-of-turn token, so the three may run different
numbers of decoding steps: the steps are counted (from one untimed run of each) and the
headline compares seconds per decoding step, ``speed_vs_hf = hf s/step / steered s/step``
(1.0 = as fast; issue 26 asks for >= 0.9). Whether unsteered steerlens picks the same tokens as
``generate`` is recorded, not asserted.

Run: .venv/bin/python benchmarks/generation.py [--prompts 8] [--new-tokens 64] [--repeats 5]
[--threads 2] [--device cpu] [--dtype float32]
Writes benchmarks/results/generation_{device}[_{dtype}].json (`device_options`).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from device_options import DTYPES, add_device_options, check_device, results_path, sync

import steerlens
from steerlens import runtime
from steerlens.loading.cache import cache_lookup, cache_root, load_cache, usable_cache
from steerlens.loading.model import embedded_gguf_path

PROMPTS = [
    "Tell me about dogs.",
    "What is the capital of Japan?",
    "Give me advice for a job interview.",
    "Why is the sky blue?",
    "How do I bake bread?",
    "Describe a rainy day in a small town.",
    "How do plants grow?",
    "Explain what a computer is to a child.",
    "Tell me a fact about the ocean.",
    "What makes a good friend?",
    "How do I learn to swim?",
    "What is music?",
    "Describe your morning.",
    "Why do cats purr?",
    "What should I do this weekend?",
    "Write a haiku about autumn.",
]


def plain_hf_model(device: str, dtype: torch.dtype) -> Any:
    """The embedded model as a plain ``transformers`` model, from the converted weights that
    `steerlens.load_model` reads (already converted by the time this runs)."""
    gguf = embedded_gguf_path()
    folder, state, _ = cache_lookup(gguf, cache_root(), embedded=True)
    hf_model, _ = load_cache(usable_cache(gguf, folder, state))
    return hf_model.to(device=device, dtype=dtype).eval()


def timed(fn: Callable[[], Any], device: str) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=8, help=f"at most {len(PROMPTS)}")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats of each call")
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--norm", type=float, default=4.0, help="the steering vector's norm")
    ap.add_argument("--threads", type=int, default=2)
    add_device_options(ap)
    args = ap.parse_args()
    if not 1 <= args.prompts <= len(PROMPTS):
        raise SystemExit(f"--prompts must be between 1 and {len(PROMPTS)}, got {args.prompts}")
    check_device(args.device)
    torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    model = steerlens.load_model(device=args.device, dtype=dtype)
    hf = plain_hf_model(args.device, dtype)
    prompts = PROMPTS[: args.prompts]
    gen = torch.Generator().manual_seed(0)
    direction = torch.randn(runtime.d_model(model), generator=gen)
    plan = steerlens.Steering(direction / direction.norm() * args.norm, layer=args.layer)

    token_lists = [runtime.encode(model, t) for t in runtime.format_prompts(model, prompts)]
    tokens, mask, _ = runtime.left_pad(model, token_lists)
    eos = sorted(runtime.eos_token_ids(model))
    pad = runtime.pad_token_id(model)
    kw = {"max_new_tokens": args.new_tokens, "chat": True, "batch_size": len(prompts)}

    def steered() -> list[str]:
        out = steerlens.generate(model, prompts, plan, progress=False, **kw)
        assert isinstance(out, list)
        return out

    def unsteered() -> list[str]:
        out = steerlens.generate(model, prompts, progress=False, **kw)
        assert isinstance(out, list)
        return out

    @torch.no_grad()
    def hf_generate() -> torch.Tensor:
        return hf.generate(
            input_ids=tokens,
            attention_mask=mask,
            max_new_tokens=args.new_tokens,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=eos,
        )

    # Untimed: the decoding steps each call takes (the longest row), and the tokens themselves.
    with steerlens.steer(model, plan):
        steered_ids = runtime.decode_tokens(model, token_lists, max_new_tokens=args.new_tokens)
    plain_ids = runtime.decode_tokens(model, token_lists, max_new_tokens=args.new_tokens)
    hf_out = hf_generate()[:, tokens.shape[1] :].tolist()
    hf_ids = []
    for row in hf_out:
        cut = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
        hf_ids.append(row[:cut])
    steps = {
        "steered": max(len(r) for r in steered_ids),
        "unsteered": max(len(r) for r in plain_ids),
        "hf": len(hf_out[0]),
    }
    calls = {"steered": steered, "unsteered": unsteered, "hf": hf_generate}
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for fn in calls.values():
        timed(fn, args.device)  # warm-up
    for _ in range(args.repeats):
        for name, fn in calls.items():
            seconds[name].append(timed(fn, args.device))
    median = {name: statistics.median(s) for name, s in seconds.items()}
    per_step = {name: median[name] / steps[name] for name in calls}
    result = {
        "benchmark": "generation",
        "model": runtime.model_id(model),
        "device": args.device,
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "machine": platform.processor() or platform.machine(),
        "prompts": len(prompts),
        "prompt_tokens": [len(t) for t in token_lists],
        "max_new_tokens": args.new_tokens,
        "layer": args.layer,
        "steering_norm": args.norm,
        "repeats": args.repeats,
        "decoding_steps": steps,
        "seconds": seconds,
        "seconds_median": median,
        "seconds_per_step": per_step,
        "speed_vs_hf": per_step["hf"] / per_step["steered"],
        "unsteered_speed_vs_hf": per_step["hf"] / per_step["unsteered"],
        "unsteered_rows_equal_to_hf": sum(a == b for a, b in zip(plain_ids, hf_ids, strict=True)),
        "command": shlex.join(["python", "benchmarks/generation.py", *sys.argv[1:]]),
    }
    out = results_path("generation", args.device, args.dtype)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
