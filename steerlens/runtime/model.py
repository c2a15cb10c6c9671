"""Duck-typed access to a TransformerLens model: a TL 4 ``TransformerBridge`` or a TL 3
``HookedTransformer``. Everything steerlens reads from a model object goes through here."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from steerlens.errors import LayerError, ModelError

HOOK_TEMPLATE = "blocks.{layer}.hook_resid_pre"


def hook_name(layer: int) -> str:
    """The residual-stream hook where steerlens adds a vector before block ``layer``."""
    return HOOK_TEMPLATE.format(layer=layer)


def n_layers(model: Any) -> int:
    return int(model.cfg.n_layers)


def d_model(model: Any) -> int:
    return int(model.cfg.d_model)


def model_id(model: Any) -> str:
    """A stable name for the model, recorded on every vector made with it."""
    name = getattr(model, "steerlens_model_id", None) or getattr(model.cfg, "model_name", None)
    return str(name) if name else type(model).__name__


def device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover - a model without parameters
        return torch.device(str(getattr(model.cfg, "device", "cpu")))


def dtype(model: Any) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32  # pragma: no cover


def tokenizer(model: Any) -> Any:
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise ModelError(
            "this model has no tokenizer (model.tokenizer is None); steerlens needs one to turn "
            "text into tokens. Attach a Hugging Face tokenizer: model.set_tokenizer(tokenizer)."
        )
    return tok


def n_ctx(model: Any) -> int | None:
    """The model's context window, or ``None`` when its config does not say."""
    value = getattr(model.cfg, "n_ctx", None)
    return int(value) if value else None


def vocab_size(model: Any) -> int | None:
    value = getattr(model.cfg, "d_vocab", None)
    return int(value) if value else None


def supports_kv_cache(model: Any) -> bool:
    """Whether ``model(...)`` takes and returns Hugging Face cache objects.

    A ``TransformerBridge`` does; a TL 3 ``HookedTransformer`` does not.
    """
    return hasattr(model, "_driver")


def check_layer(model: Any, layer: int, *, what: str = "layer") -> int:
    """Return ``layer`` if the model has a ``blocks.{layer}.hook_resid_pre``, else raise."""
    n = n_layers(model)
    # numpy and torch integers are ints too (e.g. a layer picked with argmax).
    if isinstance(layer, torch.Tensor) and layer.ndim == 0 and not layer.is_floating_point():
        layer = int(layer)
    if isinstance(layer, bool) or not isinstance(layer, numbers.Integral):
        raise LayerError(f"{what} must be an int, got {layer!r} ({type(layer).__name__}).")
    layer = int(layer)
    if not 0 <= layer < n:
        raise LayerError(
            f"{what} {layer} is out of range: hook {hook_name(layer)!r} not found; the model "
            f"has {n} layers (0-{n - 1}); pass a layer between 0 and {n - 1}."
        )
    return layer


def pad_token_id(model: Any) -> int:
    tok = tokenizer(model)
    for candidate in (tok.pad_token_id, tok.eos_token_id, 0):
        if candidate is not None:
            return int(candidate)
    return 0  # pragma: no cover


def eos_token_ids(model: Any) -> set[int]:
    tok = tokenizer(model)
    ids = {tok.eos_token_id} if tok.eos_token_id is not None else set()
    # Chat models end a turn with their own token (SmolLM2: <|im_end|>, which is also its EOS).
    for special in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>"):
        tid = tok.convert_tokens_to_ids(special)
        if isinstance(tid, int) and tid != tok.unk_token_id:
            ids.add(tid)
    return {int(i) for i in ids if i is not None}


def check_layers(model: Any, layer: int | Sequence[int], *, what: str = "layer") -> list[int]:
    """One layer or a list of layers, each checked by `check_layer`, as a list."""
    # Anything that is not a list of layers goes to check_layer, which explains what is wrong.
    many = isinstance(layer, (list, tuple, range, np.ndarray)) or (
        isinstance(layer, torch.Tensor) and layer.ndim == 1
    )
    layers: list[Any] = list(layer) if many else [layer]  # type: ignore[arg-type]
    if not layers:
        raise LayerError(f"no {what} given; pass {what}=<int> or a list of layers.")
    return [check_layer(model, la, what=what) for la in layers]


def unembed_matrix(model: Any) -> torch.Tensor:
    """The unembedding ``W_U``, ``[d_model, d_vocab]``: ``model.W_U`` (TransformerBridge,
    HookedTransformer), else ``model.unembed.W_U``, else the weight of a plain
    ``nn.Linear`` ``model.unembed``.

    Example:
        >>> from steerlens.testing import tiny_model
        >>> tuple(unembed_matrix(tiny_model()).shape)
        (64, 265)
    """
    unembed = getattr(model, "unembed", None)
    for owner in (model, unembed):
        w = getattr(owner, "W_U", None) if owner is not None else None
        if isinstance(w, torch.Tensor):
            return w
    weight = getattr(unembed, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.ndim == 2:
        return weight.T  # nn.Linear(d_model, d_vocab) stores [d_vocab, d_model]
    raise ModelError(
        f"cannot find the unembedding of this {type(model).__name__}: it has no W_U and no "
        "unembed.W_U or unembed.weight; steerlens needs the [d_model, d_vocab] unembedding "
        "matrix (a TransformerLens model has model.W_U)."
    )


def final_norm(model: Any) -> tuple[str | None, torch.Tensor | None]:
    """The final norm before the unembedding: its kind (the config's ``normalization_type``:
    ``"RMS"``, ``"LN"``, ``"RMSPre"``, ``"LNPre"`` or ``None``) and its effective elementwise
    weight ``[d_model]`` (``None`` when it has none, e.g. folded into ``W_U``). Models that
    store an RMSNorm weight as an offset from 1 (Gemma: ``cfg.rmsnorm_uses_offset``) get
    ``1 + w``.

    Example:
        >>> from steerlens.testing import tiny_model
        >>> kind, weight = final_norm(tiny_model())
        >>> kind, tuple(weight.shape)
        ('RMS', (64,))
    """
    kind = getattr(model.cfg, "normalization_type", None)
    norm = getattr(model, "ln_final", None)
    if norm is None:
        return (str(kind) if kind else None), None
    weight = getattr(norm, "w", None)
    if not isinstance(weight, torch.Tensor):
        weight = getattr(norm, "weight", None)
    if not isinstance(weight, torch.Tensor):
        return (str(kind) if kind else None), None
    if getattr(model.cfg, "rmsnorm_uses_offset", False):
        weight = 1.0 + weight
    return (str(kind) if kind else None), weight


def hf_decoder_layers(model: Any) -> str | None:
    """The name of the Hugging Face decoder-layer list under the model's ``base_model``
    (``"layers"`` for Llama, ``"h"`` for GPT-2), if one list of ``n_layers`` modules is there.

    Tools that hook Hugging Face modules by name (lm-eval's ``steered`` model) address decoder
    layer ``k`` as ``f"{name}.{k}"``.

    Example:
        >>> from steerlens.testing import tiny_model
        >>> hf_decoder_layers(tiny_model())
        'layers'
    """
    base = getattr(getattr(model, "original_model", None), "base_model", None)
    if not isinstance(base, torch.nn.Module):
        return None
    n = n_layers(model)
    names = [
        name
        for name, module in base.named_modules()
        if isinstance(module, torch.nn.ModuleList) and len(module) == n and name
    ]
    return names[0] if len(names) == 1 else None


def hf_model_type(model: Any) -> str | None:
    """The Hugging Face ``model_type`` of a TransformerLens model (``"llama"``), if known.

    This is the name repeng and llama.cpp's cvector-generator record with a vector. Read from
    a ``TransformerBridge``'s ``original_model.config``, else from a ``HookedTransformer``'s
    ``cfg.original_architecture`` (``"LlamaForCausalLM"``).

    Example:
        >>> from steerlens.testing import tiny_model
        >>> hf_model_type(tiny_model())
        'llama'
    """
    config = getattr(getattr(model, "original_model", None), "config", None)
    model_type = getattr(config, "model_type", None)
    if isinstance(model_type, str) and model_type:
        return model_type
    architecture = getattr(getattr(model, "cfg", None), "original_architecture", None)
    if isinstance(architecture, str):
        try:
            from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        except ImportError:  # pragma: no cover - transformers is a dependency
            return None
        # Several model types may share a class (internlm3 uses LlamaForCausalLM).
        names = [n for n, c in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.items() if c == architecture]
        stem = architecture.removesuffix("ForCausalLM").lower()
        if stem in names or len(names) == 1:
            return stem if stem in names else str(names[0])
    return None
