"""``steerlens demo``: one-shot steering on the embedded model, measured on held-out requests."""

from __future__ import annotations

import argparse
import time
from argparse import SUPPRESS

from steerlens.cli.common import (
    FORMATTER,
    add_max_steps,
    add_model_options,
    add_progress,
    add_seed,
    check_output_folder,
    check_settings,
    load,
    start,
)

DEMO_DESCRIPTION = """\
Train a refusal vector on the embedded model from ONE benign request, then measure what it does
on 20 benign requests it never saw: applied to the prompt and the reply's first 2 tokens, the
judged refusal rate (with a 95% Wilson interval) and the replies' coherence (the unsteered
model's NLL of them over that of its own replies, distinct-3, loops) at a few strengths, beside
the unsteered model; `calibrate` picks the strength under an NLL-ratio budget. Then where
one-shot steering does not transfer coherently: the same vector at every position, and an
'answer in French' vector from one example. Saves the vector and an HTML report (settings,
training example, curve, generations)."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="run the main demo on the embedded model",
        description=DEMO_DESCRIPTION,
        formatter_class=FORMATTER,
    )
    add_model_options(demo)
    add_max_steps(demo)
    # The old name, kept working but not advertised: one name per option across commands.
    demo.add_argument("--steps", dest="max_steps", type=int, default=SUPPRESS, help=SUPPRESS)
    add_seed(demo, "seed of the random start vector")
    demo.add_argument(
        "--max-new-tokens",
        type=int,
        default=40,
        metavar="N",
        help="tokens generated per answer (default: %(default)s)",
    )
    demo.add_argument(
        "--out",
        default="outputs/demo",
        help="folder for the vector and report (default: %(default)s)",
    )
    add_progress(demo)
    demo.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    """One-shot steering on the embedded model, measured on held-out requests: see
    `steerlens.demo`."""
    from steerlens.demo import FILES, run_demo

    out = check_output_folder(args.out, FILES)
    check_settings(args)
    start(args)
    t0 = time.perf_counter()
    model = load(args)
    print(f"Loaded {model.cfg.model_name} in {time.perf_counter() - t0:.1f} s")
    run_demo(
        model,
        out,
        max_steps=args.max_steps,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        progress=args.progress,
    )
    return 0
