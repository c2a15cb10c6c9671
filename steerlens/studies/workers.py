"""What a Ray worker needs, for studies and the benchmark alike: the ``ray`` module (or a
clear error) and the model built once per worker process."""

from __future__ import annotations

import functools
from typing import Any

from steerlens.errors import MissingPackageError, SpecError
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


def check_ray_settings(max_retries: Any) -> None:
    """Refuse a ``max_retries`` that is not an int >= 0, and a missing ``ray`` package, before
    any work (what a Ray backend checks when it is made).

    Example:
        >>> check_ray_settings(-1)
        Traceback (most recent call last):
        ...
        steerlens.errors.SpecError: max_retries must be an int >= 0, got -1.
    """
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise SpecError(f"max_retries must be an int >= 0, got {max_retries!r}.")
    import_ray()


@functools.lru_cache(maxsize=2)
def worker_model(name: str, device: str | None) -> Any:
    """The model ``name`` on ``device``, built once per process (each Ray worker keeps its own).

    ``device=None`` is CUDA when this process sees a GPU, else the CPU.
    """
    return load_study_model(name, device=device)


__all__ = ["INSTALL", "check_ray_settings", "import_ray", "worker_model"]
