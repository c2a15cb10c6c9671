"""``steerlens generate``: answer prompts, unsteered or steered by a vector file."""

from __future__ import annotations

import argparse
import math
import sys
import warnings

from steerlens.cli.common import (
    FORMATTER,
    add_chat,
    add_model_options,
    add_positions,
    check_settings,
    load,
    positions_of,
    start,
)
from steerlens.errors import InputError, SteeringWarning

STRENGTH_HELP = """\
the strength s, by --mode: add: the multiple of the vector added (1 = as trained, negative
subtracts); clamp: the component along the vector is set to s times the vector; ablate: the
fraction of that component removed (1 = all of it, 0.5 = half) (default: 1)"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    gen = subparsers.add_parser(
        "generate",
        help="generate text, optionally steered by a vector file",
        description="Answer each prompt, unsteered or steered by a vector file.",
        formatter_class=FORMATTER,
    )
    add_model_options(gen)
    gen.add_argument("prompt", nargs="+", help="one or more prompts (user messages)")
    gen.add_argument(
        "--vector", help="a .safetensors vector file written by steerlens (default: unsteered)"
    )
    gen.add_argument(
        "--mode",
        default=None,
        choices=["add", "clamp", "ablate"],
        help="how the vector is applied; see --strength (default: add)",
    )
    gen.add_argument("--strength", type=float, default=None, metavar="S", help=STRENGTH_HELP)
    add_positions(gen)
    gen.add_argument(
        "--max-new-tokens",
        type=int,
        default=64,
        metavar="N",
        help="the most tokens generated per prompt (default: %(default)s)",
    )
    gen.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        help="sampling temperature; 0 is greedy (default: %(default)s)",
    )
    gen.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed for sampling (default: a fresh one each run; unused when greedy)",
    )
    add_chat(gen)
    gen.add_argument(
        "--no-compare",
        action="store_true",
        help="with --vector, print only the steered reply, not the unsteered one under it "
        "(which costs a second generation) (default: both)",
    )
    gen.set_defaults(func=cmd_generate)


def cmd_generate(args: argparse.Namespace) -> int:
    from steerlens.steering.generate import generate
    from steerlens.steering.interventions import KINDS
    from steerlens.steering.steer import Steering, unusual_use
    from steerlens.steering.vector import SteeringVector

    for i, prompt in enumerate(args.prompt, 1):
        if not prompt.strip():
            raise InputError(f"prompt {i} ({prompt!r}) is empty; give the text to answer.")
    check_settings(args)
    if not math.isfinite(args.temperature) or args.temperature < 0:
        raise InputError(f"--temperature must be >= 0 (0 = greedy), got {args.temperature}.")
    plan = None
    if args.vector:
        vector = SteeringVector.load(args.vector)
        strength = 1.0 if args.strength is None else args.strength
        positions = positions_of(args)
        plan = Steering(
            vector, strength=strength, kind=KINDS[args.mode or "add"], positions=positions
        )
    elif args.strength is not None or args.mode is not None or args.positions != "all":
        raise InputError(
            "--strength, --mode and --positions apply to a vector; pass --vector FILE too."
        )
    elif args.no_compare:
        raise InputError("--no-compare leaves out the unsteered reply of a --vector; pass one.")
    for note in unusual_use(plan):
        print(f"steerlens: note: {note}", file=sys.stderr)
    start(args)
    model = load(args)
    kw = {
        "max_new_tokens": args.max_new_tokens,
        "chat": args.chat,
        "temperature": args.temperature,
        "seed": args.seed,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SteeringWarning)  # printed above as a note
        outputs = generate(model, args.prompt, plan, **kw)
    if plan is None or args.no_compare:
        for prompt, out in zip(args.prompt, outputs, strict=True):
            print(f"### {prompt}\n{out}\n")
        return 0
    unsteered = generate(model, args.prompt, None, **kw)
    for prompt, out, plain in zip(args.prompt, outputs, unsteered, strict=True):
        print(f"### {prompt}\nsteered ({plan}):\n{out}\n\nunsteered:\n{plain}\n")
    return 0
