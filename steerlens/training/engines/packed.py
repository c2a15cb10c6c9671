"""``PackedEngine``: the fast path for Hugging Face decoders under a ``TransformerBridge`` whose
family has an adapter (`steerlens.training.engines.families`).

Each group is one batch row (one row per datapoint when prompts have frozen prefixes, see
below) in which its datapoints and completions are packed into one sequence with a tree
attention mask, so each prompt is computed once per step and completions see only their own
prompt; position ids restart the count per completion, so every token has
the position it has in its own ``prompt + completion``. Sliding-window layers get the tree mask
cut to their window (by those positions). What does not depend on the vector is computed once,
at construction: the blocks below the first steered layer, and, at every layer, the keys and
values of the *frozen* positions (a prompt's tokens before its first steered or scored token,
e.g. all but the last few with ``Positions.last``), which each step's attention reads from a
cache; each step runs only the other (*live*) positions. The unembedding runs only at scored
positions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from steerlens import runtime
from steerlens.training.data import TokenizedDatapoint, score_layout
from steerlens.training.engines.families import FamilyAdapter, adapter_for, architecture
from steerlens.training.engines.families.base import KeyRecorder
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
        self.frozen: list[int] = []
        self.blocks: list[tuple[int, int, list[tuple[int, int]]]] = []
        for tdp in data:
            base, p = len(self.ids), len(tdp.prompt_tokens)
            s = -1.0 if tdp.datapoint.negate else 1.0
            self.ids += tdp.prompt_tokens
            self.pos += list(range(p))
            # The prompt's steer mask is the same for every completion; take it from the first.
            steer = steer_mask(tdp, len(tdp.completions[0].tokens), device)[:p].tolist()
            self.steer += steer
            self.sign += [s] * p
            # Tokens before the first steered one and before the last (always scored) see only
            # earlier tokens of their prompt, so no steering reaches them.
            first = steer.index(True) if True in steer else p
            self.frozen += list(range(base, base + min(first, p - 1)))
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


def _layout(packed: Sequence[_PackedRow]) -> tuple[list[list[int]], Tensor, int]:
    """Each row's positions reordered frozen first, then live, both blocks padded to a common
    width with filler slots: the order (indices into the packed row), which slots are real
    (bool ``[rows, slots]``) and the frozen width."""
    n_frozen = max(len(r.frozen) for r in packed)
    lives = []
    for r in packed:
        frozen = set(r.frozen)
        lives.append([i for i in range(len(r.ids)) if i not in frozen])
    n_live = max(len(live) for live in lives)
    orders, real = [], []
    for r, live in zip(packed, lives, strict=True):
        fill_f, fill_l = n_frozen - len(r.frozen), n_live - len(live)
        orders.append(r.frozen + [0] * fill_f + live + [0] * fill_l)
        real.append(
            [True] * len(r.frozen) + [False] * fill_f + [True] * len(live) + [False] * fill_l
        )
    return orders, torch.tensor(real), n_frozen


@dataclass(frozen=True)
class LayoutKind:
    """What the packed forward of some rows does besides running blocks, and so what a check
    of it against the hooked forward covers: attention to a frozen prefix's cached keys,
    several prompts in one row, and the sliding windows that some query reaches past.

    Example:
        >>> LayoutKind(frozen_prefix=True, shared_rows=False, windows_reached=())
        LayoutKind(frozen_prefix=True, shared_rows=False, windows_reached=())
    """

    frozen_prefix: bool
    shared_rows: bool
    windows_reached: tuple[int, ...]


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
        packed = [_PackedRow([d], dev) for d in data]
        row_group = list(group_of)
        if not any(r.frozen for r in packed):
            # Without frozen prefixes a step runs every position, so a group's datapoints
            # share one row (no padding between them); with them, each datapoint's few live
            # positions are a row of their own, so rows are about equally long.
            packed = [
                _PackedRow([d for d, g in zip(data, group_of, strict=True) if g == k], dev)
                for k in range(n_groups)
            ]
            row_group = list(range(n_groups))
        t = max(len(r.ids) for r in packed)

        def padded(values: list, fill: Any) -> list:
            return values + [fill] * (t - len(values))

        orders, real, n_frozen = _layout(packed)
        order = torch.tensor(orders, device=dev)
        real = real.to(dev)
        rows = torch.arange(len(packed), device=dev)[:, None]
        position_ids = torch.tensor([padded(r.pos, 0) for r in packed], device=dev)[rows, order]
        allow = torch.stack([r.allowed(t, dev) for r in packed])
        allow = allow[rows[:, :, None], order[:, :, None], order[:, None, :]]
        # A filler slot is seen by nothing and sees only itself (so its softmax stays finite).
        allow = (allow & real[:, :, None] & real[:, None, :]) | torch.diag_embed(~real)
        steer = torch.tensor([padded(r.steer, False) for r in packed], device=dev)[rows, order]
        sign = torch.tensor([padded(r.sign, 1.0) for r in packed], device=dev)[rows, order]
        # One additive mask per attention window among the layers (None: full attention).
        dtype = runtime.dtype(model)
        distance = position_ids[:, :, None] - position_ids[:, None, :]
        masks: dict[int | None, Tensor] = {}
        for w in {adapter.window(i) for i in range(adapter.n_layers)}:
            sees = allow if w is None else allow & (distance < w)
            masks[w] = torch.zeros(len(packed), 1, *sees.shape[1:], dtype=dtype, device=dev)
            masks[w] = masks[w].masked_fill(~sees[:, None], torch.finfo(dtype).min)
        self.start = self.layers[0]
        pad = runtime.pad_token_id(model)
        ids = torch.tensor([padded(r.ids, pad) for r in packed], device=dev)[rows, order]
        self.kv: dict[int, tuple[Tensor, Tensor]] = {}
        with torch.no_grad():
            h = adapter.embed(ids, position_ids)
            pos_emb = adapter.positions(h, position_ids)
            for i in range(self.start):
                h = adapter.block(i, h, masks[adapter.window(i)], position_ids, pos_emb)
            if n_frozen:
                record, hf = KeyRecorder(), h[:, :n_frozen]
                pos_f = position_ids[:, :n_frozen]
                emb_f = adapter.positions(hf, pos_f)
                for i in range(self.start, adapter.n_layers):
                    mask = masks[adapter.window(i)][:, :, :n_frozen, :n_frozen]
                    hf = adapter.block(i, hf, mask, pos_f, emb_f, record=record)
                self.kv = record.kv
        # Each step runs the live slots only: their queries see every slot's keys.
        self.h_start = h[:, n_frozen:].detach()
        self.position_ids = position_ids[:, n_frozen:]
        self.pos_emb = adapter.positions(self.h_start, self.position_ids)
        self.masks = {w: m[:, :, n_frozen:, :] for w, m in masks.items()}
        if bool(steer[:, :n_frozen].any()):
            raise AssertionError("a frozen position is steered")
        self.steer_mask, self.sign = steer[:, n_frozen:], sign[:, n_frozen:]
        slot = [
            {int(o): k - n_frozen for k, o in enumerate(row) if k >= n_frozen} for row in orders
        ]
        self.scored = [[slot[k][s] for s in r.scored] for k, r in enumerate(packed)]
        self.groups = Groups(row_group, [len(s) for s in self.scored])
        self._frozen_prefix = n_frozen > 0
        self._row_prompts = [len(r.blocks) for r in packed]
        # The farthest a query reaches back in each row (positions restart per prompt).
        self._row_reach = [max(r.pos) for r in packed]
        self.layout = score_layout(data, dev)
        # The unsteered live slots entering each steered layer, so that a call whose functions
        # steer only higher layers starts there.
        self.h_at = {self.start: self.h_start}
        with torch.no_grad():
            h = self.h_start
            for i in range(self.start, self.layers[-1]):
                h = self._block(i, h, self.masks, self.position_ids, self.pos_emb, self.kv)
                if i + 1 in self.layers:
                    self.h_at[i + 1] = h

    def layout_kind(self, group: int) -> LayoutKind:
        """The kind of layout of ``group``'s rows (see `LayoutKind`).

        Example:
            >>> from steerlens.testing import tiny_model
            >>> from steerlens import Datapoint
            >>> from steerlens.training.data import tokenize
            >>> model = tiny_model()
            >>> data = tokenize(model, [Datapoint("the cat sat", promote=[" on the"])], "last:1")
            >>> PackedEngine(model, data, [1]).layout_kind(0).frozen_prefix
            True
        """
        rows = self.groups.rows[group]
        reach = max(self._row_reach[r] for r in rows)
        windows = sorted({w for i in range(self.adapter.n_layers) if (w := self.adapter.window(i))})
        return LayoutKind(
            frozen_prefix=self._frozen_prefix,
            shared_rows=any(self._row_prompts[r] > 1 for r in rows),
            windows_reached=tuple(w for w in windows if reach >= w),
        )

    def _block(
        self,
        i: int,
        h: Tensor,
        masks: Mapping[int | None, Tensor],
        position_ids: Tensor,
        pos_emb: Any,
        frozen: Mapping[int, tuple[Tensor, Tensor]],
    ) -> Tensor:
        mask = masks[self.adapter.window(i)]
        return self.adapter.block(i, h, mask, position_ids, pos_emb, frozen.get(i))

    def logits(
        self, apply: SteerFn | Mapping[int, SteerFn], *, start: int | None = None
    ) -> Float[Tensor, "n vocab"]:
        """Logits at the scored positions: of every group under ``apply``, or of the groups
        in the mapping ``{group: apply}``, each under its own function (in group order).
        ``start``: one of the engine's layers below which no function steers; the forward
        begins there."""
        first = self.start if start is None else start
        if first not in self.h_at:
            raise ValueError(f"start must be one of the engine's layers {self.layers}")
        chosen, spans = self.groups.select(apply)
        if chosen == list(range(len(self.scored))):  # every row, as built
            h, masks, pos = self.h_at[first], self.masks, self.position_ids
            pos_emb, steer, sign, kv = self.pos_emb, self.steer_mask, self.sign, self.kv
        else:
            index = torch.tensor(chosen, dtype=torch.long, device=self.h_start.device)
            h, masks, pos = (
                self.h_at[first][index],
                _take(self.masks, index),
                self.position_ids[index],
            )
            pos_emb, kv = _take(self.pos_emb, index), _take(self.kv, index)
            steer, sign = self.steer_mask[index], self.sign[index]
        steered = set(self.layers)
        for i in range(first, self.adapter.n_layers):
            if i in steered:
                h = apply_spans(spans, i, h, steer, sign)
            h = self._block(i, h, masks, pos, pos_emb, kv)
        t = h.shape[1]
        flat = torch.tensor(
            [k * t + s for k, r in enumerate(chosen) for s in self.scored[r]],
            dtype=torch.long,
            device=h.device,
        )
        h = self.adapter.final_norm(h.reshape(-1, h.shape[-1])[flat])
        return self.adapter.unembed(h)
