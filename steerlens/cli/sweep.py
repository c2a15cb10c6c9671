"""``steerlens sweep``: a layer x strength grid of a vector, behaviour beside coherence."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from steerlens.cli.common import (
    FORMATTER,
    add_chat,
    add_model_options,
    add_positions,
    add_progress,
    check_output_file,
    check_settings,
    load,
    load_vector_file,
    positions_of,
    prompt_texts,
    start,
)
from steerlens.errors import InputError

SWEEP_DESCRIPTION = """\
Steer held-out prompts with a vector at every layer x strength, and put the behavior rate (a
string-match judge) beside coherence: the unsteered model's NLL of the replies (and its ratio to
the unsteered replies'), distinct-3, and the side-effect KL on --neutral prompts. Prints the
best cell and the frontier (the best behavior within --max-nll-ratio), and writes the heatmaps.

example:
  steerlens sweep french.safetensors --prompt "Tell me about dogs." \\
      --prompt "Why is the sky blue?" --judge-any-of " la " --judge-any-of " le " \\
      --layers 4,8,12 --strengths 0.5,1,2"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    sweep = subparsers.add_parser(
        "sweep",
        help="a layer x strength grid of a vector: behavior beside coherence",
        description=SWEEP_DESCRIPTION,
        formatter_class=FORMATTER,
    )
    add_model_options(sweep)
    sweep.add_argument("vector", help="a .safetensors vector file (required)")
    sweep.add_argument(
        "--prompt",
        action="append",
        metavar="TEXT",
        help="a held-out prompt (user message) to answer; repeat it (default: none; give "
        "--prompt or --prompt-file)",
    )
    sweep.add_argument(
        "--prompt-file", metavar="FILE", default=None, help="prompts, one per line (default: none)"
    )
    sweep.add_argument(
        "--judge-any-of",
        action="append",
        metavar="TEXT",
        help="a reply showing the behavior contains one of these; repeat it (required)",
    )
    sweep.add_argument(
        "--layers",
        default=None,
        metavar="L1,L2",
        help="comma-separated layers (default: the vector's own layers)",
    )
    sweep.add_argument(
        "--strengths",
        default="0.5,1,1.5,2",
        metavar="S1,S2",
        help="comma-separated multiples of the vector (default: %(default)s)",
    )
    sweep.add_argument(
        "--neutral",
        action="append",
        metavar="TEXT",
        help="a neutral prompt for the side-effect KL; repeat it (default: none, no KL)",
    )
    sweep.add_argument(
        "--max-new-tokens",
        type=int,
        default=32,
        metavar="N",
        help="tokens per reply (default: %(default)s)",
    )
    sweep.add_argument(
        "--max-nll-ratio",
        type=float,
        default=1.5,
        metavar="R",
        help="the coherence budget of the frontier: steered replies' NLL at most R times the "
        "unsteered replies' (default: %(default)s)",
    )
    add_positions(sweep)
    add_chat(sweep, "the prompts and neutral prompts")
    sweep.add_argument(
        "--output", "-o", default="sweep.html", help="the HTML page to write (default: %(default)s)"
    )
    add_progress(sweep)
    sweep.set_defaults(func=cmd_sweep)


def _numbers(text: str, option: str, kind: type = float) -> list:
    """A comma-separated list of numbers (``--layers 4,8,12``)."""
    try:
        values = [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(
            f"{option} takes comma-separated numbers, e.g. {option} "
            f"{'4,8,12' if kind is int else '0.5,1,2'}; got {text!r}."
        ) from None
    if not values or not all(math.isfinite(v) for v in values):
        raise InputError(f"{option} needs finite numbers, got {text!r}.")
    return values


def cmd_sweep(args: argparse.Namespace) -> int:
    """A layer x strength grid of a vector file: behaviour and coherence, and the frontier."""
    from steerlens.evaluation.judges import StringMatchJudge
    from steerlens.runtime import uses_chat
    from steerlens.studies.grid import layer_strength_grid
    from steerlens.studies.report import write_grid_page

    output = check_output_file(args.output)
    vector = load_vector_file(args.vector)
    prompts = prompt_texts(args.prompt, args.prompt_file, "prompt")
    if not args.judge_any_of:
        raise InputError(
            "the sweep needs a judge: pass --judge-any-of TEXT (repeat it), e.g. "
            "--judge-any-of ' la ' --judge-any-of ' le ' for French replies."
        )
    layers = _numbers(args.layers, "--layers", int) if args.layers else list(vector.layers)
    strengths = _numbers(args.strengths, "--strengths")
    positions = positions_of(args)
    check_settings(args)
    start(args)
    model = load(args)
    judge = StringMatchJudge(args.judge_any_of)
    grid = layer_strength_grid(
        model,
        vector,
        layers=layers,
        strengths=strengths,
        prompts=prompts,
        judge=judge,
        neutral_prompts=args.neutral or None,
        chat=args.chat,
        max_new_tokens=args.max_new_tokens,
        positions=positions,
        progress=args.progress,
    )
    print(grid)
    settings = [
        f"vector {args.vector}",
        "prompts formatted as chat user messages"
        if uses_chat(model, args.chat)
        else "prompts as raw text",
        f"greedy replies of at most {args.max_new_tokens} tokens",
    ]
    write_grid_page(
        grid,
        output,
        title=f"steerlens sweep: {Path(args.vector).name}",
        judge=judge,
        judge_text="a reply containing any of " + ", ".join(repr(t) for t in args.judge_any_of),
        settings=settings,
        max_nll_ratio=args.max_nll_ratio,
    )
    print(f"wrote {output}")
    return 0
