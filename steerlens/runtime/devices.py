"""Devices and dtypes: a user's ``device=`` and ``dtype=`` checked against this machine."""

from __future__ import annotations

from typing import Any

import torch

from steerlens.errors import SpecError


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a ``torch.device`` (``None``: `default_device`), checked to exist here.

    Raises:
        SpecError: an unknown device name, or one this machine or PyTorch build lacks.
    """
    if device is None:
        return default_device()
    if isinstance(device, torch.device):
        dev = device
    elif isinstance(device, str):
        try:
            dev = torch.device(device)
        except RuntimeError as exc:
            raise SpecError(
                f"unknown device {device!r}; use 'cpu', 'cuda', 'cuda:1' or 'mps' "
                f"(PyTorch says: {' '.join(str(exc).split())})."
            ) from exc
    else:
        raise SpecError(
            f"device must be a string such as 'cpu' or 'cuda', or a torch.device; got "
            f"{device!r} ({type(device).__name__})."
        )
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = (
                "this PyTorch build has no CUDA support"
                if torch.version.cuda is None
                else "no CUDA GPU is visible"
            )
            raise SpecError(
                f"device {str(device)!r} is not available: {why} (torch {torch.__version__}); "
                "use device 'cpu', or install a CUDA build of PyTorch on a machine with a GPU."
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise SpecError(
                f"device {str(device)!r} is not available: this machine has {count} CUDA "
                f"device(s), cuda:0 to cuda:{count - 1}; use one of those."
            )
    elif dev.type != "cpu":
        backend = getattr(torch.backends, dev.type, None) or getattr(torch, dev.type, None)
        available = getattr(backend, "is_available", None)
        if callable(available) and not available():
            raise SpecError(
                f"device {str(device)!r} is not available on this machine or PyTorch build; "
                "use device 'cpu' (or 'cuda' where a GPU is present)."
            )
    return dev


def check_dtype(dtype: Any) -> torch.dtype:
    """``dtype`` if it is a floating-point ``torch.dtype``.

    Raises:
        SpecError: anything else (a string such as ``"float16"``, an integer dtype), naming the
            ``torch.dtype`` to pass instead.
    """
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return dtype
    hint = "torch.float32"
    if isinstance(dtype, str):
        named = getattr(torch, dtype.removeprefix("torch."), None)
        if isinstance(named, torch.dtype) and named.is_floating_point:
            hint = f"torch.{dtype.removeprefix('torch.')}"
    raise SpecError(
        f"dtype must be a floating-point torch.dtype; got {dtype!r} ({type(dtype).__name__}). "
        f"Pass dtype={hint} (or torch.float16 / torch.bfloat16)."
    )
