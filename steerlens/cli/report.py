"""``steerlens report``: a vector card, what a vector file is and does, as one HTML page."""

from __future__ import annotations

import argparse

from steerlens.cli.common import (
    FORMATTER,
    add_model_options,
    check_output_file,
    load,
    load_vector_file,
    start,
)

REPORT_DESCRIPTION = """\
A vector card: provenance, norms and their scale against the residual stream, the tokens the
vector promotes and suppresses through the unembedding (logit lens), as one HTML page.

example:
  steerlens report french.safetensors -o french_card.html"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    card = subparsers.add_parser(
        "report",
        help="a vector card: what a vector file is and does, as one HTML page",
        description=REPORT_DESCRIPTION,
        formatter_class=FORMATTER,
    )
    add_model_options(card)
    card.add_argument("vector", help="a .safetensors vector file (required)")
    card.add_argument(
        "--prompt",
        action="append",
        metavar="TEXT",
        help="a prompt to measure the residual stream's scale on; repeat it (default: the "
        "vector's own training prompts)",
    )
    card.add_argument(
        "--figures",
        action="store_true",
        help="embed the plotly figures too (a page of a few MB) (default: tables only)",
    )
    card.add_argument(
        "--output", "-o", default="vector_card.html", help="the HTML page (default: %(default)s)"
    )
    card.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    """A vector card: what a vector file is and does, as one HTML page."""
    from steerlens.analysis.card import vector_card

    output = check_output_file(args.output)
    vector = load_vector_file(args.vector)
    start(args)
    model = load(args)
    card = vector_card(model, vector, prompts=args.prompt or None)
    card.save_html(output, figures=args.figures)
    print(f"wrote {output}")
    return 0
