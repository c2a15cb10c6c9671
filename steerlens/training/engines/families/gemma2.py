"""Gemma 2: scaled embeddings, alternating sliding-window layers, soft-capped attention and
final logits."""

from torch import Tensor

from steerlens.training.engines.families.base import RotaryDecoder, register, soft_cap


@register
class Gemma2Adapter(RotaryDecoder):
    """The sqrt(d_model) embedding scale is in the embedding module (Gemma's scaled embedding);
    attention soft-capping and the pre/post norms are in the block; sliding-window layers come
    from ``config.layer_types``; the final logits are soft-capped here."""

    family = "Gemma 2"
    architectures = ("Gemma2ForCausalLM",)

    def unembed(self, h: Tensor) -> Tensor:
        logits = super().unembed(h)
        return soft_cap(logits, getattr(self.config, "final_logit_softcapping", None))
