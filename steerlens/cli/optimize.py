"""``steerlens optimize``: one one-shot steering vector from a prompt and its completions."""

from __future__ import annotations

import argparse
import sys

from steerlens.cli.common import (
    DEFAULT_LAYER,
    FORMATTER,
    RECIPE,
    add_chat,
    add_lr,
    add_max_steps,
    add_model_options,
    add_norm_cap,
    add_progress,
    add_seed,
    check_output_file,
    check_settings,
    load,
    settings_of,
    start,
)
from steerlens.errors import InputError
from steerlens.training.convergence import convergence_note, norm_cap_note

OPTIMIZE_DESCRIPTION = f"""\
Optimize one steering vector that makes --prompt's --promote completions more likely (and its
--suppress completions less likely), and save it.

The defaults (--layer {DEFAULT_LAYER} --lr {RECIPE.lr} --max-steps {RECIPE.max_steps} \
--norm-cap {RECIPE.norm_cap:g}) are the documented recipe for
the embedded SmolLM2-135M-Instruct; other models may need other values."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    opt = subparsers.add_parser(
        "optimize",
        help="optimize a one-shot steering vector",
        description=OPTIMIZE_DESCRIPTION,
        formatter_class=FORMATTER,
    )
    add_model_options(opt)
    opt.add_argument(
        "--prompt",
        required=True,
        help="the user message, or the full prompt with --no-chat (required)",
    )
    add_chat(opt, "--prompt")
    opt.add_argument(
        "--raw-prompt",
        dest="chat",
        action="store_const",
        const=False,
        help="the same as --no-chat (default: off)",
    )
    opt.add_argument(
        "--promote",
        action="append",
        default=[],
        metavar="TEXT",
        help="a completion to make likely; repeat for several (default: none; at least one "
        "--promote or --suppress is needed)",
    )
    opt.add_argument(
        "--suppress",
        action="append",
        default=[],
        metavar="TEXT",
        help="a completion to make unlikely; repeat for several (default: none)",
    )
    opt.add_argument(
        "--layer",
        type=int,
        default=DEFAULT_LAYER,
        metavar="L",
        help="the layer whose residual stream input is steered (default: %(default)s)",
    )
    add_norm_cap(opt)
    add_lr(opt)
    add_max_steps(opt)
    add_seed(opt, "seed of the random start vector")
    opt.add_argument(
        "--output", "-o", required=True, help="the .safetensors file to write (required)"
    )
    add_progress(opt)
    opt.set_defaults(func=cmd_optimize)


def _quote(text: str, limit: int = 60) -> str:
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


def _optimize_datapoint(args: argparse.Namespace):
    """The datapoint as the user wrote it, checked; errors quote the user's text."""
    from steerlens.training.data import Datapoint

    if not args.prompt.strip():
        raise InputError(
            f"--prompt {args.prompt!r} is empty; give the user message, e.g. "
            "--prompt 'Tell me about cats.'."
        )
    if not args.promote and not args.suppress:
        raise InputError(
            f"no completion for --prompt {_quote(args.prompt)}: pass at least one --promote "
            "(or --suppress) completion, e.g. --promote 'Arr, cats be fine beasts.'."
        )
    for option, texts in (("--promote", args.promote), ("--suppress", args.suppress)):
        if any(text == "" for text in texts):
            raise InputError(f"{option} '' is empty; every completion needs text.")
    return Datapoint(args.prompt, promote=args.promote, suppress=args.suppress, chat=args.chat)


def _note_convergence(result, norm_cap: float) -> None:
    notes = (
        convergence_note(result.loss_history, result.steps),
        norm_cap_note(result.loss_history, result.steps, result.vector.norm(), norm_cap),
    )
    for note in notes:
        if note is not None:
            print(f"steerlens: {note}", file=sys.stderr)


def cmd_optimize(args: argparse.Namespace) -> int:
    from steerlens.training.optimize import optimize_vector

    output = check_output_file(args.output)
    dp = _optimize_datapoint(args)
    check_settings(args)
    config = settings_of(args).config(seed=args.seed, progress=args.progress)
    start(args)
    model = load(args)
    result = optimize_vector(model, dp, args.layer, config=config)
    print(result)
    for label, loss in result.final_losses.items():
        print(f"  {label}: {loss:.4f} nats")
    _note_convergence(result, args.norm_cap)
    path = result.vector.save(output)
    print(f"saved {path}")
    return 0
