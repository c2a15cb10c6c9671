"""The Hugging Face model under a ``TransformerBridge``, without the Bridge's wrappers.

The Bridge re-implements each block step by step so that every hook point can fire, which
costs about 35 extra small tensor operations per block and an eager attention. Code that needs
no hooks inside the blocks runs the family's own modules instead: the packed training engine,
and decoding when the only hooks installed are on the residual stream between blocks (what
every steering plan at ``hook_resid_pre`` or ``hook_resid_post`` installs), which
`PlainDecoder` calls at the same place through the Bridge's own hook points.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens.hook_points import HookPoint

# A module's forward-hook tables; `unwrapped` gives each copy its own, so a hook on a copy
# never runs in the Bridge's forward.
_HOOK_TABLES = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
)


def hf_model(model: Any) -> Any | None:
    """The Hugging Face model under a ``TransformerBridge`` (``None`` for other models)."""
    hf = getattr(model, "original_model", None)
    return hf if isinstance(hf, torch.nn.Module) and hasattr(hf, "config") else None


def unwrapped(module: torch.nn.Module, attention: str | None = None) -> torch.nn.Module:
    """A shallow copy of a Hugging Face ``module`` with every TransformerLens bridge wrapper
    under it replaced by the module it wraps, and hook points dropped; parameters and buffers
    are shared, not copied, and each copy has its own (empty) forward-hook tables. With
    ``attention`` (e.g. ``"sdpa"``), its modules read a copy of their config that names that
    attention implementation; the model itself is unchanged.

    Example:
        >>> from steerlens.testing import tiny_model
        >>> hf = tiny_model().original_model
        >>> type(unwrapped(hf).model.layers[0].self_attn).__name__
        'LlamaAttention'
    """
    configs: dict[int, Any] = {}

    def config_for(config: Any) -> Any:
        if attention is None or not hasattr(config, "_attn_implementation"):
            return config
        if id(config) not in configs:
            configs[id(config)] = copy.copy(config)
            configs[id(config)]._attn_implementation = attention
        return configs[id(config)]

    def visit(mod: torch.nn.Module) -> torch.nn.Module:
        # A bridge component keeps the module it wraps as `original_component`.
        while isinstance(inner := getattr(mod, "original_component", None), torch.nn.Module):
            mod = inner
        shadow = copy.copy(mod)
        shadow._modules = {
            name: visit(child)
            for name, child in mod._modules.items()
            if child is not None and not isinstance(child, HookPoint)
        }
        for table in _HOOK_TABLES:
            if table in vars(mod):
                setattr(shadow, table, OrderedDict())
        if "config" in vars(mod):
            shadow.config = config_for(mod.config)
        return shadow

    return visit(module)


def _only_residual_hooks(model: Any, hf: torch.nn.Module) -> bool:
    """Whether every hook installed now is a forward hook on a block's residual hook point,
    apart from the Bridge's own capture hooks. A PyTorch hook elsewhere (e.g. a library's
    steering hook on a decoder layer) would be left out by a copy without the Bridge's
    wrappers, so it counts against, as does any backward hook."""
    residual = {id(p) for b in model.blocks for p in (b.hook_in, b.hook_out)}
    own = {h.id for b in model.blocks for h in getattr(b, "_capture_hook_handles", ())}
    for m in {id(m): m for tree in (model, hf) for m in tree.modules()}.values():
        if isinstance(m, HookPoint):
            if m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks or m.bwd_hooks:
                return False
            if m._forward_hooks and id(m) not in residual:
                return False
        elif any(
            key not in own
            for table in (
                "_forward_hooks",
                "_forward_pre_hooks",
                "_backward_hooks",
                "_backward_pre_hooks",
            )
            for key in getattr(m, table)
        ):
            return False
    return True


def _through(point: HookPoint, x: Any) -> Any:
    """``x`` (a tensor, or a tuple whose first item is the residual) after ``point``'s hooks."""
    if isinstance(x, tuple):
        return (point(x[0]), *x[1:])
    return point(x)


class PlainDecoder:
    """Decoding steps on the Hugging Face model under a Bridge, with the Bridge's residual
    hook points (``blocks.{i}.hook_resid_pre`` / ``hook_resid_post``) called where the Bridge
    calls them: on the hidden states entering and leaving decoder layer ``i``. Build it with
    `plain_decoder`, which says when it applies.

    Example:
        >>> import torch
        >>> from steerlens.testing import tiny_model
        >>> model = tiny_model()
        >>> ids, mask = torch.tensor([[5, 6, 7]]), torch.ones(1, 3, dtype=torch.long)
        >>> logits, cache = plain_decoder(model).step(ids, mask, None, 0)
        >>> torch.allclose(logits, model(ids)[:, -1], atol=1e-4)
        True
    """

    def __init__(self, hf: torch.nn.Module, layer_paths: list[str], blocks: Any) -> None:
        # PyTorch's fused attention, except where the family soft-caps attention scores,
        # which only its own eager attention does.
        soft_capped = getattr(hf.config, "attn_logit_softcapping", None)
        self.hf = unwrapped(hf, "eager" if soft_capped else "sdpa")
        for path, block in zip(layer_paths, blocks, strict=True):
            layer = self.hf.get_submodule(path)
            if block.hook_in._forward_hooks:
                layer.register_forward_pre_hook(self._pre(block.hook_in), with_kwargs=True)
            if block.hook_out._forward_hooks:
                layer.register_forward_hook(self._post(block.hook_out))

    @staticmethod
    def _pre(point: HookPoint) -> Any:
        def hook(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            if args:
                return (point(args[0]), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": point(kwargs["hidden_states"])}

        return hook

    @staticmethod
    def _post(point: HookPoint) -> Any:
        def hook(module: Any, args: tuple, output: Any) -> Any:
            return _through(point, output)

        return hook

    def step(
        self,
        tokens: Int[Tensor, "batch pos"],
        attention_mask: Int[Tensor, "batch pos"],
        cache: Any,
        n_cached: int,
    ) -> tuple[Float[Tensor, "batch vocab"], Any]:
        """The logits after the last column of left-padded ``tokens`` (the first ``n_cached``
        already in ``cache``, a Hugging Face cache or ``None``), and the extended cache."""
        # Positions count each row's real tokens (as Hugging Face's generate derives them).
        positions = attention_mask.long().cumsum(-1) - 1
        positions = positions.masked_fill(attention_mask == 0, 1)[:, n_cached:]
        out = self.hf(
            input_ids=tokens[:, n_cached:],
            attention_mask=attention_mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1, :], out.past_key_values


def plain_decoder(model: Any) -> PlainDecoder | None:
    """A `PlainDecoder` for ``model`` as its hooks stand now, or ``None`` when decoding must
    run through the model itself: not a Bridge over a Hugging Face decoder-only model, a
    hook installed anywhere but on the residual stream between blocks (a hook on attention
    patterns, an MLP output, a backward hook...), or a PyTorch hook of anyone's on one of the
    model's modules (e.g. another library's steering hook on a decoder layer).

    Example:
        >>> from steerlens.testing import tiny_model
        >>> model = tiny_model()
        >>> plain_decoder(model) is not None
        True
        >>> with model.hooks(fwd_hooks=[("blocks.0.attn.hook_pattern", lambda x, hook: x)]):
        ...     plain_decoder(model) is None
        True
    """
    hf = hf_model(model)
    blocks = getattr(model, "blocks", None)
    if hf is None or blocks is None or getattr(hf.config, "is_encoder_decoder", False):
        return None
    if not _only_residual_hooks(model, hf):
        return None
    names = {id(m): name for name, m in hf.named_modules()}
    paths = [names.get(id(b)) for b in blocks]
    if any(p is None for p in paths):
        return None
    return PlainDecoder(hf, [p for p in paths if p is not None], blocks)
