"""Duck-typed access to a TransformerLens model: a TL 4 ``TransformerBridge`` or a TL 3
``HookedTransformer``. Everything steerlens needs from a model goes through here."""

from __future__ import annotations

from typing import Any

import torch

from steerlens.errors import LayerError, SteerlensError

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
        raise SteerlensError(
            "this model has no tokenizer (model.tokenizer is None); steerlens needs one to turn "
            "text into tokens. Attach a Hugging Face tokenizer: model.set_tokenizer(tokenizer)."
        )
    return tok


def check_layer(model: Any, layer: int, *, what: str = "layer") -> int:
    """Return ``layer`` if the model has a ``blocks.{layer}.hook_resid_pre``, else raise."""
    n = n_layers(model)
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise LayerError(f"{what} must be an int, got {layer!r} ({type(layer).__name__}).")
    if not 0 <= layer < n:
        raise LayerError(
            f"{what} {layer} is out of range: hook {hook_name(layer)!r} not found; the model "
            f"has {n} layers (0-{n - 1}); pass a {what} between 0 and {n - 1}."
        )
    return layer


def encode(model: Any, text: str) -> list[int]:
    """Tokenise ``text`` exactly as written: no BOS or other special tokens are added.

    Chat prompts already carry their own start tokens; adding a BOS changes the model's output.
    """
    return list(tokenizer(model)(text, add_special_tokens=False)["input_ids"])


def decode(model: Any, ids: list[int] | torch.Tensor, *, skip_special_tokens: bool = True) -> str:
    if isinstance(ids, torch.Tensor):
        ids = ids.tolist()
    return str(tokenizer(model).decode(ids, skip_special_tokens=skip_special_tokens))


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


def chat_prompt(model: Any, user_message: str, *, system: str | None = None) -> str:
    """Format one user message with the model's chat template, ready for the answer.

    Example:
        >>> from steerlens.testing import tiny_model
        >>> chat_prompt(tiny_model(), "Hi")
        '<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'
    """
    tok = tokenizer(model)
    messages = [] if system is None else [{"role": "system", "content": system}]
    messages.append({"role": "user", "content": user_message})
    if getattr(tok, "chat_template", None) is None:
        raise SteerlensError(
            "this model's tokenizer has no chat template, so chat=True cannot format prompts; "
            "pass chat=False and give the full prompt text."
        )
    return str(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
