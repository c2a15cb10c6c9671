"""The steerlens vector file: safetensors tensors, JSON metadata in the header. Never pickle."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from steerlens.errors import VectorFileError
from steerlens.io.atomic import atomic_path, output_path, path_text

FORMAT_NAME = "steerlens.steering_vector"
FORMAT_VERSION = "1"
_TENSOR_NAME = re.compile(r"(direction|affine_left|affine_right)\.([0-9]+)")
_REQUIRED_KEYS = (
    "model_id",
    "d_model",
    "layers",
    "hook_template",
    "provenance",
    "steerlens_version",
    "created_at",
)


def save_vector(vector: Any, path: str | Path) -> Path:
    """Write ``vector`` (a ``SteeringVector``) to ``path`` atomically; return the path written.

    ``~`` is expanded and missing parent folders are created; a folder as ``path`` raises
    `OutputPathError` before anything is written.
    """
    from safetensors.torch import save_file

    output_path(path, example_name="vector.safetensors")  # before any other work
    # clone(): safetensors refuses tensors that share memory, and a vector at several layers
    # (from_tensor(t, layer=[0, 1]), optimize_vector) holds one tensor object at each.
    tensors: dict[str, torch.Tensor] = {}
    for layer, v in vector.directions.items():
        tensors[f"direction.{layer}"] = (
            v.detach().to("cpu").clone(memory_format=torch.contiguous_format)
        )
    for layer, (left, right) in vector.affine.items():
        tensors[f"affine_left.{layer}"] = (
            left.detach().to("cpu").clone(memory_format=torch.contiguous_format)
        )
        tensors[f"affine_right.{layer}"] = (
            right.detach().to("cpu").clone(memory_format=torch.contiguous_format)
        )
    meta = vector.metadata()
    header = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "steerlens": json.dumps(meta, sort_keys=True),
    }
    with atomic_path(path, example_name="vector.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata=header)
    return Path(path).expanduser()


def damaged_file(path: Path, problem: str) -> VectorFileError:
    """The error for a steerlens vector file at ``path`` whose content is wrong (``problem``)."""
    return VectorFileError(
        f"{str(path)!r} is a damaged steerlens vector file: {problem}. Re-save the vector with "
        "SteeringVector.save() (or restore the file from a copy)."
    )


def read_vector_file(
    path: str | Path,
) -> tuple[Path, dict[str, dict[int, torch.Tensor]], dict[str, Any]]:
    """Read a file written by `save_vector` as plain data: its path, its tensors by part
    (``"direction"``, ``"affine_left"``, ``"affine_right"``) and layer, and its metadata.

    The header, the metadata's keys and types and the tensor names are checked here; building
    the vector (and the checks that need it) is `steerlens.steering.vector.SteeringVector.load`.

    Raises:
        VectorFileError: no such file, or one that is not a complete steerlens vector file.
    """
    from safetensors import safe_open

    p = Path(path_text(path, what="the vector file path", error=VectorFileError)).expanduser()
    if p.is_dir():
        raise VectorFileError(
            f"{str(p)!r} is a folder, not a vector file; pass the path of the .safetensors file "
            "written by SteeringVector.save()."
        )
    if not p.is_file():
        raise VectorFileError(f"no vector file at {str(p)!r}; check the path.")
    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open API
    except Exception as exc:  # safetensors raises its own error types for bad bytes
        raise VectorFileError(
            f"{str(p)!r} is not a readable safetensors file ({exc}); it may be truncated or not "
            "a steerlens vector. Re-save the vector with SteeringVector.save()."
        ) from exc
    if header.get("format") != FORMAT_NAME:
        raise VectorFileError(
            f"{str(p)!r} is a safetensors file but not a steerlens vector (header format "
            f"{header.get('format')!r}); load it with safetensors directly, or build a vector with "
            "SteeringVector.from_tensor()."
        )
    if header.get("format_version") != FORMAT_VERSION:
        raise VectorFileError(
            f"{str(p)!r} has vector format version {header.get('format_version')!r}; this "
            f"steerlens reads version {FORMAT_VERSION}. Upgrade steerlens."
        )

    try:
        meta = json.loads(header.get("steerlens", ""))
    except json.JSONDecodeError as exc:
        raise damaged_file(p, f"its 'steerlens' header is not JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise damaged_file(p, f"its metadata is a {type(meta).__name__}, not a JSON object")
    missing = [k for k in _REQUIRED_KEYS if k not in meta]
    if missing:
        raise damaged_file(p, f"its metadata lacks the key(s) {', '.join(map(repr, missing))}")
    for key, kind in (("model_id", str), ("hook_template", str), ("provenance", dict)):
        if not isinstance(meta[key], kind):
            raise damaged_file(p, f"metadata {key!r} is {meta[key]!r}, not a {kind.__name__}")

    parts: dict[str, dict[int, torch.Tensor]] = {
        "direction": {},
        "affine_left": {},
        "affine_right": {},
    }
    for name, t in tensors.items():
        match = _TENSOR_NAME.fullmatch(name)
        if match is None:
            raise damaged_file(
                p,
                f"it holds a tensor named {name!r}; only direction.<layer>, "
                "affine_left.<layer> and affine_right.<layer> belong in a vector file",
            )
        parts[match.group(1)][int(match.group(2))] = t
    return p, parts, meta
