"""``steerlens bench run`` and ``bench report``: one-shot vs contrastive vectors at equal cost
on A/B behaviour data (docs/benchmark.md), and its HTML page."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from steerlens.cli.common import (
    FORMATTER,
    add_command_group,
    add_model_options,
    check_writable_folder,
    load,
    positive_int,
    start,
)
from steerlens.errors import InputError

BENCH_RUN_DESCRIPTION = """\
Run the benchmark (docs/benchmark.md) into a folder: for each behaviour and layer, build every
method's vectors, bring each to equal cost (the multiplier where the p95 per-token KL on neutral
prompts reaches --budget), and score steerability, effectiveness and entanglement on held-out
A/B items in both letter orders. Each finished (behaviour, layer) cell is kept; re-running with
the same arguments resumes. examples:
  steerlens bench run --out runs/bench                       # the four bundled behaviours
  steerlens bench run --out runs/mine --file train.json:test.json
  steerlens bench run --out runs/open --behaviour benign-refusal --behaviour french
  steerlens bench run --out runs/polite --open-file polite.json     # open-ended, judged"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    bench_sub = add_command_group(
        subparsers,
        "bench",
        help="one-shot vs contrastive vectors at equal cost on A/B behaviour data",
        description="The benchmark (docs/benchmark.md): one-shot vectors from single examples "
        "vs CAA, PCA, ensembles and a random direction, at equal cost (p95 KL budget).",
    )
    brun = bench_sub.add_parser(
        "run",
        help="run the benchmark into a folder (resumes in it)",
        description=BENCH_RUN_DESCRIPTION,
        formatter_class=FORMATTER,
    )
    add_model_options(brun)
    brun.add_argument("--out", required=True, metavar="DIR", help="the benchmark folder")
    brun.add_argument(
        "--behaviour",
        action="append",
        metavar="NAME",
        help="a bundled behaviour, A/B or open-ended (benign-refusal, french); repeat for "
        "several (default: the four bundled A/B ones)",
    )
    brun.add_argument(
        "--file",
        action="append",
        metavar="TRAIN[:TEST]",
        help="your own behaviour file(s) in the CAA format; without :TEST, 40%% of the items "
        "are held out for testing; repeat for several",
    )
    brun.add_argument(
        "--open-file",
        action="append",
        metavar="FILE",
        help="your own open-ended behaviour file (requests, target replies, a judge; format "
        "in steerlens.datasets.open_ended); repeat for several",
    )
    brun.add_argument(
        "--layers",
        type=int,
        nargs="+",
        default=None,
        metavar="L",
        help="(default: a quarter and half of the way up; 8 and 15 on the embedded model)",
    )
    brun.add_argument("--examples", type=positive_int, default=8, help="E (default: 8)")
    brun.add_argument(
        "--test-items", type=positive_int, default=40, help="per behaviour (default: 40)"
    )
    brun.add_argument(
        "--budget", type=float, default=1.0, help="p95 KL budget in nats (default: 1.0)"
    )
    brun.add_argument(
        "--entanglement-items",
        type=positive_int,
        default=20,
        help="test items of each other behaviour and of MMLU (default: 20)",
    )
    brun.add_argument("--seed", type=int, default=0, help="(default: 0)")
    brun.add_argument(
        "--backend",
        choices=["serial", "ray"],
        default="serial",
        help="serial: in this process; ray: one Ray task per behaviour, on a cluster when "
        "RAY_ADDRESS is set (pip install steerlens[ray]) (default: %(default)s)",
    )
    brun.set_defaults(func=cmd_bench_run)
    breport = bench_sub.add_parser(
        "report",
        help="write a benchmark folder's results as one HTML page",
        formatter_class=FORMATTER,
    )
    breport.add_argument("folder", metavar="DIR", help="the benchmark folder (required)")
    breport.add_argument(
        "--output", "-o", default=None, metavar="FILE", help="(default: DIR/report.html)"
    )
    breport.set_defaults(func=cmd_bench_report)


def _behaviours(args: argparse.Namespace) -> list[Any]:
    """Bundled names and the user's files, checked (and files read) before the model loads."""
    from steerlens.datasets import (
        bundled_behaviours,
        bundled_open_ended,
        load_behaviour,
        load_open_ended,
    )

    names = args.behaviour or (
        []
        if args.file or args.open_file
        else ["sycophancy", "refusal", "corrigible-neutral-HHH", "myopic-reward"]
    )
    known = [b for b in bundled_behaviours() if b != "mmlu"] + bundled_open_ended()
    out: list[Any] = []
    for name in names:
        if name not in known:
            raise InputError(
                f"--behaviour {name!r} is not a bundled behaviour; use one of "
                f"{', '.join(known)}, or --file / --open-file for your own."
            )
        out.append(name)
    for spec in args.file or []:
        train, _, test = spec.partition(":")
        out.append(load_behaviour(train, test=test or None, test_fraction=None if test else 0.4))
    out += [load_open_ended(Path(f)) for f in args.open_file or []]
    return out


def cmd_bench_run(args: argparse.Namespace) -> int:
    """Run the benchmark into a folder, resuming in it."""
    from steerlens.studies.bench import BenchSettings, RayCells, benchmark

    behaviours = _behaviours(args)
    # Workers build the model from its study name: the embedded one, or a hub name.
    backend = (
        RayCells(
            model="embedded" if args.model is None else f"hub:{args.model}", device=args.device
        )
        if args.backend == "ray"
        else None
    )
    check_writable_folder(Path(args.out).expanduser(), what=f"--out {args.out!r}")
    settings = BenchSettings(
        test_items=args.test_items,
        examples=args.examples,
        entanglement_items=args.entanglement_items,
        budget=args.budget,
        seed=args.seed,
    )
    start(args)
    model = load(args)
    result = benchmark(
        model,
        behaviours,
        layers=args.layers,
        settings=settings,
        folder=args.out,
        progress=True,
        backend=backend,
    )
    print(result.leaderboard().round(3).to_string())
    print(f"done: {args.out}; steerlens bench report {args.out} writes the HTML report")
    return 0


def cmd_bench_report(args: argparse.Namespace) -> int:
    """Write a benchmark folder's results as one self-contained HTML page."""
    from steerlens.studies.bench.report import write_bench_report

    print(f"wrote {write_bench_report(args.folder, args.output)}")
    return 0
