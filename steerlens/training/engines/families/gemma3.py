"""Gemma 3 (text): Gemma 2's shape with q/k norms, and separate rotary bases for local
(sliding-window) and global layers."""

from typing import Any

from torch import Tensor

from steerlens.training.engines.families.base import (
    PositionEmbeddings,
    RotaryDecoder,
    register,
    soft_cap,
)


@register
class Gemma3Adapter(RotaryDecoder):
    """Embedding scale and q/k norms are in the modules; each layer type gets its own rotary
    embedding (``rotary_emb(h, position_ids, layer_type)``) and its own mask (sliding window
    or full); final logits are soft-capped when the config says so."""

    family = "Gemma 3"
    architectures = ("Gemma3ForCausalLM",)

    def __init__(self, hf: Any) -> None:
        super().__init__(hf)
        if getattr(self.config, "use_bidirectional_attention", False):
            raise NotImplementedError("Gemma 3 with bidirectional attention is not causal")

    def positions(self, h: Tensor, position_ids: Tensor) -> PositionEmbeddings:
        types = {self.layer_type(i) for i in range(self.n_layers)}
        return {t: self.rotary_emb(h, position_ids, t) for t in sorted(types)}

    def rotary(self, positions: PositionEmbeddings, layer: int) -> Any:
        return positions[self.layer_type(layer)]

    def unembed(self, h: Tensor) -> Tensor:
        logits = super().unembed(h)
        return soft_cap(logits, getattr(self.config, "final_logit_softcapping", None))
