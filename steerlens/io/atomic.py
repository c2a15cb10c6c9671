"""Atomic file writes: a reader sees the old file or the complete new one, never a torn one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from steerlens.errors import OutputPathError, SteerlensError


def _umask() -> int:
    # Reading the umask from /proc avoids os.umask's set-and-restore, during which another
    # thread creating a file would get mode 0o666/0o777.
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0)
    os.umask(mask)
    return mask


def path_text(
    path: object, *, what: str = "the path", error: type[SteerlensError] = OutputPathError
) -> str:
    """``path`` as a non-empty string; a clear ``error`` for ``None``, numbers or ``""``.

    Raises:
        OutputPathError: (or ``error``) ``path`` is not a ``str`` or ``os.PathLike``, or is
            empty.
    """
    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise error(
            f"{what} must be a str or pathlib.Path, got {path!r} ({type(path).__name__}); pass "
            "a file path such as 'vector.safetensors'."
        )
    raw = os.fspath(path)
    if not isinstance(raw, str) or not raw.strip():
        raise error(f"{what} is empty ({raw!r}); pass a file path such as 'vector.safetensors'.")
    return raw


def output_path(path: str | os.PathLike[str], *, example_name: str = "output") -> Path:
    """``path`` with ``~`` expanded, checked to be usable as a file before anything is written.

    Raises:
        OutputPathError: ``path`` is an existing folder, ends with a path separator, or lies
            under something that is not a folder.
    """
    raw = path_text(path, what="the output path")
    target = Path(raw).expanduser()
    if target.is_dir() or raw.endswith(("/", os.sep)):
        raise OutputPathError(
            f"the output path {raw!r} is a folder, but a file path is needed; pass a file "
            f"inside it, e.g. {str(target / example_name)!r}."
        )
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputPathError(
                    f"cannot write {raw!r}: {str(parent)!r} is a file, not a folder; choose "
                    "another path."
                )
            break
    return target


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, example_name: str = "output") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    ``~`` is expanded and missing parent folders are created. A path that cannot be a file
    (see `output_path`) or a folder that cannot be written raises
    `OutputPathError` before anything is written. If the body
    raises, the temporary file is deleted and ``path`` is left as it was, so a failed save
    never destroys what the user had saved before.
    """
    target = output_path(path, example_name=example_name)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise OutputPathError(
            f"cannot write {str(target)!r}: {exc.strerror or exc}; choose a folder you can "
            "write to (check its permissions and free space)."
        ) from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            yield tmp
        except OSError as exc:
            written = tmp.stat().st_size if tmp.exists() else 0
            raise OutputPathError(
                f"writing {str(target)!r} failed after {written} bytes: {exc.strerror or exc}; "
                "nothing was replaced (a file saved there before is intact). Free space or "
                "raise the file-size limit (ulimit -f), then save again."
            ) from exc
        # mkstemp makes the file private (0600); give it the mode a plain open() would have.
        os.chmod(tmp, target.stat().st_mode & 0o777 if target.exists() else 0o666 & ~_umask())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
