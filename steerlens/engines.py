"""Forward engines that give the logits of every scored completion token under a steering
function; the optimizer and `steerlens.optimize.ObjectiveScorer` run on them.

Both engines take the tokenised datapoints of one or several *groups* (``groups[i]`` is the
group of datapoint ``i``; one group per vector when `steerlens.optimize_many` trains many at
once). Each group is steered by its own function and never sees another group's tokens, so one
forward pass carries every group, and `logits` can leave out groups that are finished.

``PackedEngine`` (fast path, Hugging Face Llama-family models under a ``TransformerBridge``):
each group is one batch row in which its datapoints and completions are packed into one sequence
with a tree attention mask, so each prompt is computed once per step and completions see only
their own prompt; the blocks below the first steered layer are run once, at construction, since
they do not depend on the vector; and the unembedding runs only at scored positions. It checks
itself against ``HookedEngine`` once and falls back to it if they disagree.

``HookedEngine`` (any TransformerLens model): one batched, right-padded forward of every
``prompt + completion`` with steering hooks at ``blocks.{l}.hook_resid_pre``.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from steerlens import runtime
from steerlens.data import TokenizedDatapoint, score_layout
from steerlens.interventions import Intervention
from steerlens.runtime import TokenContext

# apply(layer, x, steer_mask, sign) -> steered x; x is [batch, pos, d_model].
SteerFn = Callable[[int, Tensor, Tensor, Tensor], Tensor]
# (first row, end row, steering function) of one group in a forward pass.
Span = tuple[int, int, SteerFn]


def steering_function(
    intervention: Intervention, strength: float = 1.0, any_negated: bool = False
) -> SteerFn:
    """The engines' steering function: ``intervention`` at ``strength`` where the steer mask
    is set, at ``-strength`` on rows of negated datapoints (with ``any_negated``).

    Example:
        >>> from steerlens.interventions import Add
        >>> fn = steering_function(Add(torch.ones(2)), 2.0)
        >>> x, mask = torch.zeros(1, 2, 2), torch.tensor([[True, False]])
        >>> fn(0, x, mask, torch.ones(1, 2)).tolist()
        [[[2.0, 2.0], [0.0, 0.0]]]
    """

    def apply(layer: int, x: Tensor, mask: Tensor, sign: Tensor) -> Tensor:
        y = intervention.apply(x, strength)
        if any_negated:
            y = torch.where((sign < 0)[..., None], intervention.apply(x, -strength), y)
        return torch.where(mask[..., None], y, x)

    return apply


def unsteered(layer: int, x: Tensor, mask: Tensor, sign: Tensor) -> Tensor:
    """The steering function that steers nothing."""
    return x


def _steer_mask(tdp: TokenizedDatapoint, n_completion: int, device: torch.device) -> Tensor:
    """Positions to steer in the linear sequence ``prompt + completion`` (bool [length])."""
    p = len(tdp.prompt_tokens)
    ctx = TokenContext.prompts(torch.full((1,), p, dtype=torch.long, device=device))
    mask = tdp.positions.mask(ctx, p + n_completion)
    if mask is None:
        return torch.ones(p + n_completion, dtype=torch.bool, device=device)
    return mask[0]


def _check_groups(data: Sequence[TokenizedDatapoint], groups: Sequence[int] | None) -> list[int]:
    """Group of each datapoint: ``0, 0, 1, 1, 2 ...`` (contiguous, numbered from 0)."""
    if groups is None:
        return [0] * len(data)
    out = [int(g) for g in groups]
    if len(out) != len(data) or (out and out[0] != 0):
        raise ValueError("groups must give one group per datapoint, starting at 0")
    if any(b not in (a, a + 1) for a, b in itertools.pairwise(out)):
        raise ValueError("groups must be contiguous and numbered in order: 0, 0, 1, 2, 2, ...")
    return out


class _Groups:
    """Which engine rows and which scored positions belong to each group."""

    def __init__(self, row_group: Sequence[int], scores_per_row: Sequence[int]) -> None:
        n_groups = (max(row_group) + 1) if row_group else 0
        self.rows: list[list[int]] = [[] for _ in range(n_groups)]
        for r, g in enumerate(row_group):
            self.rows[g].append(r)
        self.scores_per_row = list(scores_per_row)

    @property
    def count(self) -> int:
        return len(self.rows)

    def select(self, fns: Mapping[int, SteerFn] | SteerFn) -> tuple[list[int], list[Span]]:
        """Engine rows of the chosen groups, in group order, and ``(start, stop, fn)`` spans."""
        if callable(fns) and not isinstance(fns, Mapping):
            every = [r for rows in self.rows for r in rows]
            return every, [(0, len(every), fns)]
        rows: list[int] = []
        spans: list[Span] = []
        for g in sorted(fns):
            spans.append((len(rows), len(rows) + len(self.rows[g]), fns[g]))
            rows += self.rows[g]
        return rows, spans


def _apply_spans(
    spans: Sequence[Span], layer: int, x: Tensor, mask: Tensor, sign: Tensor
) -> Tensor:
    if len(spans) == 1:
        return spans[0][2](layer, x, mask, sign)
    return torch.cat([fn(layer, x[a:b], mask[a:b], sign[a:b]) for a, b, fn in spans])


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
        group_of = _check_groups(data, groups)
        dev = runtime.device(model)
        rows, comps, masks, signs, score_pos, row_group = [], [], [], [], [], []
        for tdp, g in zip(data, group_of, strict=True):
            p = len(tdp.prompt_tokens)
            for comp in tdp.completions:
                rows.append(tdp.prompt_tokens + comp.tokens)
                comps.append(comp.tokens)
                masks.append(_steer_mask(tdp, len(comp.tokens), dev))
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
        self.groups = _Groups(row_group, [len(sp) for sp in score_pos])
        self.layout = score_layout(data, dev)

    def logits(self, apply: SteerFn | Mapping[int, SteerFn]) -> Float[Tensor, "n vocab"]:
        """Logits at the scored positions: of every group under ``apply``, or of the groups
        in the mapping ``{group: apply}``, each under its own function (in group order)."""
        chosen, spans = self.groups.select(apply)
        dev = self.tokens.device
        index = torch.tensor(chosen, dtype=torch.long, device=dev)
        steer_mask = self.steer_mask[index]
        sign = self.sign[index][:, None].expand_as(steer_mask)

        def make_hook(layer: int) -> Callable[..., Tensor]:
            def hook(x: Tensor, *, hook: Any) -> Tensor:
                return _apply_spans(spans, layer, x, steer_mask, sign)

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


def _hf_parts(model: Any) -> dict[str, Any] | None:
    hf = getattr(model, "original_model", None)
    inner = getattr(hf, "model", None)
    needed = ("embed_tokens", "layers", "norm", "rotary_emb")
    if hf is None or inner is None or not all(hasattr(inner, n) for n in needed):
        return None
    if not hasattr(hf, "lm_head"):
        return None
    return {n: getattr(inner, n) for n in needed} | {"lm_head": hf.lm_head}


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
            self.steer += _steer_mask(tdp, len(tdp.completions[0].tokens), device)[:p].tolist()
            self.sign += [s] * p
            segments = []
            for comp in tdp.completions:
                start, n = len(self.ids), len(comp.tokens)
                self.ids += comp.tokens
                self.pos += list(range(p, p + n))
                self.steer += _steer_mask(tdp, n, device)[p:].tolist()
                self.sign += [s] * n
                # Token k of the completion is predicted at the previous position.
                self.scored += [base + p - 1, *range(start, start + n - 1)]
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


class PackedEngine:
    """Tree-packed forward, one batch row per group, with the lower blocks computed once
    (see module docstring)."""

    def __init__(
        self,
        model: Any,
        data: Sequence[TokenizedDatapoint],
        layers: Sequence[int],
        groups: Sequence[int] | None = None,
    ):
        parts = _hf_parts(model)
        if parts is None:
            raise NotImplementedError("not a Hugging Face decoder under a TransformerBridge")
        self.parts, self.layers = parts, sorted(set(layers))
        group_of = _check_groups(data, groups)
        dev = runtime.device(model)
        n_groups = (group_of[-1] + 1) if group_of else 0
        packed = [
            _PackedRow([d for d, g in zip(data, group_of, strict=True) if g == k], dev)
            for k in range(n_groups)
        ]
        t = max(len(r.ids) for r in packed)

        def padded(values: list, fill: Any) -> list:
            return values + [fill] * (t - len(values))

        dtype = runtime.dtype(model)
        allow = torch.stack([r.allowed(t, dev) for r in packed])
        self.mask = torch.zeros(len(packed), 1, t, t, dtype=dtype, device=dev).masked_fill(
            ~allow[:, None], torch.finfo(dtype).min
        )
        self.position_ids = torch.tensor([padded(r.pos, 0) for r in packed], device=dev)
        self.steer_mask = torch.tensor([padded(r.steer, False) for r in packed], device=dev)
        self.sign = torch.tensor([padded(r.sign, 1.0) for r in packed], device=dev)
        self.scored = [r.scored for r in packed]
        self.groups = _Groups(list(range(len(packed))), [len(s) for s in self.scored])
        self.layout = score_layout(data, dev)
        self.start = self.layers[0]
        pad = runtime.pad_token_id(model)
        with torch.no_grad():
            h = parts["embed_tokens"](
                torch.tensor([padded(r.ids, pad) for r in packed], device=dev)
            )
            self.rope = parts["rotary_emb"](h, position_ids=self.position_ids)
            for i in range(self.start):
                h = self._block(i, h, self.mask, self.position_ids, self.rope)
        self.h_start = h.detach()

    def _block(
        self, i: int, h: Tensor, mask: Tensor, position_ids: Tensor, rope: tuple[Tensor, ...]
    ) -> Tensor:
        out = self.parts["layers"][i](
            h, attention_mask=mask, position_ids=position_ids, position_embeddings=rope
        )
        return out[0] if isinstance(out, tuple) else out

    def logits(self, apply: SteerFn | Mapping[int, SteerFn]) -> Float[Tensor, "n vocab"]:
        """Logits at the scored positions: of every group under ``apply``, or of the groups
        in the mapping ``{group: apply}``, each under its own function (in group order)."""
        chosen, spans = self.groups.select(apply)
        if chosen == list(range(self.groups.count)):
            h, mask, pos = self.h_start, self.mask, self.position_ids
            rope, steer, sign = self.rope, self.steer_mask, self.sign
        else:
            index = torch.tensor(chosen, dtype=torch.long, device=self.h_start.device)
            h, mask, pos = self.h_start[index], self.mask[index], self.position_ids[index]
            rope = tuple(r[index] for r in self.rope)
            steer, sign = self.steer_mask[index], self.sign[index]
        steered = set(self.layers)
        for i in range(self.start, len(self.parts["layers"])):
            if i in steered:
                h = _apply_spans(spans, i, h, steer, sign)
            h = self._block(i, h, mask, pos, rope)
        t = h.shape[1]
        flat = torch.tensor(
            [k * t + s for k, r in enumerate(chosen) for s in self.scored[r]],
            dtype=torch.long,
            device=h.device,
        )
        h = self.parts["norm"](h.reshape(-1, h.shape[-1])[flat])
        return self.parts["lm_head"](h)


def make_engine(
    model: Any,
    data: Sequence[TokenizedDatapoint],
    layers: Sequence[int],
    *,
    fast: bool = True,
    groups: Sequence[int] | None = None,
) -> PackedEngine | HookedEngine:
    """The packed engine when it reproduces the hooked one on this model, else the hooked one."""
    hooked = HookedEngine(model, data, layers, groups)
    if not fast:
        return hooked
    try:
        packed = PackedEngine(model, data, layers, groups)
    except NotImplementedError:
        return hooked
    with torch.no_grad():
        a, b = packed.logits(unsteered).float(), hooked.logits(unsteered).float()
    tol = 1e-4 if runtime.dtype(model) == torch.float32 else 5e-2
    if a.shape != b.shape or not torch.allclose(a, b, atol=tol * max(1.0, float(b.abs().max()))):
        warnings.warn(
            "steerlens: the packed fast path does not reproduce this model's forward pass; "
            "using the slower hooked path.",
            stacklevel=3,
        )
        return hooked
    return packed
