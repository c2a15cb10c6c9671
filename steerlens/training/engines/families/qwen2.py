"""Qwen 2 / 2.5: a Llama-shaped decoder with q/k/v biases (inside attention)."""

from steerlens.training.engines.families.base import RotaryDecoder, register


@register
class Qwen2Adapter(RotaryDecoder):
    """Sliding-window layers where ``config.layer_types`` has them (``use_sliding_window``)."""

    family = "Qwen2"
    architectures = ("Qwen2ForCausalLM",)
