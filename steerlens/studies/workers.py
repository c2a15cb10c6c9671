"""What a Ray worker needs, for studies and the benchmark alike: the ``ray`` module (or a
clear error) and the model built once per worker process."""

from __future__ import annotations

import functools
from typing import Any

from steerlens.errors import MissingPackageError
from steerlens.studies.spec import load_study_model

INSTALL = "pip install steerlens[ray]"


def import_ray() -> Any:
    """The ``ray`` module, or a `MissingPackageError` saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise MissingPackageError(
            f"the Ray backend needs the ray package, which is not installed ({exc}); "
            f"{INSTALL}, or use the serial backend (backend='serial', --backend serial)."
        ) from exc
    return ray


@functools.lru_cache(maxsize=2)
def worker_model(name: str, device: str | None) -> Any:
    """The model ``name`` on ``device``, built once per process (each Ray worker keeps its own).

    ``device=None`` is CUDA when this process sees a GPU, else the CPU.
    """
    return load_study_model(name, device=device)


__all__ = ["INSTALL", "import_ray", "worker_model"]
