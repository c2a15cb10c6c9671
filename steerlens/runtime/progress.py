"""Progress bars: one rule for when they show, so every long call behaves the same."""

from __future__ import annotations

import importlib.util
import sys
from typing import Any


def show_progress(enabled: bool | None) -> bool:
    """``enabled``, or by default: show in a terminal and in a notebook, not in a pipe or log."""
    if enabled is not None:
        return bool(enabled)
    return sys.stderr.isatty() or "ipykernel" in sys.modules


def progress(total: int, desc: str, enabled: bool | None = None) -> Any:
    """A ``tqdm`` bar (notebook widgets where available, text otherwise) that stays on screen
    when done, so the last line is a summary of the call.

    Example:
        >>> bar = progress(3, "demo", enabled=False)
        >>> bar.update(3); bar.close()
    """
    show = show_progress(enabled)
    if show and "ipykernel" in sys.modules and importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.notebook import tqdm as bar
    else:
        # Text bars where notebook widgets are missing (tqdm.auto would warn and fall back).
        from tqdm.std import tqdm as bar
    return bar(total=total, desc=desc, disable=not show, leave=True)
