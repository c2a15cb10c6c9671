"""GPT-NeoX / Pythia: partial rotary (``rotary_pct``), parallel attention and MLP."""

from typing import Any

import torch
from torch import Tensor

from steerlens.training.engines.families.base import (
    FamilyAdapter,
    PositionEmbeddings,
    register,
)


@register
class GPTNeoXAdapter(FamilyAdapter):
    """``gpt_neox.{embed_in, emb_dropout, layers, final_layer_norm, rotary_emb}``: the rotary
    embedding covers ``rotary_pct`` of each head (inside attention), and the parallel residual
    is inside the block."""

    family = "GPT-NeoX"
    architectures = ("GPTNeoXForCausalLM",)
    cache_keyword = "layer_past"

    def __init__(self, hf: Any) -> None:
        super().__init__(hf)
        self.base = self.hf.gpt_neox

    def embed(self, ids: Tensor, position_ids: Tensor) -> Tensor:
        return self.base.emb_dropout(self.base.embed_in(ids))

    def positions(self, h: Tensor, position_ids: Tensor) -> PositionEmbeddings:
        return {"rope": self.base.rotary_emb(h, position_ids=position_ids)}

    def decoder_layer(self, layer: int) -> torch.nn.Module:
        return self.base.layers[layer]

    def position_kwargs(
        self, layer: int, position_ids: Tensor, positions: PositionEmbeddings
    ) -> dict[str, Any]:
        return {"position_ids": position_ids, "position_embeddings": positions["rope"]}

    def final_norm(self, h: Tensor) -> Tensor:
        return self.base.final_layer_norm(h)
