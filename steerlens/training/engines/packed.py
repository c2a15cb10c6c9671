"""``PackedEngine``: the fast path for Hugging Face decoders under a ``TransformerBridge`` whose
family has an adapter (`steerlens.training.engines.families`).

Each group is one batch row in which its datapoints and completions are packed into one
sequence with a tree attention mask, so each prompt is computed once per step and completions
see only their own prompt; position ids restart the count per completion, so every token has
the position it has in its own ``prompt + completion``. Sliding-window layers get the tree mask
cut to their window (by those positions). The blocks below the first steered layer run once,
at construction, since they do not depend on the vector; the unembedding runs only at scored
positions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from steerlens import runtime
from steerlens.training.data import TokenizedDatapoint, score_layout
from steerlens.training.engines.families import FamilyAdapter, adapter_for, architecture
from steerlens.training.engines.steering import (
    Groups,
    SteerFn,
    apply_spans,
    check_groups,
    steer_mask,
)


class _PackedRow:
    """One group's datapoints packed into one sequence (a tree of prompts and completions)."""

    def __init__(self, data: Sequence[TokenizedDatapoint], device: torch.device) -> None:
        self.ids: list[int] = []
        self.pos: list[int] = []
        self.steer: list[bool] = []
        self.sign: list[float] = []
        self.scored: list[int] = []
        self.blocks: list[tuple[int, int, list[tuple[int, int]]]] = []
        for tdp in data:
            base, p = len(self.ids), len(tdp.prompt_tokens)
            s = -1.0 if tdp.datapoint.negate else 1.0
            self.ids += tdp.prompt_tokens
            self.pos += list(range(p))
            # The prompt's steer mask is the same for every completion; take it from the first.
            self.steer += steer_mask(tdp, len(tdp.completions[0].tokens), device)[:p].tolist()
            self.sign += [s] * p
            segments = []
            for comp in tdp.completions:
                # A completion's last token is never scored and nothing attends to it (the
                # next segment sees only its own prompt), so it is left out.
                start, n = len(self.ids), len(comp.tokens) - 1
                self.ids += comp.tokens[:n]
                self.pos += list(range(p, p + n))
                self.steer += steer_mask(tdp, n + 1, device)[p : p + n].tolist()
                self.sign += [s] * n
                # Token k of the completion is predicted at the previous position.
                self.scored += [base + p - 1, *range(start, start + n)]
                segments.append((start, n))
            self.blocks.append((base, p, segments))

    def allowed(self, length: int, device: torch.device) -> Tensor:
        """Which positions each position attends to (bool [length, length]); padding sees
        only itself, so its softmax stays finite."""
        allow = torch.eye(length, dtype=torch.bool, device=device)
        for base, p, segments in self.blocks:
            allow[base : base + p, base : base + p] = torch.ones(p, p, device=device).tril().bool()
            for start, n in segments:
                allow[start : start + n, base : base + p] = True
                allow[start : start + n, start : start + n] = (
                    torch.ones(n, n, device=device).tril().bool()
                )
        return allow


def _take(tree: Any, index: Tensor) -> Any:
    """The chosen batch rows of every tensor in a dict / tuple / list of tensors."""
    if isinstance(tree, Tensor):
        return tree[index]
    if isinstance(tree, Mapping):
        return {k: _take(v, index) for k, v in tree.items()}
    if isinstance(tree, (tuple, list)):
        return type(tree)(_take(v, index) for v in tree)
    return tree


class PackedEngine:
    """Tree-packed forward, one batch row per group, with the lower blocks computed once
    (see `steerlens.training.engines.packed`).

    Raises ``NotImplementedError`` when the model is not a bridged Hugging Face decoder of a
    family with an adapter (`steerlens.training.engines.make_engine` then takes the hooked path).
    """

    def __init__(
        self,
        model: Any,
        data: Sequence[TokenizedDatapoint],
        layers: Sequence[int],
        groups: Sequence[int] | None = None,
        *,
        adapter: FamilyAdapter | None = None,
    ):
        adapter = adapter if adapter is not None else adapter_for(model)
        if adapter is None:
            raise NotImplementedError(f"no packed-engine adapter for {architecture(model)}")
        self.adapter, self.layers = adapter, sorted(set(layers))
        group_of = check_groups(data, groups)
        dev = runtime.device(model)
        n_groups = (group_of[-1] + 1) if group_of else 0
        packed = [
            _PackedRow([d for d, g in zip(data, group_of, strict=True) if g == k], dev)
            for k in range(n_groups)
        ]
        t = max(len(r.ids) for r in packed)

        def padded(values: list, fill: Any) -> list:
            return values + [fill] * (t - len(values))

        self.position_ids = torch.tensor([padded(r.pos, 0) for r in packed], device=dev)
        allow = torch.stack([r.allowed(t, dev) for r in packed])
        # One additive mask per attention window among the layers (None: full attention).
        dtype = runtime.dtype(model)
        distance = self.position_ids[:, :, None] - self.position_ids[:, None, :]
        self.masks: dict[int | None, Tensor] = {}
        for w in {adapter.window(i) for i in range(adapter.n_layers)}:
            sees = allow if w is None else allow & (distance < w)
            self.masks[w] = torch.zeros(len(packed), 1, t, t, dtype=dtype, device=dev).masked_fill(
                ~sees[:, None], torch.finfo(dtype).min
            )
        self.steer_mask = torch.tensor([padded(r.steer, False) for r in packed], device=dev)
        self.sign = torch.tensor([padded(r.sign, 1.0) for r in packed], device=dev)
        self.scored = [r.scored for r in packed]
        self.groups = Groups(list(range(len(packed))), [len(s) for s in self.scored])
        self.layout = score_layout(data, dev)
        self.start = self.layers[0]
        pad = runtime.pad_token_id(model)
        with torch.no_grad():
            ids = torch.tensor([padded(r.ids, pad) for r in packed], device=dev)
            h = adapter.embed(ids, self.position_ids)
            self.pos_emb = adapter.positions(h, self.position_ids)
            for i in range(self.start):
                h = self._block(i, h, self.masks, self.position_ids, self.pos_emb)
        self.h_start = h.detach()

    def _block(
        self,
        i: int,
        h: Tensor,
        masks: Mapping[int | None, Tensor],
        position_ids: Tensor,
        pos_emb: Any,
    ) -> Tensor:
        return self.adapter.block(i, h, masks[self.adapter.window(i)], position_ids, pos_emb)

    def logits(self, apply: SteerFn | Mapping[int, SteerFn]) -> Float[Tensor, "n vocab"]:
        """Logits at the scored positions: of every group under ``apply``, or of the groups
        in the mapping ``{group: apply}``, each under its own function (in group order)."""
        chosen, spans = self.groups.select(apply)
        if chosen == list(range(self.groups.count)):
            h, masks, pos = self.h_start, self.masks, self.position_ids
            pos_emb, steer, sign = self.pos_emb, self.steer_mask, self.sign
        else:
            index = torch.tensor(chosen, dtype=torch.long, device=self.h_start.device)
            h, masks, pos = self.h_start[index], _take(self.masks, index), self.position_ids[index]
            pos_emb = _take(self.pos_emb, index)
            steer, sign = self.steer_mask[index], self.sign[index]
        steered = set(self.layers)
        for i in range(self.start, self.adapter.n_layers):
            if i in steered:
                h = apply_spans(spans, i, h, steer, sign)
            h = self._block(i, h, masks, pos, pos_emb)
        t = h.shape[1]
        flat = torch.tensor(
            [k * t + s for k, r in enumerate(chosen) for s in self.scored[r]],
            dtype=torch.long,
            device=h.device,
        )
        h = self.adapter.final_norm(h.reshape(-1, h.shape[-1])[flat])
        return self.adapter.unembed(h)
