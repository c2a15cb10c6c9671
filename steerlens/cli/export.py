"""``steerlens export lm-eval``: a vector file as lm-evaluation-harness's steering file."""

from __future__ import annotations

import argparse
import math

from steerlens.cli.common import (
    FORMATTER,
    add_command_group,
    add_device_options,
    add_positions,
    check_output_file,
    load,
    load_vector_file,
    positions_of,
)
from steerlens.errors import InputError

LM_EVAL_DESCRIPTION = """\
Write a steerlens vector as the steering file of lm-evaluation-harness's `steered` model, with
the strength and mode it is applied with (docs/lm_eval.md). Our layer l becomes lm-eval's hook
point layers.{l-1}, the output of decoder layer l-1.

example:
  steerlens export lm-eval pirate.safetensors --strength 4 -o pirate.pt
  lm_eval --model steered --model_args pretrained=MODEL_DIR,steer_path=pirate.pt \\
      --tasks my_task --include_path my_tasks/"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    export_sub = add_command_group(
        subparsers,
        "export",
        help="write a vector for another tool (lm-eval)",
        description="Write a steerlens vector file in another tool's format.",
        metavar="FORMAT",
    )
    lm_eval = export_sub.add_parser(
        "lm-eval",
        help="lm-evaluation-harness's steered-model file (.pt)",
        description=LM_EVAL_DESCRIPTION,
        formatter_class=FORMATTER,
    )
    lm_eval.add_argument("vector", help="a .safetensors vector file written by steerlens")
    lm_eval.add_argument(
        "-o", "--output", required=True, help="the steering file to write, *.pt (required)"
    )
    lm_eval.add_argument(
        "--mode",
        default="add",
        choices=["add", "clamp", "ablate"],
        help="how lm-eval applies it: add, clamp, or ablate (strength 1 only) "
        "(default: %(default)s)",
    )
    lm_eval.add_argument(
        "--strength",
        type=float,
        default=1.0,
        metavar="S",
        help="add: the multiple of the vector added; clamp: the component along the vector "
        "is set to S times the vector (default: %(default)s)",
    )
    add_positions(lm_eval)
    lm_eval.add_argument(
        "--model",
        default=None,
        help="check the vector against this model (layers, d_model, id) and read its "
        "decoder-layer names from it (default: no check; hook points layers.{k})",
    )
    lm_eval.add_argument(
        "--decoder-layers",
        default=None,
        metavar="NAME",
        help="the decoder-layer list under the Hugging Face base model: layers (Llama, Qwen, "
        "Gemma, Mistral) or h (GPT-2) (default: from --model, else layers)",
    )
    lm_eval.add_argument(
        "--additive-ok",
        action="store_true",
        help="with --mode add, export a clamp- or ablate-trained vector's direction anyway "
        "(default: off)",
    )
    add_device_options(lm_eval)
    lm_eval.set_defaults(func=cmd_export_lm_eval)


def cmd_export_lm_eval(args: argparse.Namespace) -> int:
    from steerlens.io.lm_eval_file import read_steer_file
    from steerlens.steering.interventions import KINDS
    from steerlens.steering.steer import Steering

    if not math.isfinite(args.strength):
        raise InputError(f"--strength must be finite, got {args.strength}.")
    positions = positions_of(args)
    check_output_file(args.output)
    vector = load_vector_file(args.vector)
    plan = Steering(vector, strength=args.strength, kind=KINDS[args.mode], positions=positions)
    model = load(args) if args.model else None
    path = plan.to_lm_eval(
        args.output,
        model=model,
        decoder_layers=args.decoder_layers,
        additive_ok=args.additive_ok,
    )
    hooks = ", ".join(read_steer_file(path))
    layers = ", ".join(map(str, vector.layers))
    print(
        f"wrote {path}: {args.mode}, strength {args.strength:g}; our layer(s) {layers} at "
        f"lm-eval hook point(s) {hooks}"
    )
    return 0
