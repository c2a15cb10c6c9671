"""Forward engines that give the logits of every scored completion token under a steering
function; the optimizer and `steerlens.optimize.ObjectiveScorer` run on them.

``PackedEngine`` (fast path, Hugging Face Llama-family models under a ``TransformerBridge``):
all datapoints and completions are packed into one sequence with a tree attention mask, so each
prompt is computed once per step and completions see only their own prompt; the blocks below the
first steered layer are run once, at construction, since they do not depend on the vector; and
the unembedding runs only at scored positions. It checks itself against ``HookedEngine`` once
and falls back to it if they disagree.

``HookedEngine`` (any TransformerLens model): one batched, right-padded forward of every
``prompt + completion`` with steering hooks at ``blocks.{l}.hook_resid_pre``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
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


class HookedEngine:
    """Batched, right-padded forward of every ``prompt + completion`` through hooks."""

    def __init__(self, model: Any, data: Sequence[TokenizedDatapoint], layers: Sequence[int]):
        self.model, self.layers = model, sorted(set(layers))
        dev = runtime.device(model)
        rows, comps, masks, signs, score_pos = [], [], [], [], []
        for tdp in data:
            p = len(tdp.prompt_tokens)
            for comp in tdp.completions:
                rows.append(tdp.prompt_tokens + comp.tokens)
                comps.append(comp.tokens)
                masks.append(_steer_mask(tdp, len(comp.tokens), dev))
                signs.append(-1.0 if tdp.datapoint.negate else 1.0)
                score_pos.append(list(range(p - 1, p - 1 + len(comp.tokens))))
        self.tokens, self.attention_mask = runtime.right_pad(model, rows)
        self.prompt_end = torch.tensor(
            [len(r) - len(c) for r, c in zip(rows, comps, strict=True)], device=dev
        )
        self.steer_mask = torch.zeros_like(self.attention_mask, dtype=torch.bool)
        for i, m in enumerate(masks):
            self.steer_mask[i, : len(m)] = m
        self.sign = torch.tensor(signs, device=dev)
        self.row_index = torch.tensor(
            [i for i, sp in enumerate(score_pos) for _ in sp], dtype=torch.long, device=dev
        )
        self.pos_index = torch.tensor(
            [p for sp in score_pos for p in sp], dtype=torch.long, device=dev
        )
        self.layout = score_layout(data, dev)

    def logits(self, apply: SteerFn) -> Float[Tensor, "n vocab"]:
        def make_hook(layer: int) -> Callable[..., Tensor]:
            def hook(x: Tensor, *, hook: Any) -> Tensor:
                return apply(
                    layer, x, self.steer_mask, self.sign[:, None].expand_as(self.steer_mask)
                )

            return hook

        hooks = [(runtime.hook_name(la), make_hook(la)) for la in self.layers]
        with self.model.hooks(fwd_hooks=hooks):
            return runtime.logits_at(
                self.model,
                self.tokens,
                self.attention_mask,
                self.row_index,
                self.pos_index,
                TokenContext.prompts(self.prompt_end),
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


class PackedEngine:
    """Tree-packed forward with the lower blocks computed once (see module docstring)."""

    def __init__(self, model: Any, data: Sequence[TokenizedDatapoint], layers: Sequence[int]):
        parts = _hf_parts(model)
        if parts is None:
            raise NotImplementedError("not a Hugging Face decoder under a TransformerBridge")
        self.parts, self.layers = parts, sorted(set(layers))
        dev = runtime.device(model)
        ids: list[int] = []
        pos: list[int] = []
        steer: list[bool] = []
        sign: list[float] = []
        blocks: list[tuple[int, int, list[tuple[int, int]]]] = []
        score_rows: list[int] = []
        for tdp in data:
            base, p = len(ids), len(tdp.prompt_tokens)
            s = -1.0 if tdp.datapoint.negate else 1.0
            ids += tdp.prompt_tokens
            pos += list(range(p))
            # The prompt's steer mask is the same for every completion; take it from the first.
            steer += _steer_mask(tdp, len(tdp.completions[0].tokens), dev)[:p].tolist()
            sign += [s] * p
            segments = []
            for comp in tdp.completions:
                start, n = len(ids), len(comp.tokens)
                ids += comp.tokens
                pos += list(range(p, p + n))
                steer += _steer_mask(tdp, n, dev)[p:].tolist()
                sign += [s] * n
                # Token k of the completion is predicted at the previous position.
                score_rows += [base + p - 1, *range(start, start + n - 1)]
                segments.append((start, n))
            blocks.append((base, p, segments))
        t = len(ids)
        allow = torch.zeros(t, t, dtype=torch.bool, device=dev)
        for base, p, segments in blocks:
            allow[base : base + p, base : base + p] = torch.ones(p, p, device=dev).tril().bool()
            for start, n in segments:
                allow[start : start + n, base : base + p] = True
                allow[start : start + n, start : start + n] = (
                    torch.ones(n, n, device=dev).tril().bool()
                )
        dtype = runtime.dtype(model)
        self.mask = torch.zeros(1, 1, t, t, dtype=dtype, device=dev).masked_fill(
            ~allow, torch.finfo(dtype).min
        )
        self.position_ids = torch.tensor([pos], dtype=torch.long, device=dev)
        self.steer_mask = torch.tensor([steer], dtype=torch.bool, device=dev)
        self.sign = torch.tensor([sign], device=dev)
        self.score_rows = torch.tensor(score_rows, dtype=torch.long, device=dev)
        self.layout = score_layout(data, dev)
        self.start = self.layers[0]
        with torch.no_grad():
            h = parts["embed_tokens"](torch.tensor([ids], device=dev))
            self.rope = parts["rotary_emb"](h, position_ids=self.position_ids)
            for i in range(self.start):
                h = self._block(i, h)
        self.h_start = h.detach()

    def _block(self, i: int, h: Tensor) -> Tensor:
        out = self.parts["layers"][i](
            h,
            attention_mask=self.mask,
            position_ids=self.position_ids,
            position_embeddings=self.rope,
        )
        return out[0] if isinstance(out, tuple) else out

    def logits(self, apply: SteerFn) -> Float[Tensor, "n vocab"]:
        h = self.h_start
        steered = set(self.layers)
        for i in range(self.start, len(self.parts["layers"])):
            if i in steered:
                h = apply(i, h, self.steer_mask, self.sign)
            h = self._block(i, h)
        h = self.parts["norm"](h[0, self.score_rows])
        return self.parts["lm_head"](h)


def make_engine(
    model: Any, data: Sequence[TokenizedDatapoint], layers: Sequence[int], *, fast: bool = True
) -> PackedEngine | HookedEngine:
    """The packed engine when it reproduces the hooked one on this model, else the hooked one."""
    hooked = HookedEngine(model, data, layers)
    if not fast:
        return hooked
    try:
        packed = PackedEngine(model, data, layers)
    except NotImplementedError:
        return hooked
    identity: SteerFn = lambda layer, x, mask, sign: x  # noqa: E731
    with torch.no_grad():
        a, b = packed.logits(identity).float(), hooked.logits(identity).float()
    tol = 1e-4 if runtime.dtype(model) == torch.float32 else 5e-2
    if a.shape != b.shape or not torch.allclose(a, b, atol=tol * max(1.0, float(b.abs().max()))):
        warnings.warn(
            "steerlens: the packed fast path does not reproduce this model's forward pass; "
            "using the slower hooked path.",
            stacklevel=3,
        )
        return hooked
    return packed
