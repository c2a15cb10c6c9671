"""Progress bars: one rule for when they show, so every long call behaves the same."""

from __future__ import annotations

import importlib.util
import sys
import time
from typing import Any, TextIO

# How often a call running into a pipe or log reports, in seconds; a shorter call says nothing.
LINE_EVERY_S = 20.0


def show_progress(enabled: bool | None) -> bool:
    """``enabled``, or by default: show in a terminal and in a notebook, not in a pipe or log."""
    if enabled is not None:
        return bool(enabled)
    return sys.stderr.isatty() or in_notebook()


def in_notebook() -> bool:
    """Whether this code runs in a Jupyter kernel. A loaded ``ipykernel`` module is not enough:
    tools that only start kernels (nbclient, in a test run) import it too.

    Example:
        >>> in_notebook()
        False
    """
    if "IPython" not in sys.modules:
        return False
    shell = sys.modules["IPython"].get_ipython()
    return shell is not None and "IPKernelApp" in shell.config


def progress(total: int, desc: str, enabled: bool | None = None) -> Any:
    """A ``tqdm`` bar (notebook widgets where available, text otherwise) that stays on screen
    when done, so the last line is a summary of the call. By default, where no bar is shown
    (a pipe or a log file), a call that runs long reports as `ProgressLines` instead.

    Example:
        >>> bar = progress(3, "demo", enabled=False)
        >>> bar.update(3); bar.close()
    """
    show = show_progress(enabled)
    if enabled is None and not show:
        return ProgressLines(total, desc)
    if show and in_notebook() and importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.notebook import tqdm as bar
    else:
        # Text bars where notebook widgets are missing (tqdm.auto would warn and fall back).
        from tqdm.std import tqdm as bar
    return bar(total=total, desc=desc, disable=not show, leave=True)


class ProgressLines:
    """A bar for logs: one whole line (``desc: n/total, elapsed [note]``) at most every
    ``every_s`` seconds (default `LINE_EVERY_S`), and a last one at the end if any was written;
    a bar's redraws would pile up on one line there. Silent when the call ends within
    ``every_s``.

    Example:
        >>> import io
        >>> out = io.StringIO()
        >>> with ProgressLines(2, "study", every_s=0.0, file=out) as lines:
        ...     lines.update(1); lines.update(1)
        >>> print(out.getvalue(), end="")
        study: 1/2 (50%), 0 s
        study: 2/2 (100%), 0 s
    """

    def __init__(
        self, total: int, desc: str, *, every_s: float | None = None, file: TextIO | None = None
    ) -> None:
        self.total, self.desc, self.n = total, desc, 0
        self.every_s = LINE_EVERY_S if every_s is None else every_s
        self.file = file
        self.start = self.last = time.monotonic()
        self.shown: int | None = None  # the count on the last line written
        self.closed = False
        self.note = ""

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if not self.closed and now - self.last >= self.every_s:
            self._write(now)

    def set_postfix(self, **values: object) -> None:
        self.note = ", ".join(f"{k}={v}" for k, v in values.items())

    def set_postfix_str(self, note: str) -> None:
        self.note = note

    def close(self) -> None:
        if not self.closed and self.shown is not None and self.shown != self.n:
            self._write(time.monotonic())
        self.closed = True

    def _write(self, now: float) -> None:
        share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        note = f" [{self.note}]" if self.note else ""
        print(
            f"{self.desc}: {self.n}/{self.total}{share}, {now - self.start:.0f} s{note}",
            file=self.file or sys.stderr,
            flush=True,
        )
        self.last, self.shown = now, self.n

    def __enter__(self) -> ProgressLines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
