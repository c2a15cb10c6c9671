"""OLMo 2: a Llama-shaped decoder with norms after attention and MLP and q/k norms (inside)."""

from steerlens.training.engines.families.base import RotaryDecoder, register


@register
class Olmo2Adapter(RotaryDecoder):
    """Post-sublayer norms and q/k RMSNorm live in the block; nothing else differs."""

    family = "OLMo 2"
    architectures = ("Olmo2ForCausalLM",)
