"""The ``steerlens`` command: ``demo``, ``optimize`` and ``generate``."""

from __future__ import annotations

import argparse
import errno
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from steerlens.errors import OutputPathError, SteerlensError

DEMO_FILES = ("french_vector.safetensors", "demo_report.html")


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


def _load(args: argparse.Namespace):
    from steerlens.model import load_model

    return load_model(args.model, device=args.device)


def cmd_generate(args: argparse.Namespace) -> int:
    from steerlens.generate import generate
    from steerlens.interventions import KINDS
    from steerlens.steer import Steering
    from steerlens.vector import SteeringVector

    model = _load(args)
    plan = None
    if args.vector:
        vector = SteeringVector.load(args.vector)
        plan = Steering(vector, strength=args.strength, kind=KINDS[args.mode])
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


DEMO_LAYER = 8
DEMO_NORM_CAP = 40.0
DEMO_TRAIN = "What is your favorite food?"
DEMO_COMPLETION = "Ma nourriture préférée est la pizza. J'adore"
DEMO_HELD_OUT = [
    "Tell me about dogs.",
    "What is the capital of Japan?",
    "Give me advice for a job interview.",
    "Why is the sky blue?",
]


def cmd_demo(args: argparse.Namespace) -> int:
    """One-shot steering on the embedded model: one French completion for one English prompt
    makes the model answer other English questions in French."""
    from steerlens.analysis.report import write_report
    from steerlens.constraints import NormCap
    from steerlens.data import Datapoint
    from steerlens.generate import generate
    from steerlens.optimize import optimize_vector

    out = check_output_folder(args.out, DEMO_FILES)
    t0 = time.perf_counter()
    model = _load(args)
    print(f"Loaded {model.cfg.model_name} in {time.perf_counter() - t0:.1f} s")
    dp = Datapoint.chat(model, DEMO_TRAIN, promote=[DEMO_COMPLETION])
    print(
        f"\nOptimizing one vector at layer {DEMO_LAYER} (norm cap {DEMO_NORM_CAP}) to promote "
        f"one French answer to one English prompt:\n  {DEMO_TRAIN!r} -> {DEMO_COMPLETION!r}"
    )
    result = optimize_vector(
        model,
        dp,
        DEMO_LAYER,
        lr=0.1,
        max_steps=args.steps,
        seed=args.seed,
        constraints=(NormCap(DEMO_NORM_CAP),),
        progress=args.progress,
    )
    print(result)
    prompts = [DEMO_TRAIN, *DEMO_HELD_OUT]
    plain = generate(model, prompts, max_new_tokens=args.max_new_tokens, chat=True)
    steered = generate(model, prompts, result.vector, max_new_tokens=args.max_new_tokens, chat=True)
    for i, (p, a, b) in enumerate(zip(prompts, plain, steered, strict=True)):
        tag = "training prompt" if i == 0 else "held-out prompt"
        print(f"\n### {p}   ({tag})\n--- unsteered:\n{a}\n--- steered:\n{b}")
    vec_path = result.vector.save(out / DEMO_FILES[0])
    report = write_report(
        out / DEMO_FILES[1],
        result,
        list(zip(prompts, plain, steered, strict=True)),
        title="steerlens demo: one-shot 'answer in French' vector",
    )
    print(f"\nSaved {vec_path} and {report}.  Total {time.perf_counter() - t0:.1f} s")
    return 0


def cmd_optimize(args: argparse.Namespace) -> int:
    from steerlens.constraints import NormCap
    from steerlens.data import Datapoint
    from steerlens.optimize import optimize_vector

    output = check_output_file(args.output)
    model = _load(args)
    if args.raw_prompt:
        dp = Datapoint(args.prompt, promote=args.promote, suppress=args.suppress)
    else:
        dp = Datapoint.chat(model, args.prompt, promote=args.promote, suppress=args.suppress)
    constraints = (NormCap(args.norm_cap),) if args.norm_cap is not None else ()
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
    path = result.vector.save(output)
    print(f"saved {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="steerlens", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--model", default=None, help="TransformerLens model name (default: embedded)"
        )
        p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")

    demo = sub.add_parser("demo", help="run the main demo on the embedded model")
    common(demo)
    demo.add_argument("--steps", type=int, default=40, help="optimizer steps")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--max-new-tokens", type=int, default=40)
    demo.add_argument("--out", default="outputs/demo", help="folder for the vector and report")
    demo.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    demo.set_defaults(func=cmd_demo)

    opt = sub.add_parser("optimize", help="optimize a one-shot steering vector")
    common(opt)
    opt.add_argument("--prompt", required=True, help="the user message (or full prompt text)")
    opt.add_argument("--raw-prompt", action="store_true", help="do not apply the chat template")
    opt.add_argument("--promote", action="append", default=[], help="completion to promote")
    opt.add_argument("--suppress", action="append", default=[], help="completion to suppress")
    opt.add_argument("--layer", type=int, required=True)
    opt.add_argument("--norm-cap", type=float, default=None)
    opt.add_argument("--lr", type=float, default=0.01)
    opt.add_argument("--max-steps", type=int, default=100)
    opt.add_argument("--seed", type=int, default=0)
    opt.add_argument("--output", "-o", required=True, help="where to save the .safetensors")
    opt.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    opt.set_defaults(func=cmd_optimize)

    gen = sub.add_parser("generate", help="generate text, optionally steered by a vector file")
    common(gen)
    gen.add_argument("prompt", nargs="+", help="one or more prompts (user messages)")
    gen.add_argument("--vector", help="a .safetensors vector file written by steerlens")
    gen.add_argument("--strength", type=float, default=1.0)
    gen.add_argument("--mode", default="add", choices=["add", "clamp", "ablate"])
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--no-chat", action="store_true", help="do not apply the chat template")
    gen.set_defaults(func=cmd_generate)
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
