"""Tiny random models for tests and doctests: built offline, in well under a second.

The tiny model goes through the same conversion path as the embedded one (a Hugging Face
``LlamaForCausalLM`` wrapped by ``TransformerBridge.boot_transformers``) with a byte-level BPE
tokenizer that has a chat template like SmolLM2's. `tiny_family_model` builds the other model
families the same way, from their Hugging Face configs (`TINY_FAMILIES`).
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from steerlens.errors import SpecError
from steerlens.loading.bridge import bridge_from_hf

TINY_MODEL_ID = "steerlens/tiny-llama"
_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# A few merges so that some words are single tokens and joint tokenisation can merge across a
# prompt/completion boundary, as real BPE tokenizers do.
_MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("Ġ", "a"), ("i", "n"), ("Ġ", "P")]


@functools.lru_cache(maxsize=1)
def _tokenizer_dir() -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(_SPECIALS)}
    for ch in sorted(alphabet):
        vocab.setdefault(ch, len(vocab))
    for a, b in _MERGES:
        vocab.setdefault(a + b, len(vocab))
    bpe = models.BPE(vocab=vocab, merges=list(_MERGES))
    backend = Tokenizer(bpe)
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        additional_special_tokens=_SPECIALS,
    )
    fast.chat_template = _CHAT_TEMPLATE
    folder = Path(tempfile.mkdtemp(prefix="steerlens-tiny-tokenizer-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    fast.save_pretrained(str(folder))
    return folder


def tiny_tokenizer() -> Any:
    """A byte-level BPE tokenizer with SmolLM2's special tokens and a chat template."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(_tokenizer_dir()))


def tiny_model(
    *,
    n_layers: int = 2,
    d_model: int = 64,
    seed: int = 0,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> Any:
    """A randomly initialised Llama-architecture ``TransformerBridge`` (2 layers, d_model 64),
    its parameters in ``dtype`` (the same draw in every dtype).

    Example:
        >>> model = tiny_model()
        >>> model.cfg.n_layers, model.cfg.d_model
        (2, 64)
        >>> next(tiny_model(dtype=torch.float64).parameters()).dtype
        torch.float64
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=d_model,
        intermediate_size=2 * d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        hf_model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(generator_state)
    # Converted before wrapping: the Bridge's own ``.to(dtype)`` prints a line.
    hf_model = torch.nn.Module.to(hf_model, dtype)
    bridge = bridge_from_hf(hf_model, tok, model_id=TINY_MODEL_ID, tokenizer_dir=_tokenizer_dir())
    bridge.cfg.default_prepend_bos = False
    bridge.cfg.dtype = dtype
    if device is not None:
        bridge = bridge.to(device)
    return bridge


def _rotary(d_model: int, n_layers: int) -> dict[str, Any]:
    return {
        "hidden_size": d_model,
        "intermediate_size": 2 * d_model,
        "num_hidden_layers": n_layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
    }


def _gemma_sliding(d_model: int, n_layers: int) -> dict[str, Any]:
    """Gemma 2 and 3: sliding-window and full attention layers in turn, logits soft-capped."""
    layer_types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n_layers)]
    return _rotary(d_model, n_layers) | {
        "head_dim": d_model // 4,
        "sliding_window": 4,
        "layer_types": layer_types,
        "final_logit_softcapping": 3.0,
    }


# family -> (config class, model class, config fields for (d_model, n_layers)). Sliding-window
# families get a window of 4 tokens, shorter than any packed test sequence, so it matters; Gemma
# gets soft-caps low enough to bind on a random model.
TINY_FAMILIES: dict[str, tuple[str, str, Any]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", _rotary),
    "mistral": (
        "MistralConfig",
        "MistralForCausalLM",
        lambda d, n: _rotary(d, n) | {"sliding_window": 4},
    ),
    "qwen2": (
        "Qwen2Config",
        "Qwen2ForCausalLM",
        lambda d, n: (
            _rotary(d, n)
            | {"use_sliding_window": True, "sliding_window": 4, "max_window_layers": 1}
        ),
    ),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", lambda d, n: _rotary(d, n) | {"head_dim": 16}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", lambda d, n: _rotary(d, n) | {"sliding_window": 4}),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", _rotary),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", lambda d, n: _rotary(d, n) | {"head_dim": d // 4}),
    "gemma2": (
        "Gemma2Config",
        "Gemma2ForCausalLM",
        lambda d, n: _gemma_sliding(d, n) | {"attn_logit_softcapping": 2.0},
    ),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", _gemma_sliding),
    "gpt2": (
        "GPT2Config",
        "GPT2LMHeadModel",
        lambda d, n: {"n_embd": d, "n_layer": n, "n_head": 4, "n_positions": 256},
    ),
    "gpt_neox": (
        "GPTNeoXConfig",
        "GPTNeoXForCausalLM",
        lambda d, n: _rotary(d, n) | {"rotary_pct": 0.25, "num_key_value_heads": 4},
    ),
    # No packed-engine adapter (the hooked path, with a notice).
    "opt": (
        "OPTConfig",
        "OPTForCausalLM",
        lambda d, n: {
            "hidden_size": d,
            "ffn_dim": 2 * d,
            "num_hidden_layers": n,
            "num_attention_heads": 4,
            "word_embed_proj_dim": d,
            "max_position_embeddings": 256,
        },
    ),
}


def tiny_hf_model(
    family: str, *, n_layers: int = 2, d_model: int = 64, seed: int = 0, **config: Any
) -> tuple[Any, Any]:
    """The Hugging Face model (not wrapped by a Bridge) and tokenizer `tiny_family_model`
    wraps: random weights drawn from ``seed`` without touching torch's global generator.

    Example:
        >>> hf_model, tok = tiny_hf_model("llama")
        >>> type(hf_model).__name__, hf_model.config.vocab_size == len(tok)
        ('LlamaForCausalLM', True)
    """
    import transformers

    if family not in TINY_FAMILIES:
        raise SpecError(
            f"unknown family {family!r}; pick one of {', '.join(sorted(TINY_FAMILIES))}."
        )
    config_name, model_name, fields = TINY_FAMILIES[family]
    tok = tiny_tokenizer()
    special = {
        "vocab_size": len(tok),
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        # Weights 10x the usual init scale: attention is sharp, so windows and soft-caps bind.
        "initializer_range": 0.2,
    }
    hf_config = getattr(transformers, config_name)(**(special | fields(d_model, n_layers) | config))
    hf_config.architectures = [model_name]
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        hf_model = getattr(transformers, model_name)(hf_config)
    finally:
        torch.random.set_rng_state(generator_state)
    return hf_model, tok


def tiny_family_model(
    family: str,
    *,
    n_layers: int = 2,
    d_model: int = 64,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    **config: Any,
) -> Any:
    """A randomly initialised ``TransformerBridge`` of one model family (`TINY_FAMILIES`),
    built offline from its Hugging Face config; ``config`` overrides config fields. Weights are
    drawn with std 0.2 (``initializer_range``), ten times the usual, so that attention is sharp
    and sliding windows and soft-caps change the output.

    Example:
        >>> model = tiny_family_model("gemma2")
        >>> type(model.original_model).__name__, model.cfg.n_layers
        ('Gemma2ForCausalLM', 2)
    """
    hf_model, tok = tiny_hf_model(family, n_layers=n_layers, d_model=d_model, seed=seed, **config)
    if dtype is not None:
        hf_model = torch.nn.Module.to(hf_model, dtype)
    bridge = bridge_from_hf(
        hf_model, tok, model_id=f"steerlens/tiny-{family}", tokenizer_dir=_tokenizer_dir()
    )
    bridge.cfg.default_prepend_bos = False
    bridge.cfg.dtype = dtype
    if device is not None:
        bridge = bridge.to(device)
    return bridge
