"""The steerlens vector file: safetensors tensors, JSON metadata in the header. Never pickle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from steerlens.errors import VectorFileError
from steerlens.io.atomic import atomic_path

FORMAT_NAME = "steerlens.steering_vector"
FORMAT_VERSION = "1"


def save_vector(vector: Any, path: str | Path) -> Path:
    """Write ``vector`` (a ``SteeringVector``) to ``path`` atomically."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    for layer, v in vector.directions.items():
        tensors[f"direction.{layer}"] = v.detach().to("cpu").contiguous()
    for layer, (left, right) in vector.affine.items():
        tensors[f"affine_left.{layer}"] = left.detach().to("cpu").contiguous()
        tensors[f"affine_right.{layer}"] = right.detach().to("cpu").contiguous()
    meta = vector.metadata()
    header = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "steerlens": json.dumps(meta, sort_keys=True),
    }
    target = Path(path)
    with atomic_path(target) as tmp:
        save_file(tensors, str(tmp), metadata=header)
    return target


def load_vector(path: str | Path, *, device: str | torch.device | None = None) -> Any:
    """Read a file written by :func:`save_vector`; clear errors for anything else."""
    from safetensors import safe_open

    from steerlens.vector import SteeringVector

    p = Path(path)
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
        meta = json.loads(header["steerlens"])
        directions = {
            int(k.split(".")[1]): t for k, t in tensors.items() if k.startswith("direction.")
        }
        affine = {
            int(k.split(".")[1]): (t, tensors[f"affine_right.{k.split('.')[1]}"])
            for k, t in tensors.items()
            if k.startswith("affine_left.")
        }
        if sorted(directions) != sorted(meta["layers"]):
            raise ValueError(
                f"tensors for layers {sorted(directions)}, header says {meta['layers']}"
            )
        vector = SteeringVector(
            directions=directions,
            model_id=meta["model_id"],
            affine=affine,
            hook_template=meta["hook_template"],
            provenance=meta["provenance"],
            steerlens_version=meta["steerlens_version"],
            created_at=meta["created_at"],
        )
    except (KeyError, ValueError, TypeError, IndexError) as exc:
        raise VectorFileError(
            f"{str(p)!r} is a damaged steerlens vector file ({exc}); re-save it."
        ) from exc
    return vector.to(device) if device is not None else vector
