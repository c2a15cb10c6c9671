"""The runtime: everything between steerlens and a TransformerLens model.

- `model`: duck-typed access to the model (layers, hook names, device,
  tokenizer, special tokens, context window).
- `tokens`: encoding (no BOS of its own), decoding, the chat rule, and
  the tokens of a completion after a prompt.
- `batch`: padding and batching.
- `context`: where the prompt lies in the forward call now running,
  published for steering hooks.
- `forward`: logits at chosen positions, per-token log-probabilities of
  token rows, next-token logits, one KV-cached decoding step.
- `prefixes`: KV caches of prompt prefixes, computed once and reused (`PrefixStore`).
- `masking`: attention scores kept finite for a float64 model's float32 softmax.
- `decoding`: the decoder (greedy or sampled, KV-cached).
- `plain`: the Hugging Face model under a Bridge without its wrappers; decoding steps on it
  when only residual-stream hooks are installed (`PlainDecoder`).
- `logprobs`: token log-probabilities, KL divergences and loss units.
- `devices`: `device=` and `dtype=` checked against this machine.

Nothing in the runtime imports the rest of steerlens (only `steerlens.errors`).

Example:
    >>> from steerlens import runtime
    >>> from steerlens.testing import tiny_model
    >>> model = tiny_model()
    >>> ids = runtime.encode(model, "the cat")
    >>> [lp.shape[0] for lp in runtime.score_rows(model, [(ids, 1)])] == [len(ids) - 1]
    True
"""

from steerlens.runtime.batch import check_batch_size, chunks, left_pad, right_pad
from steerlens.runtime.context import TokenContext, current_context, token_context
from steerlens.runtime.decoding import decode_tokens
from steerlens.runtime.devices import check_device, check_dtype, default_device
from steerlens.runtime.forward import (
    check_fits,
    continue_from,
    last_logits,
    logits_at,
    next_logits,
    score_rows,
)
from steerlens.runtime.logprobs import (
    check_coldness,
    kl_divergence,
    kl_of_logprobs,
    token_logprobs,
)
from steerlens.runtime.masking import finite_scores
from steerlens.runtime.model import (
    HOOK_TEMPLATE,
    check_layer,
    check_layers,
    d_model,
    device,
    dtype,
    eos_token_ids,
    final_norm,
    hf_decoder_layers,
    hf_model_type,
    hook_name,
    model_id,
    n_ctx,
    n_layers,
    pad_token_id,
    supports_kv_cache,
    tokenizer,
    unembed_matrix,
    vocab_size,
)
from steerlens.runtime.prefixes import PrefixStore, prefix_cache
from steerlens.runtime.progress import progress, show_progress
from steerlens.runtime.tokens import (
    answer_token_ids,
    chat_message,
    chat_prompt,
    check_prompts,
    completion_tokens,
    decode,
    encode,
    format_prompts,
    has_chat_template,
    uses_chat,
)

__all__ = [
    "HOOK_TEMPLATE",
    "PrefixStore",
    "TokenContext",
    "answer_token_ids",
    "chat_message",
    "chat_prompt",
    "check_batch_size",
    "check_coldness",
    "check_device",
    "check_dtype",
    "check_fits",
    "check_layer",
    "check_layers",
    "check_prompts",
    "chunks",
    "completion_tokens",
    "continue_from",
    "current_context",
    "d_model",
    "decode",
    "decode_tokens",
    "default_device",
    "device",
    "dtype",
    "encode",
    "eos_token_ids",
    "final_norm",
    "finite_scores",
    "format_prompts",
    "has_chat_template",
    "hf_decoder_layers",
    "hf_model_type",
    "hook_name",
    "kl_divergence",
    "kl_of_logprobs",
    "last_logits",
    "left_pad",
    "logits_at",
    "model_id",
    "n_ctx",
    "n_layers",
    "next_logits",
    "pad_token_id",
    "prefix_cache",
    "progress",
    "right_pad",
    "score_rows",
    "show_progress",
    "supports_kv_cache",
    "token_context",
    "token_logprobs",
    "tokenizer",
    "unembed_matrix",
    "uses_chat",
    "vocab_size",
]
