"""``HookedEngine``: the engine for any TransformerLens model (one batched, right-padded forward
of every ``prompt + completion``, steering hooks at ``blocks.{l}.hook_resid_pre``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from steerlens import runtime
from steerlens.runtime import TokenContext
from steerlens.training.data import TokenizedDatapoint, score_layout
from steerlens.training.engines.steering import (
    Groups,
    SteerFn,
    apply_spans,
    check_groups,
    steer_mask,
)


class HookedEngine:
    """Batched, right-padded forward of every ``prompt + completion`` through hooks."""

    def __init__(
        self,
        model: Any,
        data: Sequence[TokenizedDatapoint],
        layers: Sequence[int],
        groups: Sequence[int] | None = None,
    ):
        self.model, self.layers = model, sorted(set(layers))
        group_of = check_groups(data, groups)
        dev = runtime.device(model)
        rows, comps, masks, signs, score_pos, row_group = [], [], [], [], [], []
        for tdp, g in zip(data, group_of, strict=True):
            p = len(tdp.prompt_tokens)
            for comp in tdp.completions:
                rows.append(tdp.prompt_tokens + comp.tokens)
                comps.append(comp.tokens)
                masks.append(steer_mask(tdp, len(comp.tokens), dev))
                signs.append(-1.0 if tdp.datapoint.negate else 1.0)
                score_pos.append(list(range(p - 1, p - 1 + len(comp.tokens))))
                row_group.append(g)
        self.tokens, self.attention_mask = runtime.right_pad(model, rows)
        self.prompt_end = torch.tensor(
            [len(r) - len(c) for r, c in zip(rows, comps, strict=True)], device=dev
        )
        self.steer_mask = torch.zeros_like(self.attention_mask, dtype=torch.bool)
        for i, m in enumerate(masks):
            self.steer_mask[i, : len(m)] = m
        self.sign = torch.tensor(signs, device=dev)
        self.score_pos = score_pos
        self.groups = Groups(row_group, [len(sp) for sp in score_pos])
        self.layout = score_layout(data, dev)

    def logits(
        self, apply: SteerFn | Mapping[int, SteerFn], *, start: int | None = None
    ) -> Float[Tensor, "n vocab"]:
        """Logits at the scored positions: of every group under ``apply``, or of the groups
        in the mapping ``{group: apply}``, each under its own function (in group order).
        ``start`` (the lowest layer steered) is accepted for the packed engine's sake; every
        forward here runs the whole model."""
        chosen, spans = self.groups.select(apply)
        dev = self.tokens.device
        index = torch.tensor(chosen, dtype=torch.long, device=dev)
        steer = self.steer_mask[index]
        sign = self.sign[index][:, None].expand_as(steer)

        def make_hook(layer: int) -> Callable[..., Tensor]:
            def hook(x: Tensor, *, hook: Any) -> Tensor:
                return apply_spans(spans, layer, x, steer, sign)

            return hook

        row_index = torch.tensor(
            [i for i, r in enumerate(chosen) for _ in self.score_pos[r]], dtype=torch.long
        ).to(dev)
        pos_index = torch.tensor([p for r in chosen for p in self.score_pos[r]], dtype=torch.long)
        hooks = [(runtime.hook_name(la), make_hook(la)) for la in self.layers]
        with self.model.hooks(fwd_hooks=hooks):
            return runtime.logits_at(
                self.model,
                self.tokens[index],
                self.attention_mask[index],
                row_index,
                pos_index.to(dev),
                TokenContext.prompts(self.prompt_end[index]),
            )
