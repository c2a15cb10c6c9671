"""GGUF file headers, read without loading anything: whether a file starts like a GGUF file
that transformers can read (`check_gguf_header`), and which architecture it declares
(`gguf_architecture`). Both read at most the file's first 512 bytes."""

from __future__ import annotations

import struct
from pathlib import Path

from steerlens.errors import ModelError

_GGUF_MAGIC = b"GGUF"


def check_gguf_header(path: Path) -> None:
    """Raise a `ModelError` unless ``path`` starts like a GGUF file (magic, version, counts)."""
    try:
        with path.open("rb") as f:
            head = f.read(24)
    except OSError as exc:
        raise ModelError(
            f"cannot read {str(path)!r}: {exc.strerror or exc}; check the path and its permissions."
        ) from exc
    if not head.startswith(_GGUF_MAGIC):
        raise ModelError(
            f"{str(path)!r} is not a GGUF file: it starts with {head[:8]!r}, not {_GGUF_MAGIC!r}. "
            "Pass a .gguf file (e.g. one made by llama.cpp), or the folder that save_pretrained "
            "wrote for a Hugging Face model."
        )
    if len(head) < 24:
        raise ModelError(
            f"GGUF file {str(path)!r} is damaged: only {path.stat().st_size} bytes, too short "
            "for a GGUF header. Download or export it again."
        )
    version = struct.unpack_from("<I", head, 4)[0]
    if version not in (2, 3):
        raise ModelError(
            f"GGUF file {str(path)!r} has format version {version}; transformers reads "
            "versions 2 and 3. The file is damaged, or export it again with a current llama.cpp."
        )


def gguf_architecture(path: Path) -> str | None:
    """``general.architecture`` when it is the first metadata entry (as llama.cpp writes it)."""
    try:
        with path.open("rb") as f:
            head = f.read(512)
        size = struct.unpack_from("<Q", head, 24)[0]
        key = head[32 : 32 + size]
        kind, length = struct.unpack_from("<IQ", head, 32 + size)
        if key != b"general.architecture" or kind != 8:  # 8: a string value
            return None
        return head[44 + size : 44 + size + length].decode()
    except (OSError, struct.error, UnicodeDecodeError):
        return None
