"""Mistral: a Llama-shaped decoder whose every layer may use sliding-window attention."""

from steerlens.training.engines.families.base import RotaryDecoder, register


@register
class MistralAdapter(RotaryDecoder):
    """Sliding-window attention on every layer when ``config.sliding_window`` is set; the window
    goes into the packed tree mask (by position in each completion's own sequence)."""

    family = "Mistral"
    architectures = ("MistralForCausalLM",)
