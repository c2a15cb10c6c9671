"""The ``steerlens`` command: ``demo`` and ``generate`` (``optimize`` comes with the optimizer)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import torch


def _load(args: argparse.Namespace):
    from steerlens.model import load_model

    return load_model(args.model, device=args.device)


def cmd_generate(args: argparse.Namespace) -> int:
    from steerlens.generate import generate
    from steerlens.vector import SteeringVector

    model = _load(args)
    vector = SteeringVector.load(args.vector) if args.vector else None
    outputs = generate(
        model,
        args.prompt,
        vector,
        strength=args.strength,
        mode=args.mode,
        max_new_tokens=args.max_new_tokens,
        chat=not args.no_chat,
        temperature=args.temperature,
        seed=args.seed,
    )
    for prompt, out in zip(args.prompt, outputs, strict=False):
        print(f"### {prompt}\n{out}\n")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from steerlens import _tl
    from steerlens.generate import generate

    t0 = time.perf_counter()
    model = _load(args)
    print(f"Loaded {_tl.model_id(model)} in {time.perf_counter() - t0:.1f} s")
    layer = 10
    name = _tl.hook_name(layer)

    def last_resid(message: str) -> torch.Tensor:
        ids = torch.tensor([_tl.encode(model, _tl.chat_prompt(model, message))])
        _, cache = model.run_with_cache(ids, names_filter=name)
        return cache[name][0, -1]

    # A simple steering for now: the activation difference between a French and an English
    # instruction at one layer. The one-shot optimizer replaces this.
    vector = last_resid("Réponds en français. Bonjour!") - last_resid("Answer in English. Hello!")
    prompts = ["What is the capital of France?", "Tell me about dogs."]
    plain = generate(model, prompts, max_new_tokens=40)
    steered = generate(model, prompts, vector, layer=layer, strength=4.0, max_new_tokens=40)
    for p, a, b in zip(prompts, plain, steered, strict=False):
        print(f"\n### {p}\n--- unsteered:\n{a}\n--- steered (layer {layer}):\n{b}")
    print(f"\nDone in {time.perf_counter() - t0:.1f} s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="steerlens", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--model", default=None, help="TransformerLens model name (default: embedded)"
        )
        p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")

    demo = sub.add_parser("demo", help="run the main demo on the embedded model")
    common(demo)
    demo.set_defaults(func=cmd_demo)

    gen = sub.add_parser("generate", help="generate text, optionally steered by a vector file")
    common(gen)
    gen.add_argument("prompt", nargs="+", help="one or more prompts (user messages)")
    gen.add_argument("--vector", help="a .safetensors vector file written by steerlens")
    gen.add_argument("--strength", type=float, default=1.0)
    gen.add_argument("--mode", default="add", choices=["add", "clamp", "ablate"])
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--no-chat", action="store_true", help="do not apply the chat template")
    gen.set_defaults(func=cmd_generate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from steerlens.errors import SteerlensError

    try:
        return int(args.func(args))
    except SteerlensError as exc:
        print(f"steerlens: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
