"""Phi-3: a Llama-shaped decoder with fused qkv and gate/up projections (inside the block)."""

from steerlens.training.engines.families.base import RotaryDecoder, register


@register
class Phi3Adapter(RotaryDecoder):
    """Partial rotary is inside ``rotary_emb`` and attention; sliding-window attention on every
    layer when ``config.sliding_window`` is set (Phi-3-mini-4k has 2047)."""

    family = "Phi-3"
    architectures = ("Phi3ForCausalLM",)
