"""What the commands share: the documented defaults, the builder of commands made of
sub-commands (``study``, ``bench``, ``export``), the option builders (``--model``,
``--device``, ``--threads``, ``--seed``, ``--lr``, ``--max-steps``, ``--norm-cap``,
``--progress``), the checks made before the model loads (settings, output paths, prompt
files, vector files), the banner and loading the model."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from steerlens.errors import InputError, OutputPathError, SteerlensError
from steerlens.training.settings import RECIPE_LAYER, OptimizerSettings

# The documented recipe (README, docs/howto.md), tuned on the embedded SmolLM2-135M-Instruct:
# the optimizer options take their defaults and help from it.
RECIPE = OptimizerSettings.recipe()
DEFAULT_LAYER = RECIPE_LAYER
# The recipe's values under their earlier names, for code that imported them.
DEFAULT_LR = RECIPE.lr
DEFAULT_MAX_STEPS = RECIPE.max_steps
DEFAULT_NORM_CAP = RECIPE.norm_cap

# Every parser keeps its description's line breaks (they hold examples).
FORMATTER = argparse.RawDescriptionHelpFormatter


def add_command_group(
    subparsers: argparse._SubParsersAction,
    name: str,
    *,
    help: str,
    description: str,
    metavar: str = "COMMAND",
) -> argparse._SubParsersAction:
    """``steerlens NAME``, a command made of sub-commands (``study run``, ``study report``),
    one of which must be given; returns what its sub-commands are added to."""
    command = subparsers.add_parser(
        name, help=help, description=description, formatter_class=FORMATTER
    )
    return command.add_subparsers(dest=f"{name}_command", required=True, metavar=metavar)


# -- options shared by several commands -------------------------------------------------------


def positive_int(text: str) -> int:
    """An ``argparse`` type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def add_device_options(p: argparse.ArgumentParser) -> None:
    """``--device`` and ``--threads``."""
    p.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1 or mps (default: cuda if available)"
    )
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        metavar="N",
        help=f"CPU threads for PyTorch (default: PyTorch's choice, {torch.get_num_threads()} here)",
    )


def add_model_options(p: argparse.ArgumentParser) -> None:
    """``--model``, then ``--device`` and ``--threads``: every command that loads a model."""
    p.add_argument(
        "--model",
        default=None,
        help="TransformerLens model name, e.g. gpt2 (default: the embedded "
        "SmolLM2-135M-Instruct, offline)",
    )
    add_device_options(p)


def add_seed(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--seed", type=int, default=0, help=f"{what} (default: %(default)s)")


def _setting_option(
    p: argparse.ArgumentParser, name: str, kind: type, *, metavar: str | None, note: str = ""
) -> None:
    """``--name`` for one `OptimizerSettings` field: its recipe default and its help line."""
    p.add_argument(
        "--" + name.replace("_", "-"),
        type=kind,
        default=getattr(RECIPE, name),
        metavar=metavar,
        help=f"{OptimizerSettings.help(name)}{note} (default: %(default)s)",
    )


def add_max_steps(p: argparse.ArgumentParser) -> None:
    _setting_option(p, "max_steps", int, metavar="N")


def add_lr(p: argparse.ArgumentParser) -> None:
    _setting_option(p, "lr", float, metavar=None)


def add_norm_cap(p: argparse.ArgumentParser) -> None:
    """``--norm-cap R``, 0 for none (`settings_of` reads it as ``norm_cap=None``)."""
    _setting_option(p, "norm_cap", float, metavar="R", note="; 0 for no cap")


def settings_of(args: argparse.Namespace) -> OptimizerSettings:
    """The `OptimizerSettings` of the optimizer options given (the recipe's for the rest)."""
    given = {
        name: getattr(args, name) for name in ("lr", "max_steps", "norm_cap") if hasattr(args, name)
    }
    if given.get("norm_cap") == 0:
        given["norm_cap"] = None
    return dataclasses.replace(RECIPE, **given)


def add_positions(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--positions",
        default="all",
        metavar="RULE",
        help="which tokens the vector steers: all, prompt, generated, last:N or opening:N "
        "(the first N tokens of the reply, as the README's refusal vector is applied: "
        "opening:2) (default: %(default)s)",
    )


def add_chat(p: argparse.ArgumentParser, what: str = "the prompts") -> None:
    """``--chat`` / ``--no-chat``: the chat rule of the Python API (``chat=None`` when neither
    is given)."""
    p.add_argument(
        "--chat",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"format {what} as user messages in the model's chat template; --no-chat uses "
        "them as written (default: the chat template when the model has one)",
    )


def positions_of(args: argparse.Namespace) -> Any:
    """``--positions`` read before the model loads (a clear error for a typo)."""
    from steerlens.steering.positions import as_positions

    try:
        return as_positions(args.positions)
    except SteerlensError as exc:
        raise InputError(f"--positions: {exc}") from None


def add_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar (default: only when stderr is a terminal)",
    )


# -- checks made before the model loads -------------------------------------------------------


def check_settings(args: argparse.Namespace) -> None:
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
    check_writable_folder(target.parent, what=f"{option} {path!r}")
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
    check_writable_folder(folder, what=f"{option} {path!r}")
    return folder


def check_writable_folder(folder: Path, *, what: str) -> None:
    """Refuse ``folder`` (``what`` names it in the message) if files cannot be created in it.

    Raises:
        OutputPathError: its nearest existing ancestor is a file or cannot be written.
    """
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


def prompt_texts(given: Sequence[str] | None, file: str | None, option: str) -> list[str]:
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


def load_vector_file(path: str) -> Any:
    """The vector in ``path``, refused with a one-line message if there is no such file."""
    from steerlens.steering.vector import SteeringVector

    if not Path(path).expanduser().is_file():
        raise InputError(f"no vector file {path!r}; pass a .safetensors file written by steerlens.")
    return SteeringVector.load(path)


# -- starting a long run ----------------------------------------------------------------------


def banner(device: str | torch.device, threads: int) -> str:
    """The one line long runs print on stderr before loading the model."""
    return f"steerlens: device {device}, {threads} CPU thread{'' if threads == 1 else 's'}"


def start(args: argparse.Namespace) -> None:
    """Check the device, apply ``--threads`` and print the banner; all before the model loads."""
    from steerlens.runtime.devices import check_device

    device = check_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(banner(device, torch.get_num_threads()), file=sys.stderr)


def load(args: argparse.Namespace):
    """The model of ``--model`` on ``--device``."""
    # Looked up at each call, so tests can stand a tiny model in for steerlens.loading.model's.
    from steerlens.loading.model import load_model

    return load_model(args.model, device=args.device)
