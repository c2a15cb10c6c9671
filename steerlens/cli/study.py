"""``steerlens study run`` and ``study report``: many vectors from a spec file, resumable, and
their HTML page."""

from __future__ import annotations

import argparse
from pathlib import Path

from steerlens.cli.common import (
    FORMATTER,
    add_command_group,
    add_device_options,
    add_progress,
    check_writable_folder,
    start,
)
from steerlens.errors import InputError, OutputPathError

STUDY_RUN_DESCRIPTION = """\
Train one vector per unit of a study spec (examples x layers x seeds x objectives), then
evaluate each (the generalization matrix). Every finished unit is saved at once in the study
folder; running the same spec again skips them, so an interrupted run resumes where it stopped.

example (see docs/howto.md, 'Run a generalization study', for the spec file):
  steerlens study run french.toml --folder runs/french"""


STUDY_REPORT_DESCRIPTION = """\
Write one self-contained HTML page of a study folder's results, read from the folder alone (no
model is loaded): the spec, unit counts and failures, the units table, the generalization
matrix and transfer ranking, each vector's steerability and the layer x strength grid (where
the study measured them). plotly.js is embedded, so the page opens offline.

example:
  steerlens study report runs/french      # writes runs/french/report.html"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    study_sub = add_command_group(
        subparsers,
        "study",
        help="run a study: many vectors from a spec file, resumable",
        description="Studies: many vectors (examples x layers x seeds x objectives) trained "
        "from a spec file into a study folder that keeps every finished unit.",
    )
    run = study_sub.add_parser(
        "run",
        help="train and evaluate every unit of a spec that its folder lacks",
        description=STUDY_RUN_DESCRIPTION,
        formatter_class=FORMATTER,
    )
    run.add_argument("spec", help="the study spec, a .toml file (required)")
    run.add_argument(
        "--folder",
        default=None,
        metavar="DIR",
        help="the study folder, created if missing; re-running resumes in it (default: "
        "outputs/studies/<spec file name>)",
    )
    run.add_argument(
        "--backend",
        choices=["serial", "ray"],
        default="serial",
        help="serial: in this process; ray: Ray tasks, on a cluster when RAY_ADDRESS is set "
        "(pip install steerlens[ray]) (default: %(default)s)",
    )
    run.add_argument(
        "--batch-size",
        type=int,
        default=16,
        metavar="N",
        help="units trained together in one batch (default: %(default)s)",
    )
    run.add_argument(
        "--if-changed",
        choices=["refuse", "versioned", "overwrite"],
        default="refuse",
        help="when the folder holds a study of another spec: refuse, run in DIR-v2, DIR-v3... "
        "(versioned), or delete the old results (overwrite) (default: %(default)s)",
    )
    run.add_argument(
        "--no-evaluate",
        action="store_true",
        help="train only; skip the generalization matrix (default: evaluate)",
    )
    add_device_options(run)
    add_progress(run)
    run.set_defaults(func=cmd_study_run)
    report = study_sub.add_parser(
        "report",
        help="write a study folder's results as one HTML page",
        description=STUDY_REPORT_DESCRIPTION,
        formatter_class=FORMATTER,
    )
    report.add_argument("folder", metavar="DIR", help="the study folder (required)")
    report.add_argument(
        "--output",
        "-o",
        default=None,
        metavar="FILE",
        help="the HTML file to write (default: DIR/report.html)",
    )
    report.set_defaults(func=cmd_study_report)


def _study_folder(args: argparse.Namespace) -> str:
    if args.folder is not None:
        return args.folder
    return str(Path("outputs") / "studies" / Path(args.spec).stem)


def cmd_study_run(args: argparse.Namespace) -> int:
    """Train (and evaluate) every unit of a study spec, resuming in its folder."""
    from steerlens.runtime.devices import check_device
    from steerlens.studies.folder import StudyFolder
    from steerlens.studies.run import run_study
    from steerlens.studies.spec import StudySpec

    spec = StudySpec.from_toml(args.spec)
    folder = _study_folder(args)
    if Path(folder).expanduser().exists() and not Path(folder).expanduser().is_dir():
        raise OutputPathError(
            f"--folder {folder!r} is a file, but a folder is needed; pass a folder path (it is "
            "created if missing)."
        )
    check_writable_folder(Path(folder).expanduser(), what=f"--folder {folder!r}")
    if args.backend == "ray":
        from steerlens.studies.ray_backend import import_ray

        import_ray()
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}.")
    check_device(args.device)
    # A foreign, newer or changed folder is refused before the model loads.
    before = StudyFolder.prepare(folder, spec, if_changed=args.if_changed)
    finished = len(before.finished())
    start(args)
    units = spec.units()
    print(
        f"study {spec.name!r}: {len(units)} units ({len(spec.examples)} examples x "
        f"{len(spec.layers)} layers x {len(spec.seeds)} seeds x {len(spec.objectives)} "
        f"objectives) on model {spec.model!r}, in {before.path}"
        + (f"; {finished} already finished, resuming" if finished else ""),
        flush=True,  # a pipe buffers it otherwise, and the log shows nothing until the end
    )
    study = run_study(
        spec,
        folder,
        backend=args.backend,
        batch_size=args.batch_size,
        progress=args.progress,
        if_changed=args.if_changed,
        device=args.device,
        evaluate=not args.no_evaluate,
    )
    done = len(study.finished())
    print(
        f"done: {done} units in {study.path} ({done - finished} trained now); results in "
        "results.sqlite (StudyFolder(...).table()), vectors in vectors/; "
        f"steerlens study report {study.path} writes the HTML report"
    )
    return 0


def cmd_study_report(args: argparse.Namespace) -> int:
    """Write a study folder's results as one self-contained HTML page."""
    from steerlens.studies.report import write_study_report

    path = write_study_report(args.folder, args.output)
    print(f"wrote {path}")
    return 0
