"""Transformers' own progress bars during a load: shown where steerlens shows its bars (a
terminal, a notebook), kept out of pipes and log files, where each redraw is a new line."""

from __future__ import annotations

import contextlib
import functools
import importlib
from collections.abc import Iterator
from typing import Any

from steerlens.runtime.progress import show_progress


@contextlib.contextmanager
def library_bars(enabled: bool | None = None) -> Iterator[None]:
    """Inside the block transformers' and the hub client's bars follow ``enabled`` (by default
    `show_progress`'s rule); after it they are as they were.

    Example:
        >>> from transformers.utils import logging
        >>> with library_bars(False):
        ...     logging.is_progress_bar_enabled()
        False
    """
    if show_progress(enabled):
        yield
        return
    from transformers.utils import logging as hf_logging

    # The GGUF conversion draws its bar with tqdm directly, outside transformers' switch.
    gguf: Any = importlib.import_module("transformers.modeling_gguf_pytorch_utils")
    gguf_bar = gguf.tqdm
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    gguf.tqdm = functools.partial(gguf_bar, disable=True)
    try:
        yield
    finally:
        gguf.tqdm = gguf_bar
        if was_enabled:
            hf_logging.enable_progress_bar()
