"""The ``steerlens`` command: ``demo``, ``optimize`` and ``generate``."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path


def _load(args: argparse.Namespace):
    from steerlens.model import load_model

    return load_model(args.model, device=args.device)


def cmd_generate(args: argparse.Namespace) -> int:
    from steerlens.generate import generate
    from steerlens.interventions import KINDS
    from steerlens.steer import Steering
    from steerlens.vector import SteeringVector

    model = _load(args)
    plan = None
    if args.vector:
        vector = SteeringVector.load(args.vector)
        plan = Steering(vector, strength=args.strength, kind=KINDS[args.mode])
    outputs = generate(
        model,
        args.prompt,
        plan,
        max_new_tokens=args.max_new_tokens,
        chat=not args.no_chat,
        temperature=args.temperature,
        seed=args.seed,
    )
    for prompt, out in zip(args.prompt, outputs, strict=False):
        print(f"### {prompt}\n{out}\n")
    return 0


DEMO_LAYER = 8
DEMO_NORM_CAP = 40.0
DEMO_TRAIN = "What is your favorite food?"
DEMO_COMPLETION = "Ma nourriture préférée est la pizza. J'adore"
DEMO_HELD_OUT = [
    "Tell me about dogs.",
    "What is the capital of Japan?",
    "Give me advice for a job interview.",
    "Why is the sky blue?",
]


def cmd_demo(args: argparse.Namespace) -> int:
    """One-shot steering on the embedded model: one French completion for one English prompt
    makes the model answer other English questions in French."""
    from steerlens.analysis.report import write_report
    from steerlens.constraints import NormCap
    from steerlens.data import Datapoint
    from steerlens.generate import generate
    from steerlens.optimize import optimize_vector

    t0 = time.perf_counter()
    model = _load(args)
    print(f"Loaded {model.cfg.model_name} in {time.perf_counter() - t0:.1f} s")
    dp = Datapoint.chat(model, DEMO_TRAIN, promote=[DEMO_COMPLETION])
    print(
        f"\nOptimizing one vector at layer {DEMO_LAYER} (norm cap {DEMO_NORM_CAP}) to promote "
        f"one French answer to one English prompt:\n  {DEMO_TRAIN!r} -> {DEMO_COMPLETION!r}"
    )
    result = optimize_vector(
        model,
        dp,
        DEMO_LAYER,
        lr=0.1,
        max_steps=args.steps,
        seed=args.seed,
        constraints=(NormCap(DEMO_NORM_CAP),),
        progress=args.progress,
    )
    print(result)
    prompts = [DEMO_TRAIN, *DEMO_HELD_OUT]
    plain = generate(model, prompts, max_new_tokens=args.max_new_tokens, chat=True)
    steered = generate(model, prompts, result.vector, max_new_tokens=args.max_new_tokens, chat=True)
    for i, (p, a, b) in enumerate(zip(prompts, plain, steered, strict=True)):
        tag = "training prompt" if i == 0 else "held-out prompt"
        print(f"\n### {p}   ({tag})\n--- unsteered:\n{a}\n--- steered:\n{b}")
    out = Path(args.out)
    vec_path = result.vector.save(out / "french_vector.safetensors")
    report = write_report(
        out / "demo_report.html",
        result,
        list(zip(prompts, plain, steered, strict=True)),
        title="steerlens demo: one-shot 'answer in French' vector",
    )
    print(f"\nSaved {vec_path} and {report}.  Total {time.perf_counter() - t0:.1f} s")
    return 0


def cmd_optimize(args: argparse.Namespace) -> int:
    from steerlens.constraints import NormCap
    from steerlens.data import Datapoint
    from steerlens.optimize import optimize_vector

    model = _load(args)
    if args.raw_prompt:
        dp = Datapoint(args.prompt, promote=args.promote, suppress=args.suppress)
    else:
        dp = Datapoint.chat(model, args.prompt, promote=args.promote, suppress=args.suppress)
    constraints = (NormCap(args.norm_cap),) if args.norm_cap is not None else ()
    result = optimize_vector(
        model,
        dp,
        args.layer,
        lr=args.lr,
        max_steps=args.max_steps,
        seed=args.seed,
        constraints=constraints,
        progress=args.progress,
    )
    print(result)
    for label, loss in result.final_losses.items():
        print(f"  {label}: {loss:.4f} nats")
    path = result.vector.save(args.output)
    print(f"saved {path}")
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
    demo.add_argument("--steps", type=int, default=40, help="optimizer steps")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--max-new-tokens", type=int, default=40)
    demo.add_argument("--out", default="outputs/demo", help="folder for the vector and report")
    demo.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    demo.set_defaults(func=cmd_demo)

    opt = sub.add_parser("optimize", help="optimize a one-shot steering vector")
    common(opt)
    opt.add_argument("--prompt", required=True, help="the user message (or full prompt text)")
    opt.add_argument("--raw-prompt", action="store_true", help="do not apply the chat template")
    opt.add_argument("--promote", action="append", default=[], help="completion to promote")
    opt.add_argument("--suppress", action="append", default=[], help="completion to suppress")
    opt.add_argument("--layer", type=int, required=True)
    opt.add_argument("--norm-cap", type=float, default=None)
    opt.add_argument("--lr", type=float, default=0.01)
    opt.add_argument("--max-steps", type=int, default=100)
    opt.add_argument("--seed", type=int, default=0)
    opt.add_argument("--output", "-o", required=True, help="where to save the .safetensors")
    opt.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    opt.set_defaults(func=cmd_optimize)

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
