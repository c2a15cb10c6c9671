"""The ``steerlens`` command: ``demo``, ``optimize``, ``generate``, ``caa``, ``sweep``,
``report``, ``study run``, ``study report``, ``bench run``, ``bench report`` and
``export lm-eval``.

This module is the front: the top-level parser, one sub-command per module of ``COMMANDS``
(each with its ``add_parser(subparsers)`` and ``cmd_*`` functions), and ``main``'s error
handling and exit codes. What the commands share is in ``steerlens.cli.common``."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from steerlens.cli import bench, caa, demo, export, generate, optimize, report, study, sweep
from steerlens.cli.common import FORMATTER
from steerlens.errors import SteerlensError
from steerlens.version import __version__

# The sub-commands, in the order `steerlens --help` lists them.
COMMANDS = (demo, optimize, generate, caa, sweep, report, study, bench, export)

DESCRIPTION = """\
Optimize one-shot steering vectors on TransformerLens models, and generate with them.

example (the embedded SmolLM2-135M-Instruct, offline, on a CPU):
  steerlens optimize --prompt "Tell me about cats." \\
      --promote "Arr, cats be fine beasts." -o pirate.safetensors
  steerlens generate "Tell me about dogs." --vector pirate.safetensors

'steerlens COMMAND --help' lists a command's options and their defaults."""


class _Parser(argparse.ArgumentParser):
    """Usage errors are one ``steerlens: error:`` line too, like every other error."""

    def error(self, message: str) -> NoReturn:
        _error(f"{message} (see '{self.prog} --help')")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="steerlens", description=DESCRIPTION, formatter_class=FORMATTER)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    # Sub-parsers are of the parser's class, so their usage errors are one line too.
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    parser.set_defaults(commands=sub.choices)
    return parser


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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; every error is one ``steerlens: error: ...`` line on stderr.

    Exit codes: 0 success, 1 an operating-system or unexpected error, 2 a usage or steerlens
    error, 130 interrupted (Ctrl-C). ``STEERLENS_TRACEBACK=1`` shows the traceback of
    unexpected errors.
    """
    args, extra = build_parser().parse_known_args(argv)
    if extra:  # named by the sub-command, whose --help lists what it takes
        args.commands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
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
