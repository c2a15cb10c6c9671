"""``steerlens caa``: a difference-of-means (CAA) vector from two prompt sets."""

from __future__ import annotations

import argparse

from steerlens.cli.common import (
    DEFAULT_LAYER,
    FORMATTER,
    add_chat,
    add_model_options,
    check_output_file,
    check_settings,
    load,
    prompt_texts,
    start,
)

CAA_DESCRIPTION = """\
Contrastive activation addition: the mean residual activation over prompts with a behavior minus
the mean over prompts without it, at one layer; saved as a steerlens vector file.

example:
  steerlens caa --positive "I love this" --positive "What a great day" \\
      --negative "I hate this" --negative "What an awful day" --layer 8 -o sentiment.safetensors"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    caa = subparsers.add_parser(
        "caa",
        help="a difference-of-means (CAA) vector from two prompt sets",
        description=CAA_DESCRIPTION,
        formatter_class=FORMATTER,
    )
    add_model_options(caa)
    for side in ("positive", "negative"):
        caa.add_argument(
            f"--{side}",
            action="append",
            metavar="TEXT",
            help=f"a prompt {'with' if side == 'positive' else 'without'} the behavior; repeat "
            f"it (default: none; give --{side} or --{side}-file)",
        )
        caa.add_argument(
            f"--{side}-file",
            metavar="FILE",
            default=None,
            help=f"a text file of {side} prompts, one per line (default: none)",
        )
    caa.add_argument(
        "--layer",
        type=int,
        default=DEFAULT_LAYER,
        help="the layer whose hook_resid_pre is read (default: %(default)s)",
    )
    caa.add_argument(
        "--position",
        choices=["last", "mean"],
        default="last",
        help="read the last prompt token or the mean over the prompt (default: %(default)s)",
    )
    add_chat(caa)
    caa.add_argument(
        "--output", "-o", required=True, help="the .safetensors file to write (required)"
    )
    caa.set_defaults(func=cmd_caa)


def cmd_caa(args: argparse.Namespace) -> int:
    """A contrastive (difference of means) vector from two prompt sets, saved to a file."""
    from steerlens.baselines import diff_of_means

    output = check_output_file(args.output)
    positive = prompt_texts(args.positive, args.positive_file, "positive")
    negative = prompt_texts(args.negative, args.negative_file, "negative")
    check_settings(args)
    start(args)
    model = load(args)
    vector = diff_of_means(
        model, positive, negative, args.layer, position=args.position, chat=args.chat
    )
    print(
        f"difference of means of {len(positive)} positive and {len(negative)} negative "
        f"prompts at layer {args.layer} ({args.position} token): norm {vector.norm():.4g}"
    )
    print(f"saved {vector.save(output)}")
    return 0
