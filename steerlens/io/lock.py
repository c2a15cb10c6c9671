"""One writer at a time for a results folder: an OS lock file beside it, with a note of who
holds it (studies and the benchmark share it)."""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from steerlens.errors import StudyFolderError


@contextlib.contextmanager
def writer_lock(path: str | Path) -> Iterator[None]:
    """Hold the study folder ``path`` for one run: a lock file beside it (``.<name>.lock``,
    the `filelock` package's OS lock, which a process that dies releases) and a note of who
    holds it. A second run meanwhile gets a `StudyFolderError` naming the holder.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp()) / "study"
        >>> with writer_lock(folder):
        ...     pass
    """
    folder = Path(path).expanduser()
    folder.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder.with_name(f".{folder.name}.lock")), timeout=0)
    note = folder.with_name(f".{folder.name}.lock.holder")
    try:
        lock.acquire()
    except Timeout:
        try:
            holder = note.read_text(encoding="utf-8").strip()
        except OSError:
            holder = "another process"
        raise StudyFolderError(
            f"the study folder {str(folder)!r} is in use by {holder}; wait for that run to "
            "finish (or stop it) and run again: finished units are kept."
        ) from None
    try:
        since = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
        note.write_text(
            f"process {os.getpid()} on {socket.gethostname()} since {since}", encoding="utf-8"
        )
        yield
    finally:
        note.unlink(missing_ok=True)
        lock.release()


__all__ = ["writer_lock"]
