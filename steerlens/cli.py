"""The ``steerlens`` command: ``demo``, ``optimize``, ``generate``, ``caa``, ``sweep``,
``report``, ``study run``, ``study report``, ``bench run`` and ``bench report``."""

from __future__ import annotations

import argparse
import errno
import math
import os
import sys
import tempfile
import time
from argparse import SUPPRESS
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch

from steerlens.errors import InputError, OutputPathError, SteerlensError
from steerlens.training.convergence import convergence_note
from steerlens.version import __version__


def check_output_file(path: str, *, option: str = "--output") -> Path:
    """``path`` (``~`` expanded) if a file can be written there; checked before any work.

    Raises:
        OutputPathError: ``path`` is a folder, lies under a file, or its folder cannot be
            created or written.
    """
    target = Path(path).expanduser()
    if target.is_dir() or path.endswith(("/", os.sep)):
        raise OutputPathError(
            f"{option} {path!r} is a folder, but a file path is needed; pass a file inside it, "
            f"e.g. {option} {str(target / 'vector.safetensors')!r}."
        )
    _check_writable_folder(target.parent, what=f"{option} {path!r}")
    return target


def check_output_folder(path: str, files: Sequence[str], *, option: str = "--out") -> Path:
    """``path`` (``~`` expanded) if ``files`` can be written in it; checked before any work.

    Raises:
        OutputPathError: ``path`` is a file, one of ``files`` in it is a folder, or ``path``
            cannot be created or written.
    """
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise OutputPathError(
            f"{option} {path!r} is a file, but a folder is needed; pass a folder path (it is "
            "created if missing)."
        )
    for name in files:
        if (folder / name).is_dir():
            raise OutputPathError(
                f"cannot write {str(folder / name)!r}: it is a folder; remove or rename it, or "
                f"pass another {option}."
            )
    _check_writable_folder(folder, what=f"{option} {path!r}")
    return folder


def _check_writable_folder(folder: Path, *, what: str) -> None:
    # The nearest existing ancestor decides: the rest is created there when saving.
    existing = folder
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputPathError(
            f"cannot write {what}: {str(existing)!r} is a file, not a folder; choose another path."
        )
    try:
        # A real file, not os.access: that misses read-only mounts for root and some ACLs.
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise OutputPathError(
            f"cannot write {what}: cannot create files in {str(existing)!r} "
            f"({exc.strerror or exc}); choose a folder you can write to, or fix its "
            "permissions."
        ) from exc


def describe_os_error(exc: OSError) -> str:
    """One line for an operating-system error: what failed, on which path, and what to do."""
    where = f" ({exc.filename})" if exc.filename else ""
    reason = exc.strerror or " ".join(str(exc).split()) or type(exc).__name__
    fixes = {
        errno.ENOSPC: "free some disk space or write to another disk",
        errno.EACCES: "check the permissions, or use a path you can write to",
        errno.EPERM: "check the permissions, or use a path you can write to",
        errno.EROFS: "the file system is read-only; use a path on a writable one",
        errno.EISDIR: "a folder is where a file is expected; pass a file path",
        errno.ENOENT: "check the path",
    }
    fix = fixes.get(exc.errno or 0, "check the path and the disk, then try again")
    return f"{reason}{where}; {fix}."


# The documented recipe (README, docs/howto.md), tuned on the embedded SmolLM2-135M-Instruct.
DEFAULT_LAYER = 8
DEFAULT_LR = 0.1
DEFAULT_MAX_STEPS = 40
DEFAULT_NORM_CAP = 40.0


def banner(device: str | torch.device, threads: int) -> str:
    """The one line long runs print on stderr before loading the model."""
    return f"steerlens: device {device}, {threads} CPU thread{'' if threads == 1 else 's'}"


def _quote(text: str, limit: int = 60) -> str:
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


def _check_settings(args: argparse.Namespace) -> None:
    """Refuse bad numeric options with the option's name (before the model loads)."""
    if getattr(args, "layer", 0) < 0:
        raise InputError(f"--layer must be >= 0, got {args.layer}.")
    lr = getattr(args, "lr", 1.0)
    if not (math.isfinite(lr) and lr > 0):
        raise InputError(f"--lr must be > 0 and finite, got {lr}.")
    cap = getattr(args, "norm_cap", 0.0)
    if not (math.isfinite(cap) and cap >= 0):
        raise InputError(f"--norm-cap must be > 0 (or 0 for no cap), got {cap}.")
    for name in ("max_steps", "seed"):
        value = getattr(args, name, None)
        if value is not None and value < 0:
            raise InputError(f"--{name.replace('_', '-')} must be >= 0, got {value}.")
    if getattr(args, "max_new_tokens", 1) < 1:
        raise InputError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}.")
    ratio = getattr(args, "max_nll_ratio", 1.0)
    if not (math.isfinite(ratio) and ratio > 0):
        raise InputError(f"--max-nll-ratio must be > 0 and finite, got {ratio}.")


def _start(args: argparse.Namespace) -> None:
    """Check the device, apply ``--threads`` and print the banner; all before the model loads."""
    from steerlens.runtime.devices import check_device

    device = check_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(banner(device, torch.get_num_threads()), file=sys.stderr)


def _load(args: argparse.Namespace):
    from steerlens.loading.model import load_model

    return load_model(args.model, device=args.device)


def _note_convergence(result) -> None:
    note = convergence_note(result.loss_history, result.steps)
    if note is not None:
        print(f"steerlens: {note}", file=sys.stderr)


def cmd_generate(args: argparse.Namespace) -> int:
    from steerlens.steering.generate import generate
    from steerlens.steering.interventions import KINDS
    from steerlens.steering.steer import Steering
    from steerlens.steering.vector import SteeringVector

    for i, prompt in enumerate(args.prompt, 1):
        if not prompt.strip():
            raise InputError(f"prompt {i} ({prompt!r}) is empty; give the text to answer.")
    _check_settings(args)
    if not math.isfinite(args.temperature) or args.temperature < 0:
        raise InputError(f"--temperature must be >= 0 (0 = greedy), got {args.temperature}.")
    plan = None
    if args.vector:
        vector = SteeringVector.load(args.vector)
        strength = 1.0 if args.strength is None else args.strength
        plan = Steering(vector, strength=strength, kind=KINDS[args.mode or "add"])
    elif args.strength is not None or args.mode is not None:
        raise InputError("--strength and --mode apply to a vector; pass --vector FILE too.")
    _start(args)
    model = _load(args)
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


def cmd_demo(args: argparse.Namespace) -> int:
    """One-shot steering on the embedded model, measured on held-out requests: see
    `steerlens.demo`."""
    from steerlens.demo import FILES, run_demo

    out = check_output_folder(args.out, FILES)
    _check_settings(args)
    _start(args)
    t0 = time.perf_counter()
    model = _load(args)
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
    return Datapoint(args.prompt, promote=args.promote, suppress=args.suppress)


def cmd_optimize(args: argparse.Namespace) -> int:
    from steerlens.training.constraints import NormCap
    from steerlens.training.data import Datapoint
    from steerlens.training.optimize import optimize_vector

    output = check_output_file(args.output)
    raw = _optimize_datapoint(args)
    _check_settings(args)
    constraints = (NormCap(args.norm_cap),) if args.norm_cap > 0 else ()
    _start(args)
    model = _load(args)
    if args.raw_prompt:
        dp = raw
    else:
        dp = Datapoint.chat(model, args.prompt, promote=args.promote, suppress=args.suppress)
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
    _note_convergence(result)
    path = result.vector.save(output)
    print(f"saved {path}")
    return 0


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
    _check_writable_folder(Path(folder).expanduser(), what=f"--folder {folder!r}")
    if args.backend == "ray":
        from steerlens.studies.ray_backend import import_ray

        import_ray()
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}.")
    check_device(args.device)
    # A foreign, newer or changed folder is refused before the model loads.
    before = StudyFolder.prepare(folder, spec, if_changed=args.if_changed)
    finished = len(before.finished())
    _start(args)
    units = spec.units()
    print(
        f"study {spec.name!r}: {len(units)} units ({len(spec.examples)} examples x "
        f"{len(spec.layers)} layers x {len(spec.seeds)} seeds x {len(spec.objectives)} "
        f"objectives) on model {spec.model!r}, in {before.path}"
        + (f"; {finished} already finished, resuming" if finished else "")
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
    from steerlens.studies.report import write_report

    path = write_report(args.folder, args.output)
    print(f"wrote {path}")
    return 0


def _behaviours(args: argparse.Namespace) -> list[Any]:
    """Bundled names and the user's files, checked (and files read) before the model loads."""
    from steerlens.datasets import bundled_behaviours, load_behaviour

    names = args.behaviour or (
        [] if args.file else ["sycophancy", "refusal", "corrigible-neutral-HHH", "myopic-reward"]
    )
    out: list[Any] = []
    for name in names:
        if name not in bundled_behaviours() or name == "mmlu":
            raise InputError(
                f"--behaviour {name!r} is not a bundled behaviour; use one of "
                f"{', '.join(b for b in bundled_behaviours() if b != 'mmlu')}, or --file for "
                "your own."
            )
        out.append(name)
    for spec in args.file or []:
        train, _, test = spec.partition(":")
        out.append(load_behaviour(train, test=test or None, test_fraction=None if test else 0.4))
    return out


def cmd_bench_run(args: argparse.Namespace) -> int:
    """Run the benchmark into a folder, resuming in it."""
    from steerlens.studies.bench import BenchSettings, benchmark

    behaviours = _behaviours(args)
    _check_writable_folder(Path(args.out).expanduser(), what=f"--out {args.out!r}")
    settings = BenchSettings(
        test_items=args.test_items,
        examples=args.examples,
        entanglement_items=args.entanglement_items,
        budget=args.budget,
        seed=args.seed,
    )
    _start(args)
    model = _load(args)
    result = benchmark(
        model, behaviours, layers=args.layers, settings=settings, folder=args.out, progress=True
    )
    print(result.leaderboard().round(3).to_string())
    print(f"done: {args.out}; steerlens bench report {args.out} writes the HTML report")
    return 0


def cmd_bench_report(args: argparse.Namespace) -> int:
    """Write a benchmark folder's results as one self-contained HTML page."""
    from steerlens.studies.bench.report import write_bench_report

    print(f"wrote {write_bench_report(args.folder, args.output)}")
    return 0


def _texts(given: Sequence[str] | None, file: str | None, option: str) -> list[str]:
    """Prompts from repeated ``--option TEXT`` and/or ``--option-file FILE`` (one per line),
    checked before the model loads."""
    texts = list(given or [])
    if file is not None:
        path = Path(file).expanduser()
        if not path.is_file():
            raise InputError(
                f"--{option}-file {file!r} is not a file; give a text file with "
                "one prompt per line."
            )
        try:
            content = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(
                f"--{option}-file {file!r} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                "give a text file with one prompt per line."
            ) from exc
        lines = [line for line in content.splitlines() if line.strip()]
        if not lines:
            raise InputError(
                f"--{option}-file {file!r} has no prompts (it is empty or only blank lines); "
                "give one prompt per line."
            )
        texts += lines
    empty = [i for i, t in enumerate(texts, 1) if not t.strip()]
    if empty:
        raise InputError(f"--{option} {empty[0]} is empty; give the text of each prompt.")
    if not texts:
        raise InputError(
            f"no --{option} prompts; pass --{option} TEXT (repeat it) or --{option}-file FILE."
        )
    return texts


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


def _load_vector_file(path: str) -> Any:
    from steerlens.steering.vector import SteeringVector

    if not Path(path).expanduser().is_file():
        raise InputError(f"no vector file {path!r}; pass a .safetensors file written by steerlens.")
    return SteeringVector.load(path)


def cmd_caa(args: argparse.Namespace) -> int:
    """A contrastive (difference of means) vector from two prompt sets, saved to a file."""
    from steerlens.baselines import diff_of_means

    output = check_output_file(args.output)
    positive = _texts(args.positive, args.positive_file, "positive")
    negative = _texts(args.negative, args.negative_file, "negative")
    _check_settings(args)
    _start(args)
    model = _load(args)
    vector = diff_of_means(
        model, positive, negative, args.layer, position=args.position, chat=args.chat
    )
    print(
        f"difference of means of {len(positive)} positive and {len(negative)} negative "
        f"prompts at layer {args.layer} ({args.position} token): norm {vector.norm():.4g}"
    )
    print(f"saved {vector.save(output)}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """A layer x strength grid of a vector file: behaviour and coherence, and the frontier."""
    from steerlens.evaluation.judges import StringMatchJudge
    from steerlens.io.atomic import atomic_path
    from steerlens.studies.grid import layer_strength_grid

    output = check_output_file(args.output)
    vector = _load_vector_file(args.vector)
    prompts = _texts(args.prompt, args.prompt_file, "prompt")
    if not args.judge_any_of:
        raise InputError(
            "the sweep needs a judge: pass --judge-any-of TEXT (repeat it), e.g. "
            "--judge-any-of ' la ' --judge-any-of ' le ' for French replies."
        )
    layers = _numbers(args.layers, "--layers", int) if args.layers else list(vector.layers)
    strengths = _numbers(args.strengths, "--strengths")
    _check_settings(args)
    _start(args)
    model = _load(args)
    if not args.no_chat:
        from steerlens.runtime import chat_prompt

        prompts = [chat_prompt(model, p) for p in prompts]
    grid = layer_strength_grid(
        model,
        vector,
        layers=layers,
        strengths=strengths,
        prompts=prompts,
        judge=StringMatchJudge(args.judge_any_of),
        neutral_prompts=args.neutral or None,
        max_new_tokens=args.max_new_tokens,
        progress=args.progress,
    )
    print(grid)
    best = grid.frontier(max_nll_ratio=args.max_nll_ratio)
    page = grid.plot_all().to_html(include_plotlyjs=True, full_html=False) + grid.plot_frontier(
        "nll_ratio"
    ).to_html(include_plotlyjs=False, full_html=False)
    with atomic_path(output) as tmp:
        Path(tmp).write_text(
            f"<!doctype html><html><head><meta charset='utf-8'><title>steerlens sweep</title>"
            f"</head><body><h1>Layer x strength: {args.vector}</h1><p>{best.summary()}</p>"
            f"{page}</body></html>"
        )
    print(f"wrote {output}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """A vector card: what a vector file is and does, as one HTML page."""
    from steerlens.analysis.card import vector_card

    output = check_output_file(args.output)
    vector = _load_vector_file(args.vector)
    _start(args)
    model = _load(args)
    card = vector_card(model, vector, prompts=args.prompt or None)
    card.save_html(output, figures=args.figures)
    print(f"wrote {output}")
    return 0


DESCRIPTION = """\
Optimize one-shot steering vectors on TransformerLens models, and generate with them.

example (the embedded SmolLM2-135M-Instruct, offline, on a CPU):
  steerlens optimize --prompt "Tell me about cats." \\
      --promote "Arr, cats be fine beasts." -o pirate.safetensors
  steerlens generate "Tell me about dogs." --vector pirate.safetensors

'steerlens COMMAND --help' lists a command's options and their defaults."""

OPTIMIZE_DESCRIPTION = f"""\
Optimize one steering vector that makes --prompt's --promote completions more likely (and its
--suppress completions less likely), and save it.

The defaults (--layer {DEFAULT_LAYER} --lr {DEFAULT_LR} --max-steps {DEFAULT_MAX_STEPS} \
--norm-cap {DEFAULT_NORM_CAP:g}) are the documented recipe for
the embedded SmolLM2-135M-Instruct; other models may need other values."""

STRENGTH_HELP = """\
the strength s, by --mode: add: the multiple of the vector added (1 = as trained, negative
subtracts); clamp: the component along the vector is set to s times the vector; ablate: the
fraction of that component removed (1 = all of it, 0.5 = half) (default: 1)"""

DEMO_DESCRIPTION = """\
Train a refusal vector on the embedded model from ONE benign request, then measure what it does
on 20 benign requests it never saw: applied to the prompt and the reply's first 2 tokens, the
judged refusal rate (with a 95% Wilson interval) and the replies' coherence (the unsteered
model's NLL of them over that of its own replies, distinct-3, loops) at a few strengths, beside
the unsteered model; `calibrate` picks the strength under an NLL-ratio budget. Then where
one-shot steering does not transfer coherently: the same vector at every position, and an
'answer in French' vector from one example. Saves the vector and an HTML report (settings,
training example, curve, generations)."""


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


CAA_DESCRIPTION = """\
Contrastive activation addition: the mean residual activation over prompts with a behavior minus
the mean over prompts without it, at one layer; saved as a steerlens vector file.

example:
  steerlens caa --positive "I love this" --positive "What a great day" \\
      --negative "I hate this" --negative "What an awful day" --layer 8 -o sentiment.safetensors"""

SWEEP_DESCRIPTION = """\
Steer held-out prompts with a vector at every layer x strength, and put the behavior rate (a
string-match judge) beside coherence: the unsteered model's NLL of the replies (and its ratio to
the unsteered replies'), distinct-3, and the side-effect KL on --neutral prompts. Prints the
best cell and the frontier (the best behavior within --max-nll-ratio), and writes the heatmaps.

example:
  steerlens sweep french.safetensors --prompt "Tell me about dogs." \\
      --prompt "Why is the sky blue?" --judge-any-of " la " --judge-any-of " le " \\
      --layers 4,8,12 --strengths 0.5,1,2"""

REPORT_DESCRIPTION = """\
A vector card: provenance, norms and their scale against the residual stream, the tokens the
vector promotes and suppresses through the unembedding (logit lens), as one HTML page.

example:
  steerlens report french.safetensors -o french_card.html"""


class _Parser(argparse.ArgumentParser):
    """Usage errors are one ``steerlens: error:`` line too, like every other error."""

    def error(self, message: str) -> NoReturn:
        _error(f"{message} (see '{self.prog} --help')")
        raise SystemExit(2)


BENCH_RUN_DESCRIPTION = """\
Run the benchmark (docs/benchmark.md) into a folder: for each behaviour and layer, build every
method's vectors, bring each to equal cost (the multiplier where the p95 per-token KL on neutral
prompts reaches --budget), and score steerability, effectiveness and entanglement on held-out
A/B items in both letter orders. Each finished (behaviour, layer) cell is kept; re-running with
the same arguments resumes. examples:
  steerlens bench run --out runs/bench                       # the four bundled behaviours
  steerlens bench run --out runs/mine --file train.json:test.json"""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = _Parser(prog="steerlens", description=DESCRIPTION, formatter_class=fmt)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--model",
            default=None,
            help="TransformerLens model name, e.g. gpt2 (default: the embedded "
            "SmolLM2-135M-Instruct, offline)",
        )
        p.add_argument(
            "--device", default=None, help="cpu, cuda, cuda:1 or mps (default: cuda if available)"
        )
        p.add_argument(
            "--threads",
            type=_positive_int,
            default=None,
            metavar="N",
            help=f"CPU threads for PyTorch (default: PyTorch's choice, {torch.get_num_threads()} "
            "here)",
        )

    def seed(p: argparse.ArgumentParser, what: str) -> None:
        p.add_argument("--seed", type=int, default=0, help=f"{what} (default: %(default)s)")

    def max_steps(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--max-steps",
            type=int,
            default=DEFAULT_MAX_STEPS,
            metavar="N",
            help="Adam steps (default: %(default)s)",
        )

    def progress(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--progress",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="show a progress bar (default: only when stderr is a terminal)",
        )

    demo = sub.add_parser(
        "demo",
        help="run the main demo on the embedded model",
        description=DEMO_DESCRIPTION,
        formatter_class=fmt,
    )
    common(demo)
    max_steps(demo)
    # The old name, kept working but not advertised: one name per option across commands.
    demo.add_argument("--steps", dest="max_steps", type=int, default=SUPPRESS, help=SUPPRESS)
    seed(demo, "seed of the random start vector")
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
    progress(demo)
    demo.set_defaults(func=cmd_demo)

    opt = sub.add_parser(
        "optimize",
        help="optimize a one-shot steering vector",
        description=OPTIMIZE_DESCRIPTION,
        formatter_class=fmt,
    )
    common(opt)
    opt.add_argument(
        "--prompt",
        required=True,
        help="the user message, or the full prompt with --raw-prompt (required)",
    )
    opt.add_argument(
        "--raw-prompt",
        action="store_true",
        help="use --prompt as written, without the chat template (default: off)",
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
    opt.add_argument(
        "--norm-cap",
        type=float,
        default=DEFAULT_NORM_CAP,
        metavar="R",
        help="the most the vector's norm may grow to; 0 for no cap (default: %(default)s)",
    )
    opt.add_argument(
        "--lr", type=float, default=DEFAULT_LR, help="Adam learning rate (default: %(default)s)"
    )
    max_steps(opt)
    seed(opt, "seed of the random start vector")
    opt.add_argument(
        "--output", "-o", required=True, help="the .safetensors file to write (required)"
    )
    progress(opt)
    opt.set_defaults(func=cmd_optimize)

    gen = sub.add_parser(
        "generate",
        help="generate text, optionally steered by a vector file",
        description="Answer each prompt, unsteered or steered by a vector file.",
        formatter_class=fmt,
    )
    common(gen)
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
    gen.add_argument(
        "--no-chat",
        action="store_true",
        help="use the prompts as written, without the chat template (default: off)",
    )
    gen.set_defaults(func=cmd_generate)

    caa = sub.add_parser(
        "caa",
        help="a difference-of-means (CAA) vector from two prompt sets",
        description=CAA_DESCRIPTION,
        formatter_class=fmt,
    )
    common(caa)
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
    caa.add_argument(
        "--chat",
        action="store_true",
        help="format the prompts as user messages with the chat template (default: as written)",
    )
    caa.add_argument(
        "--output", "-o", required=True, help="the .safetensors file to write (required)"
    )
    caa.set_defaults(func=cmd_caa)

    sweep = sub.add_parser(
        "sweep",
        help="a layer x strength grid of a vector: behavior beside coherence",
        description=SWEEP_DESCRIPTION,
        formatter_class=fmt,
    )
    common(sweep)
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
    sweep.add_argument(
        "--no-chat",
        action="store_true",
        help="use the prompts as written, without the chat template (default: off)",
    )
    sweep.add_argument(
        "--output", "-o", default="sweep.html", help="the HTML page to write (default: %(default)s)"
    )
    progress(sweep)
    sweep.set_defaults(func=cmd_sweep)

    card = sub.add_parser(
        "report",
        help="a vector card: what a vector file is and does, as one HTML page",
        description=REPORT_DESCRIPTION,
        formatter_class=fmt,
    )
    common(card)
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

    study = sub.add_parser(
        "study",
        help="run a study: many vectors from a spec file, resumable",
        description="Studies: many vectors (examples x layers x seeds x objectives) trained "
        "from a spec file into a study folder that keeps every finished unit.",
        formatter_class=fmt,
    )
    study_sub = study.add_subparsers(dest="study_command", required=True, metavar="COMMAND")
    run = study_sub.add_parser(
        "run",
        help="train and evaluate every unit of a spec that its folder lacks",
        description=STUDY_RUN_DESCRIPTION,
        formatter_class=fmt,
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
    run.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1 or mps (default: cuda if available)"
    )
    run.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        metavar="N",
        help=f"CPU threads for PyTorch (default: PyTorch's choice, {torch.get_num_threads()} here)",
    )
    progress(run)
    run.set_defaults(func=cmd_study_run)
    report = study_sub.add_parser(
        "report",
        help="write a study folder's results as one HTML page",
        description=STUDY_REPORT_DESCRIPTION,
        formatter_class=fmt,
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

    bench = sub.add_parser(
        "bench",
        help="one-shot vs contrastive vectors at equal cost on A/B behaviour data",
        description="The benchmark (docs/benchmark.md): one-shot vectors from single examples "
        "vs CAA, PCA, ensembles and a random direction, at equal cost (p95 KL budget).",
        formatter_class=fmt,
    )
    bench_sub = bench.add_subparsers(dest="bench_command", required=True, metavar="COMMAND")
    brun = bench_sub.add_parser(
        "run",
        help="run the benchmark into a folder (resumes in it)",
        description=BENCH_RUN_DESCRIPTION,
        formatter_class=fmt,
    )
    common(brun)
    brun.add_argument("--out", required=True, metavar="DIR", help="the benchmark folder")
    brun.add_argument(
        "--behaviour",
        action="append",
        metavar="NAME",
        help="a bundled behaviour; repeat for several (default: the four bundled ones)",
    )
    brun.add_argument(
        "--file",
        action="append",
        metavar="TRAIN[:TEST]",
        help="your own behaviour file(s) in the CAA format; without :TEST, 40%% of the items "
        "are held out for testing; repeat for several",
    )
    brun.add_argument(
        "--layers", type=int, nargs="+", default=[8], metavar="L", help="(default: 8)"
    )
    brun.add_argument("--examples", type=_positive_int, default=8, help="E (default: 8)")
    brun.add_argument(
        "--test-items", type=_positive_int, default=40, help="per behaviour (default: 40)"
    )
    brun.add_argument(
        "--budget", type=float, default=1.0, help="p95 KL budget in nats (default: 1.0)"
    )
    brun.add_argument(
        "--entanglement-items",
        type=_positive_int,
        default=20,
        help="test items of each other behaviour and of MMLU (default: 20)",
    )
    brun.add_argument("--seed", type=int, default=0, help="(default: 0)")
    brun.set_defaults(func=cmd_bench_run)
    breport = bench_sub.add_parser(
        "report",
        help="write a benchmark folder's results as one HTML page",
        formatter_class=fmt,
    )
    breport.add_argument("folder", metavar="DIR", help="the benchmark folder (required)")
    breport.add_argument(
        "--output", "-o", default=None, metavar="FILE", help="(default: DIR/report.html)"
    )
    breport.set_defaults(func=cmd_bench_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; every error is one ``steerlens: error: ...`` line on stderr.

    Exit codes: 0 success, 1 an operating-system or unexpected error, 2 a usage or steerlens
    error, 130 interrupted (Ctrl-C). ``STEERLENS_TRACEBACK=1`` shows the traceback of
    unexpected errors.
    """
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        _error("interrupted (Ctrl-C).")
        return 130
    except SteerlensError as exc:
        _error(str(exc))
        return 2
    except OSError as exc:
        _error(describe_os_error(exc))
        return 1
    except Exception as exc:
        if os.environ.get("STEERLENS_TRACEBACK"):
            raise
        _error(
            f"unexpected {type(exc).__name__}: {exc} (set STEERLENS_TRACEBACK=1 for the "
            "traceback and report it as a steerlens bug)"
        )
        return 1


def _error(message: str) -> None:
    print(f"steerlens: error: {' '.join(message.split())}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
