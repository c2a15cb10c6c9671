"""Tiny random models for tests and doctests: built offline, in well under a second.

The tiny model goes through the same conversion path as the embedded one (a Hugging Face
``LlamaForCausalLM`` wrapped by ``TransformerBridge.boot_transformers``) with a byte-level BPE
tokenizer that has a chat template like SmolLM2's.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from steerlens.model import bridge_from_hf

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
) -> Any:
    """A randomly initialised Llama-architecture ``TransformerBridge`` (2 layers, d_model 64).

    Example:
        >>> model = tiny_model()
        >>> model.cfg.n_layers, model.cfg.d_model
        (2, 64)
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
    bridge = bridge_from_hf(hf_model, tok, model_id=TINY_MODEL_ID, tokenizer_dir=_tokenizer_dir())
    bridge.cfg.default_prepend_bos = False
    if device is not None:
        bridge = bridge.to(device)
    return bridge
