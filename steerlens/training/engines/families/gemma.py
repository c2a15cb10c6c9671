"""Gemma (1): a Llama-shaped decoder with sqrt(d_model)-scaled embeddings and GeGLU MLPs."""

from steerlens.training.engines.families.base import RotaryDecoder, register


@register
class GemmaAdapter(RotaryDecoder):
    """The embedding scale is in the embedding module (Gemma's scaled embedding), and
    ``(1 + weight)`` RMSNorms and GeGLU are in the blocks; no soft-capping, no sliding window."""

    family = "Gemma"
    architectures = ("GemmaForCausalLM",)
