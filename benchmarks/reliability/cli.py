"""Cases: the command line (each subcommand's bad flags, paths and files; faults mid-run).

The CLI runs in the worker with the tiny model standing in for every model (`Ctx.cli`). Most
rows are an argv: a str is passed as is, a callable is given the `Ctx` (in argv order) and
passed as ``str()`` of what it returns: a fresh path, a file it wrote, a saved vector."""

# mypy: ignore-errors
# (the cases pass wrong types on purpose)

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from steerlens import SteeringVector
from steerlens.training import optimize

from .helpers import SPEC, patched, raising
from .runner import Ctx, cases

# A bad input must be refused before the model loads (after, the work is thrown away).
EARLY = {"before_work": True}

OPT = (
    "optimize",
    "--prompt",
    "hi",
    "--raw-prompt",
    "--promote",
    " a",
    "--layer",
    "1",
    "--max-steps",
    "2",
    "--no-progress",
)
GEN = ("generate", "hi", "--max-new-tokens", "2", "--no-chat")
SWEEP = ("--prompt", "x", "--judge-any-of", "y")

# A bad optimizer flag is refused before the model loads, naming the flag or the value.
BAD_OPTIMIZE_FLAGS = [
    ("--lr", "nan", "lr"),
    ("--max-steps", "-1", "max-steps"),
    ("--max-steps", "abc", "abc"),
    ("--device", "cuda", "cuda"),
    ("--device", "tpu", "tpu"),
    ("--threads", "0", "threads"),
    ("--norm-cap", "-5", "norm-cap"),
]


def _cli(*argv: str | Callable[[Ctx], Any]) -> Callable[[Ctx], Any]:
    """Run the CLI with ``argv``, each callable in it replaced by ``str(it(ctx))``."""
    return lambda c: c.cli(*(str(a(c)) if callable(a) else a for a in argv))


def _new(name: str = "") -> Callable[[Ctx], Path]:
    """A fresh path named ``name`` (a fresh, existing folder where ``name`` is empty)."""
    return lambda c: c.path(name)


# The rest of a caa command line: one negative prompt, a fresh output path.
CAA_NEGATIVE = ("--negative", "x", "-o", _new("v.safetensors"))


def _file(name: str, content: str | bytes) -> Callable[[Ctx], Path]:
    """A fresh file named ``name`` holding ``content``."""

    def write(ctx: Ctx) -> Path:
        f = ctx.path(name)
        if isinstance(content, bytes):
            f.write_bytes(content)
        else:
            f.write_text(content)
        return f

    return write


def _saved(ctx: Ctx) -> Path:
    return ctx.saved()


def _other_model_file(ctx: Ctx) -> Path:
    return SteeringVector({1: torch.ones(64)}, "gpt2").save(ctx.path("gpt2.safetensors"))


def _saves_into_new_folders(ctx: Ctx) -> Any:
    out = ctx.path("deep") / "er" / "v.safetensors"
    result = ctx.cli(*OPT, "-o", str(out))
    result.out += f"\n[exists={out.exists()}]"
    return result


def _under_file(ctx: Ctx) -> Any:
    f = ctx.path("notes.txt")
    f.write_text("x")
    return ctx.cli(*OPT, "-o", str(f / "v.safetensors"))


def _optimize_with_fault(module: Any, name: str, exc: BaseException) -> Callable[[Ctx], Any]:
    """``optimize`` with ``module.name`` raising ``exc``."""

    def run(ctx: Ctx) -> Any:
        with patched(module, name, raising(exc)):
            return ctx.cli(*OPT, "-o", str(ctx.path("v.safetensors")))

    return run


def _study_into_a_file(ctx: Ctx) -> Any:
    f = _file("s", "x")(ctx)
    return ctx.cli("study", "run", str(_file("spec.toml", SPEC)(ctx)), "--folder", str(f))


# (name, run, ok: None where only an error is right, what the error must name[, flags])
CASES = cases(
    "cli",
    [
        (
            "optimize into new folders saves",
            _saves_into_new_folders,
            lambda r: "[exists=True]" in r.out,
        ),
        ("optimize -o an existing folder", _cli(*OPT, "-o", _new()), None, "folder", EARLY),
        ("optimize -o under a file", _under_file, None, "notes.txt", EARLY),
        (
            "optimize --layer 99",
            _cli(*OPT[:-3], "--layer", "99", "-o", _new("v.safetensors")),
            None,
            "99",
        ),
        (
            "optimize without --promote",
            _cli("optimize", "--prompt", "hi", "-o", _new("v.safetensors")),
            None,
            "promote",
            EARLY,
        ),
        *[
            (
                f"optimize {flag} {value}",
                _cli(*OPT, flag, value, "-o", _new("v.safetensors")),
                None,
                mention,
                EARLY,
            )
            for flag, value, mention in BAD_OPTIMIZE_FLAGS
        ],
        (
            "optimize --prompt ''",
            _cli("optimize", "--prompt", "", "--promote", " a", "-o", _new("v.safetensors")),
            None,
            "prompt",
            EARLY,
        ),
        (
            "Ctrl-C during optimize",
            _optimize_with_fault(optimize, "optimize_vector", KeyboardInterrupt()),
            None,
            "interrupted",
        ),
        (
            "disk full while saving",
            _optimize_with_fault(
                safetensors.torch, "save_file", OSError(28, "No space left on device")
            ),
            None,
            "space",
        ),
        # A bug inside steerlens is reported as one line that says so: the CLI's last resort.
        (
            "an unexpected internal error",
            _optimize_with_fault(optimize, "optimize_vector", RuntimeError("boom")),
            None,
            "boom",
            {"injected": True},
        ),
        ("generate works", _cli(*GEN), lambda r: r.rc == 0 and r.out.strip() != ""),
        (
            "generate --vector a missing file",
            _cli("generate", "hi", "--vector", _new("none.safetensors")),
            None,
            "none.safetensors",
            EARLY,
        ),
        (
            "generate --vector a folder",
            _cli("generate", "hi", "--vector", _new()),
            None,
            "folder",
            EARLY,
        ),
        (
            "generate --vector a damaged file",
            _cli("generate", "hi", "--vector", _file("bad.safetensors", b"garbage" * 10)),
            None,
            "bad.safetensors",
            EARLY,
        ),
        (
            "generate --vector of another model",
            _cli(
                "generate",
                "hi",
                "--no-chat",
                "--max-new-tokens",
                "2",
                "--vector",
                _other_model_file,
            ),
            None,
            "gpt2",
        ),
        (
            "generate --strength nan",
            _cli("generate", "hi", "--vector", _saved, "--strength", "nan"),
            None,
            "strength",
            EARLY,
        ),
        (
            "generate --temperature -1",
            _cli(*GEN, "--temperature", "-1"),
            None,
            "temperature",
            EARLY,
        ),
        (
            "generate --max-new-tokens -3",
            _cli(*GEN, "--max-new-tokens", "-3"),
            None,
            "max-new-tokens",
            EARLY,
        ),
        ("generate --mode sideways", _cli(*GEN, "--mode", "sideways"), None, "sideways", EARLY),
        (
            "generate --seed 1.5",
            _cli(*GEN, "--temperature", "1", "--seed", "1.5"),
            None,
            "1.5",
            EARLY,
        ),
        ("generate with no prompt", _cli("generate"), None, "prompt", EARLY),
        (
            "caa without positives",
            _cli("caa", *CAA_NEGATIVE),
            None,
            "positive",
            EARLY,
        ),
        (
            "caa --positive-file missing",
            _cli("caa", "--positive-file", _new("none.txt"), *CAA_NEGATIVE),
            None,
            "none.txt",
            EARLY,
        ),
        (
            "caa -o an existing folder",
            _cli("caa", "--positive", "a", "--negative", "b", "--layer", "1", "-o", _new()),
            None,
            "folder",
            EARLY,
        ),
        (
            "caa works",
            _cli(
                "caa",
                "--positive",
                "I love it",
                "--negative",
                "I hate it",
                "--layer",
                "1",
                "-o",
                _new("v.safetensors"),
            ),
            lambda r: r.rc == 0,
        ),
        (
            "caa --positive-file with only blank lines",
            _cli("caa", "--positive-file", _file("empty.txt", "\n\n"), *CAA_NEGATIVE),
            None,
            "empty.txt",
            EARLY,
        ),
        (
            "caa --positive-file of binary bytes",
            _cli(
                "caa",
                "--positive-file",
                _file("prompts.bin", b"\xff\xfe\x00\x81" * 8),
                *CAA_NEGATIVE,
            ),
            None,
            "prompts.bin",
            EARLY,
        ),
        (
            "sweep a missing vector",
            _cli("sweep", _new("none.safetensors"), *SWEEP),
            None,
            "none.safetensors",
            EARLY,
        ),
        (
            "sweep --strengths a,b",
            _cli("sweep", _saved, *SWEEP, "--strengths", "a,b"),
            None,
            "strengths",
            EARLY,
        ),
        (
            "sweep --layers 99",
            _cli("sweep", _saved, *SWEEP, "--layers", "99", "--no-progress", "-o", _new("sweep")),
            None,
            "99",
        ),
        (
            "sweep --max-nll-ratio nan",
            _cli("sweep", _saved, *SWEEP, "--max-nll-ratio", "nan"),
            None,
            "max-nll-ratio",
            EARLY,
        ),
        (
            "report a missing vector",
            _cli("report", _new("none.safetensors")),
            None,
            "none.safetensors",
            EARLY,
        ),
        (
            "report -o an existing folder",
            _cli("report", _saved, "-o", _new()),
            None,
            "folder",
            EARLY,
        ),
        (
            "study run a missing spec",
            _cli("study", "run", _new("none.toml"), "--folder", _new("s")),
            None,
            "none.toml",
            EARLY,
        ),
        (
            "study run a garbage spec",
            _cli("study", "run", _file("spec.toml", "= = ["), "--folder", _new("s")),
            None,
            "toml",
            EARLY,
        ),
        ("study run into a file", _study_into_a_file, None, "s", EARLY),
        (
            "study report a missing folder",
            _cli("study", "report", _new("none")),
            None,
            "none",
            EARLY,
        ),
        ("an unknown command", _cli("fly"), None, "fly", EARLY),
        (
            "an unknown option",
            _cli("generate", "hi", "--colour", "red"),
            None,
            "colour",
            EARLY,
        ),
        ("demo --out an existing file", _cli("demo", "--out", _saved), None, "folder", EARLY),
    ],
)
