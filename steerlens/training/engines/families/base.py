"""The adapter contract and the registry of model families.

An adapter is one small object per Hugging Face model family: it tells the packed engine how
to run that family's decoder one piece at a time (embedding, position embeddings, one block
under a given 4-D additive attention mask, final norm, unembedding). Everything inside a block
(q/k norms, attention soft-capping, partial rotary, parallel residuals) is the family's own
module, called as the family's own forward calls it, so it needs no adapter code.
"""

from __future__ import annotations

from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor
from transformers import AttentionInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from steerlens.runtime.plain import hf_model, unwrapped

# Per-layer-type position embeddings (e.g. rotary ``(cos, sin)``), batch first.
PositionEmbeddings = dict[str, Any]

_REGISTRY: dict[str, type[FamilyAdapter]] = {}

A = TypeVar("A", bound="type[FamilyAdapter]")


def register(cls: A) -> A:
    """Class decorator: the adapter serves every name in its ``architectures``."""
    for name in cls.architectures:
        _REGISTRY[name] = cls
    return cls


def registered() -> dict[str, type[FamilyAdapter]]:
    """Architecture name -> adapter class, for every family with a packed-engine adapter."""
    return dict(_REGISTRY)


def architecture(model: Any) -> str:
    """The Hugging Face architecture name of a bridged model (its class name, e.g.
    ``"Gemma2ForCausalLM"``), or the model's own class name when it is not a bridged HF model."""
    hf = hf_model(model)
    return type(hf if hf is not None else model).__name__


def adapter_for(model: Any) -> FamilyAdapter | None:
    """The packed-engine adapter for this model's family, or ``None`` when the family has none
    or its adapter cannot serve this configuration (e.g. Gemma 3 with bidirectional attention)."""
    hf = hf_model(model)
    if hf is None:
        return None
    names = [type(hf).__name__, *(getattr(hf.config, "architectures", None) or [])]
    cls = next((_REGISTRY[n] for n in names if n in _REGISTRY), None)
    if cls is None:
        return None
    try:
        return cls(hf)
    except NotImplementedError:
        return None


# The attention implementation the packed engine's modules run: PyTorch's fused
# ``scaled_dot_product_attention``, or, when a block is given the keys and values of frozen
# positions (``frozen=(keys, values)``), attention over those and the block's own keys without
# concatenating them or repeating them per query head (grouped-query attention reads each key
# once), which is most of a step's memory traffic when few positions are live.
FROZEN_ATTENTION = "steerlens_frozen_prefix"


def frozen_prefix_attention(
    module: torch.nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    frozen: tuple[Tensor, Tensor] | None = None,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """Hugging Face's attention interface: ``query`` ``[batch, heads, q, dim]``, ``key`` and
    ``value`` ``[batch, kv_heads, k, dim]``, ``attention_mask`` additive over the frozen keys
    then the block's own; returns ``[batch, q, heads, dim]``."""
    if frozen is None:
        sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]
        return sdpa(module, query, key, value, attention_mask, dropout, scaling, **kwargs)  # type: ignore[no-any-return]
    frozen_k, frozen_v = frozen
    b, h, q, d = query.shape
    kv = key.shape[1]
    # Query head kv * g + r reads key head kv (as repeat_kv lays them out).
    grouped = query.reshape(b, kv, (h // kv) * q, d)
    scale = scaling if scaling is not None else d**-0.5
    scores = (
        torch.cat(
            [grouped @ frozen_k.transpose(-1, -2), grouped @ key.transpose(-1, -2)], dim=-1
        ).view(b, kv, h // kv, q, -1)
        * scale
    )
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, None, :, : scores.shape[-1]]
    wide = torch.promote_types(query.dtype, torch.float32)
    probs = scores.softmax(-1, dtype=wide).to(query.dtype).view(b, kv, (h // kv) * q, -1)
    n = frozen_k.shape[-2]
    out = probs[..., :n] @ frozen_v + probs[..., n:] @ value
    return out.view(b, h, q, d).transpose(1, 2).contiguous(), None


AttentionInterface.register(FROZEN_ATTENTION, frozen_prefix_attention)


def soft_cap(x: Tensor, cap: float | None) -> Tensor:
    """``cap * tanh(x / cap)`` (Gemma's logit soft-capping); ``x`` unchanged without a cap."""
    return x if not cap else torch.tanh(x / cap) * cap


class KeyRecorder:
    """A stand-in cache that keeps each layer's keys and values (what Hugging Face attention
    passes to ``update``), detached, and hands them back unchanged."""

    def __init__(self) -> None:
        self.kv: dict[int, tuple[Tensor, Tensor]] = {}

    def update(self, k: Tensor, v: Tensor, layer_idx: int, *args: Any, **kwargs: Any) -> Any:
        self.kv[layer_idx] = (k.detach(), v.detach())
        return k, v


class PrefixedKeys:
    """A stand-in cache (Hugging Face attention calls ``update(k, v, layer_idx)``) that puts
    one layer's frozen keys and values before the block's own."""

    def __init__(self, frozen: tuple[Tensor, Tensor]) -> None:
        self.frozen = frozen

    def update(self, k: Tensor, v: Tensor, layer_idx: int, *args: Any, **kwargs: Any) -> Any:
        fk, fv = self.frozen
        return torch.cat([fk, k], dim=-2), torch.cat([fv, v], dim=-2)


class FamilyAdapter:
    """How the packed engine runs one family's decoder, piece by piece.

    Subclasses set ``family`` (a short name for docs and notices) and ``architectures`` (the
    Hugging Face class names they serve) and register with `register`.
    """

    family: ClassVar[str] = ""
    architectures: ClassVar[tuple[str, ...]] = ()
    # The keyword under which the family's blocks take a KV cache.
    cache_keyword: ClassVar[str] = "past_key_values"

    def __init__(self, hf: Any) -> None:
        self.hf: Any = unwrapped(hf, self.attention(hf.config))
        self.config = hf.config

    @staticmethod
    def attention(config: Any) -> str:
        """The attention implementation the packed engine runs: `frozen_prefix_attention`
        (PyTorch's fused ``scaled_dot_product_attention`` on whole sequences), except where
        the family soft-caps attention scores (``"eager"``, the family's own)."""
        if getattr(config, "attn_logit_softcapping", None):
            return "eager"
        return FROZEN_ATTENTION

    def attention_kwargs(
        self, frozen: tuple[Tensor, Tensor] | None = None, record: KeyRecorder | None = None
    ) -> dict[str, Any]:
        """The keyword arguments of a block call that give its attention the keys and values
        of frozen positions (straight to `frozen_prefix_attention`, or, for the family's own
        eager attention, as a cache that puts them first), or that record its keys and values
        into ``record``."""
        if record is not None:
            return {self.cache_keyword: record}
        if frozen is None:
            return {}
        if self.attention(self.config) == FROZEN_ATTENTION:
            return {"frozen": frozen}
        return {self.cache_keyword: PrefixedKeys(frozen)}

    @property
    def n_layers(self) -> int:
        return int(self.config.num_hidden_layers)

    def embed(self, ids: Tensor, position_ids: Tensor) -> Tensor:
        """The residual stream entering block 0 (``[batch, pos, d_model]``)."""
        raise NotImplementedError

    def positions(self, h: Tensor, position_ids: Tensor) -> PositionEmbeddings:
        """Position embeddings the blocks take, per layer type (empty when none)."""
        return {}

    def window(self, layer: int) -> int | None:
        """The sliding-window length of ``layer``'s attention (``None``: full attention). A
        query at position ``q`` sees keys at ``k`` with ``q - window < k <= q``."""
        return None

    def block(
        self,
        layer: int,
        h: Tensor,
        mask: Tensor,
        position_ids: Tensor,
        positions: PositionEmbeddings,
        frozen: tuple[Tensor, Tensor] | None = None,
        record: KeyRecorder | None = None,
    ) -> Tensor:
        """Block ``layer`` with the 4-D additive attention ``mask`` ``[batch, 1, queries,
        keys]``. With ``frozen`` (this layer's keys and values of frozen positions,
        ``[batch, kv_heads, n, dim]`` each), attention reads those before the block's own, and
        ``mask``'s key axis covers both; with ``record``, the block's keys and values are kept
        there (`attention_kwargs`)."""
        out = self.decoder_layer(layer)(
            h,
            attention_mask=mask,
            **self.position_kwargs(layer, position_ids, positions),
            **self.attention_kwargs(frozen, record),
        )
        return out[0] if isinstance(out, tuple) else out

    def decoder_layer(self, layer: int) -> torch.nn.Module:
        """Block ``layer``'s module."""
        raise NotImplementedError

    def position_kwargs(
        self, layer: int, position_ids: Tensor, positions: PositionEmbeddings
    ) -> dict[str, Any]:
        """The keyword arguments that give block ``layer`` its positions (none by default:
        positions entered at the embedding)."""
        return {}

    def final_norm(self, h: Tensor) -> Tensor:
        raise NotImplementedError

    def unembed(self, h: Tensor) -> Tensor:
        """Logits from the final-normed residual stream."""
        return self.hf.get_output_embeddings()(h)


class RotaryDecoder(FamilyAdapter):
    """A Llama-shaped decoder: ``model.{embed_tokens, layers, norm, rotary_emb}`` and an LM
    head; blocks take ``position_embeddings=(cos, sin)``. Layer types (full or sliding-window
    attention) come from ``config.layer_types``, else from ``config.sliding_window`` (every
    layer), as the Hugging Face forward picks its masks."""

    def __init__(self, hf: Any) -> None:
        super().__init__(hf)
        base = self.hf.base_model
        needed = ("embed_tokens", "layers", "norm", "rotary_emb")
        if not all(hasattr(base, n) for n in needed):
            raise NotImplementedError(f"{type(hf).__name__} lacks model.{{{', '.join(needed)}}}")
        self.embed_tokens, self.layers = base.embed_tokens, base.layers
        self.norm, self.rotary_emb = base.norm, base.rotary_emb

    def layer_type(self, layer: int) -> str:
        types = getattr(self.config, "layer_types", None)
        if types:
            return str(types[layer])
        sliding = getattr(self.config, "sliding_window", None)
        return "sliding_attention" if sliding else "full_attention"

    def window(self, layer: int) -> int | None:
        if self.layer_type(layer) != "sliding_attention":
            return None
        return int(self.config.sliding_window)

    def embed(self, ids: Tensor, position_ids: Tensor) -> Tensor:
        return self.embed_tokens(ids)

    def positions(self, h: Tensor, position_ids: Tensor) -> PositionEmbeddings:
        return {"rope": self.rotary_emb(h, position_ids=position_ids)}

    def rotary(self, positions: PositionEmbeddings, layer: int) -> Any:
        """The ``(cos, sin)`` block ``layer`` takes."""
        return positions["rope"]

    def decoder_layer(self, layer: int) -> torch.nn.Module:
        return self.layers[layer]

    def position_kwargs(
        self, layer: int, position_ids: Tensor, positions: PositionEmbeddings
    ) -> dict[str, Any]:
        return {"position_ids": position_ids, "position_embeddings": self.rotary(positions, layer)}

    def final_norm(self, h: Tensor) -> Tensor:
        return self.norm(h)
