"""GPT-2: learned absolute positions (``wpe``) added to the token embedding, LayerNorm."""

from typing import Any

import torch
from torch import Tensor

from steerlens.training.engines.families.base import FamilyAdapter, register


@register
class GPT2Adapter(FamilyAdapter):
    """``transformer.{wte, wpe, drop, h, ln_f}``: positions enter once, at the embedding, so
    the blocks take only the mask."""

    family = "GPT-2"
    architectures = ("GPT2LMHeadModel",)

    def __init__(self, hf: Any) -> None:
        super().__init__(hf)
        self.base = self.hf.transformer

    @property
    def n_layers(self) -> int:
        return len(self.base.h)

    def embed(self, ids: Tensor, position_ids: Tensor) -> Tensor:
        return self.base.drop(self.base.wte(ids) + self.base.wpe(position_ids))

    def decoder_layer(self, layer: int) -> torch.nn.Module:
        return self.base.h[layer]

    def final_norm(self, h: Tensor) -> Tensor:
        return self.base.ln_f(h)
