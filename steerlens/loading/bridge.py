"""From a Hugging Face model to the ``TransformerBridge`` that steerlens works with:
`bridge_from_hf` wraps a model in memory, `place` moves it to a device and dtype, and
`catch_oom` turns weights that do not fit into a `ModelError` saying what to do."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from steerlens.errors import ModelError
from steerlens.loading.messages import one_line

_T = TypeVar("_T")


def bridge_from_hf(hf_model: Any, tok: Any, *, model_id: str, tokenizer_dir: Path) -> Any:
    """Wrap a Hugging Face causal LM and its tokenizer in a ``TransformerBridge``, offline.

    ``tokenizer_dir`` must hold the saved tokenizer: the Bridge reloads tokenizers by path.
    """
    from transformer_lens.model_bridge import TransformerBridge

    hf_model.eval()
    bridge = TransformerBridge.boot_transformers(
        str(tokenizer_dir), hf_model=hf_model, tokenizer=tok
    )
    bridge.cfg.model_name = model_id
    bridge.steerlens_model_id = model_id
    if bridge.training:  # the Bridge copies the model's mode; a second pass costs ~0.1 s
        bridge.eval()
    return bridge


def place(model: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """``model`` on ``device`` in ``dtype`` (moved only if needed), or a clear `ModelError`
    when it does not fit there."""
    p = next(model.parameters())
    if p.device == device and p.dtype == dtype:
        return model
    return catch_oom(lambda: model.to(device, dtype), device, dtype, model)


def catch_oom(
    load: Callable[[], _T], device: torch.device, dtype: torch.dtype, model: Any = None
) -> _T:
    """``load()``, with an out-of-memory error turned into a `ModelError` saying what to do."""
    try:
        return load()
    except (RuntimeError, MemoryError) as exc:
        text = one_line(str(exc))
        if not isinstance(exc, (torch.OutOfMemoryError, MemoryError)) and not any(
            s in text.lower() for s in ("out of memory", "can't allocate memory")
        ):
            raise
        size = ""
        if model is not None:
            n = sum(p.numel() for p in model.parameters())
            size = f" ({n / 1e6:.0f} M parameters, {_size(n * dtype.itemsize)} in {dtype})"
        cause = text if len(text) <= 300 else text[:297] + "..."
    # Outside the except block: the traceback no longer pins the half-moved tensors.
    if device.type == "cuda":
        torch.cuda.empty_cache()
    fixes = ["load it with dtype=torch.bfloat16 (half the memory)"] if dtype.itemsize > 2 else []
    if device.type != "cpu":
        fixes.append("use another device (device='cpu')")
    fixes.append("free memory there")
    advice = "; ".join(fixes)
    raise ModelError(
        f"the model's weights do not fit on device {str(device)!r}{size}: {cause.rstrip('.')}. "
        f"{advice[0].upper()}{advice[1:]}."
    )


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.1f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.0f} MiB"
