"""Llama (and Llama-shaped models such as SmolLM2): the plain rotary decoder."""

from steerlens.training.engines.families.base import RotaryDecoder, register


@register
class LlamaAdapter(RotaryDecoder):
    """Rotary positions, RMSNorm, tied or untied LM head; nothing family-specific."""

    family = "Llama"
    architectures = ("LlamaForCausalLM",)
