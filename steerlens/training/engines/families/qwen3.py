"""Qwen 3: a Llama-shaped decoder; the per-head q/k RMSNorm is inside attention."""

from steerlens.training.engines.families.base import RotaryDecoder, register


@register
class Qwen3Adapter(RotaryDecoder):
    """Sliding-window layers where ``config.layer_types`` has them."""

    family = "Qwen3"
    architectures = ("Qwen3ForCausalLM",)
