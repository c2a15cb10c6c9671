"""`PromptScorer`: fixed prompts scored under many steerings, with what no steering changes
computed once.

`next_token_logprobs` runs every ``(steering, prompt)`` row through the whole model. When the
prompts are fixed and every steering uses the same position rule, most of that work is the
same for every steering: the tokens before the first steered one, and every token below the
first steered layer. A `PromptScorer` builds the training engine's batch over the prompts once
(`steerlens.training.engines.make_engine`: on a family with a fast-path adapter the frozen
prefixes' keys and values and the lower blocks are computed at construction), then each
steering costs one forward of the steered tokens from the first steered layer up, every prompt
in one batch. Other models take the hooked engine: the same values, without the savings.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from steerlens import runtime
from steerlens.errors import SpecError
from steerlens.evaluation.inputs import (
    Prompts,
    answer_pairs,
    check_token_ids,
    prompt_rows,
    propensity_of,
)
from steerlens.steering.positions import PositionsLike, as_positions
from steerlens.steering.steer import Applied, RowSteering, check_row_steerings, resolve_steering
from steerlens.training.data import Datapoint, TokenizedCompletion, TokenizedDatapoint
from steerlens.training.engines import SteerFn, make_engine, unsteered


class PromptScorer:
    """Next-token log-probabilities of fixed prompts under many steerings that share one
    position rule and steer only at ``layers``.

    Values equal `next_token_logprobs`'s up to float rounding (rows are computed in another
    grouping). The scorer keeps the prompts' keys and values at every layer from the first of
    ``layers`` up: memory grows with prompts x prompt length.

    Args:
        model: a TransformerLens model.
        prompts: texts used as written, or token lists used as given.
        positions: the position rule every steering uses (e.g. ``"last:7"``).
        layers: every layer a steering may steer at.
        bos: put the model's BOS token in front of each text prompt.
        completions: per prompt, tokens whose log-probabilities `kl` compares (e.g. the
            unsteered model's rollouts); by default one scored position after each prompt.
        batch_size: prompts per forward pass (prompts of similar length together).
        copies: steerings per forward pass (the prompts are held that many times; more is
            faster for few, short prompts and takes that much more memory).

    Example:
        >>> import torch
        >>> from steerlens import Steering
        >>> from steerlens.evaluation import next_token_logprobs
        >>> from steerlens.testing import tiny_model
        >>> model = tiny_model()
        >>> prompts = ["the cat sat on", "a dog ran"]
        >>> plan = Steering(torch.ones(64), layer=1, strength=3.0, positions="last:2")
        >>> scorer = PromptScorer(model, prompts, "last:2", [1])
        >>> fast = scorer.next_token_logprobs([None, plan], [5, 6])
        >>> slow = next_token_logprobs(model, prompts, [None, plan], [5, 6])
        >>> torch.allclose(fast, slow, atol=1e-5)
        True
    """

    def __init__(
        self,
        model: Any,
        prompts: Prompts,
        positions: PositionsLike,
        layers: int | Sequence[int],
        *,
        completions: Sequence[Sequence[int]] | None = None,
        bos: bool = False,
        batch_size: int = 32,
        copies: int = 1,
    ) -> None:
        self.model = model
        self.rows = prompt_rows(model, prompts, bos=bos)
        self.positions = as_positions(positions)
        self.layers = sorted(set(runtime.check_layers(model, layers)))
        runtime.check_batch_size(batch_size)
        if isinstance(copies, bool) or not isinstance(copies, int) or copies < 1:
            raise SpecError(
                f"copies must be an int >= 1 (steerings per forward pass), got {copies!r}."
            )
        if completions is None:
            # A one-token stand-in puts one scored position right after each prompt.
            completions = [[0]] * len(self.rows)
        if len(completions) != len(self.rows) or any(len(c) < 1 for c in completions):
            raise SpecError(
                f"completions must give one token list of at least one token per prompt "
                f"({len(self.rows)}), got {len(completions)} lists."
            )
        self.completions = [[int(t) for t in c] for c in completions]
        # Prompts of similar length share an engine (one batch), so little of it is padding.
        order = sorted(range(len(self.rows)), key=lambda p: len(self.rows[p]))
        self.buckets = [order[k : k + batch_size] for k in range(0, len(order), batch_size)]
        # Each bucket's prompts are held `copies` times: one forward scores that many steerings.
        self.copies = int(copies)
        self.engines = [
            make_engine(
                model, self._data(b) * copies, self.layers, groups=list(range(len(b) * copies))
            )
            for b in self.buckets
        ]

    def _data(self, prompts: Sequence[int]) -> list[TokenizedDatapoint]:
        # Each prompt is a datapoint whose completion's tokens are the scored positions: the
        # logits before each of them (the first right after the prompt).
        stand_in = Datapoint("prompt", promote=["x"])
        return [
            TokenizedDatapoint(
                stand_in,
                self.rows[p],
                [TokenizedCompletion("x", "promote", self.completions[p], None, False)],
                self.positions,
            )
            for p in prompts
        ]

    def __len__(self) -> int:
        return len(self.rows)

    def _chosen(self, prompts: Sequence[int] | None) -> list[int]:
        chosen = list(range(len(self.rows))) if prompts is None else [int(p) for p in prompts]
        if not chosen:
            raise SpecError("prompts is empty; pass some prompt indices or leave it out.")
        bad = [p for p in chosen if not 0 <= p < len(self.rows)]
        if bad:
            raise SpecError(f"prompts {bad[:8]} are not among the scorer's {len(self)} prompts.")
        return chosen

    def _logprobs(
        self, fns: Sequence[SteerFn], chosen: Sequence[int], start: int | None = None
    ) -> list[dict[int, Tensor]]:
        """Per function (at most ``copies``), prompt -> ``[completion tokens, vocab]``
        log-probabilities (float32 or wider) at its scored positions, for the chosen prompts;
        no function steers below ``start``."""
        out: list[dict[int, Tensor]] = [{} for _ in fns]
        wanted = set(chosen)
        for bucket, engine in zip(self.buckets, self.engines, strict=True):
            groups = [g for g, p in enumerate(bucket) if p in wanted]
            if not groups:
                continue
            # Copy c of the bucket carries function c; the engine answers copy by copy.
            calls = {c * len(bucket) + g: fn for c, fn in enumerate(fns) for g in groups}
            logits = engine.logits(calls, start=start)
            wide = logits.to(torch.promote_types(logits.dtype, torch.float32)).log_softmax(-1)
            sizes = [len(self.completions[bucket[g]]) for _ in fns for g in groups]
            pieces = iter(wide.split(sizes))
            for c in range(len(fns)):
                for g in groups:
                    out[c][bucket[g]] = next(pieces)
        return out

    def _steered(
        self, plans: Sequence[RowSteering], which: Sequence[int], chosen: Sequence[int]
    ) -> Iterator[tuple[int, dict[int, Tensor]]]:
        """``(steering, prompt -> log-probabilities)`` for each of the steerings ``which``
        (`_logprobs`), ``copies`` per forward, each forward starting at the lowest layer its
        steerings steer."""
        for chunk in runtime.chunks(len(which), self.copies):
            batch = [which[i] for i in chunk]
            applied = [resolve_steering(self.model, plans[s]) for s in batch]
            fns = [self._function(a, s) for a, s in zip(applied, batch, strict=True)]
            start = min(self._start(a) for a in applied)
            yield from zip(batch, self._logprobs(fns, chosen, start), strict=True)

    @torch.no_grad()
    def next_token_logprobs(
        self,
        steerings: Sequence[RowSteering],
        token_ids: Sequence[int],
        *,
        prompts: Sequence[int] | None = None,
    ) -> Float[Tensor, "steerings prompts answers"]:
        """``log p(token | prompt)`` at ``token_ids`` under each steering (nats, CPU), for
        every prompt or for the prompt indices in ``prompts`` (in that order).

        Raises:
            SpecError: a steering with another position rule, at a layer the scorer was not
                built for, or with a condition; and bad token ids or prompt indices.
        """
        plans = check_row_steerings(steerings)
        ids = check_token_ids(self.model, token_ids, what="token_ids")
        chosen = self._chosen(prompts)
        index = torch.tensor(ids, device=runtime.device(self.model))
        rows: list[Tensor] = [torch.zeros(0)] * len(plans)
        for s, logp in self._steered(plans, range(len(plans)), chosen):
            rows[s] = torch.stack([logp[p][0, index] for p in chosen]).cpu()
        return torch.stack(rows)

    @torch.no_grad()
    def kl(
        self, steerings: Sequence[RowSteering], *, prompts: Sequence[int] | None = None
    ) -> Float[Tensor, "steerings tokens"]:
        """Per-token ``KL(steered || unsteered)`` at every scored position (before each
        completion token), as `steerlens.evaluation.rollout_kl` gives when the completions
        are the unsteered rollouts: row ``s`` holds the first chosen prompt's values, then
        the next prompt's (nats, CPU, clamped at 0 against rounding).

        Example:
            >>> import torch
            >>> from steerlens import Steering
            >>> from steerlens.testing import tiny_model
            >>> model = tiny_model()
            >>> scorer = PromptScorer(model, ["the cat", "a dog"], "last:1", [1],
            ...                       completions=[[5, 6], [7]])
            >>> plan = Steering(torch.ones(64), layer=1, strength=4.0, positions="last:1")
            >>> kl = scorer.kl([None, plan])
            >>> kl.shape, bool(kl[0].eq(0).all()), bool(kl[1].min() > 0)
            (torch.Size([2, 3]), True, True)
        """
        plans = check_row_steerings(steerings)
        chosen = self._chosen(prompts)
        reference = self._logprobs([unsteered], chosen)[0]
        dtype = reference[chosen[0]].dtype
        size = sum(len(self.completions[p]) for p in chosen)
        # A steering that applies nothing gets exact zeros, without a forward pass.
        rows = [torch.zeros(size, dtype=dtype) for _ in plans]
        active = [s for s, plan in enumerate(plans) if resolve_steering(self.model, plan)]
        for s, logp in self._steered(plans, active, chosen):
            per = [runtime.kl_of_logprobs(logp[p], reference[p]) for p in chosen]
            rows[s] = torch.cat(per).clamp_min(0.0).cpu()
        return torch.stack(rows)

    @torch.no_grad()
    def completion_logprobs(
        self, steerings: Sequence[RowSteering], *, prompts: Sequence[int] | None = None
    ) -> Float[Tensor, "steerings prompts"]:
        """Total ``log p(completion | prompt)`` of each prompt's completion under each
        steering (nats, CPU), as `steerlens.evaluation.completion_logprobs` gives for one
        steering.

        Example:
            >>> import torch
            >>> from steerlens import Steering
            >>> from steerlens.testing import tiny_model
            >>> model = tiny_model()
            >>> scorer = PromptScorer(model, ["the cat", "a dog"], "last:1", [1],
            ...                       completions=[[5, 6], [7]])
            >>> plan = Steering(torch.ones(64), layer=1, strength=4.0, positions="last:1")
            >>> scorer.completion_logprobs([None, plan]).shape
            torch.Size([2, 2])
        """
        plans = check_row_steerings(steerings)
        chosen = self._chosen(prompts)
        rows: list[Tensor] = [torch.zeros(0)] * len(plans)
        for s, logp in self._steered(plans, range(len(plans)), chosen):
            totals = []
            for p in chosen:
                ids = torch.tensor(self.completions[p], device=logp[p].device)
                totals.append(logp[p].gather(-1, ids[:, None]).sum())
            rows[s] = torch.stack(totals).cpu()
        return torch.stack(rows)

    def propensities(
        self,
        steerings: Sequence[RowSteering],
        matching: Sequence[int],
        other: Sequence[int],
        *,
        prompts: Sequence[int] | None = None,
    ) -> Float[Tensor, "steerings prompts"]:
        """``log p(matching[p]) - log p(other[p])`` under each steering, as
        `steerlens.evaluation.propensities` (``matching`` and ``other`` give one id per
        prompt scored)."""
        n = len(self.rows) if prompts is None else len(prompts)
        yes, no, ids = answer_pairs(self.model, matching, other, n)
        logp = self.next_token_logprobs(steerings, ids, prompts=prompts)
        return propensity_of(logp, ids, yes, no)

    def _start(self, applied: list[Applied]) -> int:
        """The layer a steering's forward starts at: its lowest (the highest built for when
        it steers nothing)."""
        return min((a.layer for a in applied), default=self.layers[-1])

    def _function(self, applied: list[Applied], s: int) -> SteerFn:
        """The engine's steering function for one steering's interventions."""
        rule = self.positions.to_dict()
        by_layer: dict[int, list[Applied]] = {}
        for a in applied:
            if a.condition is not None:
                raise SpecError(
                    f"steering {s} is conditional; a PromptScorer applies plain steerings "
                    "only (use steerlens.evaluation.next_token_logprobs)."
                )
            if a.positions.to_dict() != rule:
                raise SpecError(
                    f"steering {s} steers {a.positions.describe()}, but this scorer was built "
                    f"for {self.positions.describe()}; build one per position rule."
                )
            if a.layer not in self.layers:
                raise SpecError(
                    f"steering {s} steers layer {a.layer}; this scorer was built for layers "
                    f"{self.layers}: pass every layer you steer at to PromptScorer(layers=...)."
                )
            by_layer.setdefault(a.layer, []).append(a)

        def apply(layer: int, x: Tensor, mask: Tensor, sign: Tensor) -> Tensor:
            for a in by_layer.get(layer, ()):
                x = torch.where(mask[..., None], a.intervention.apply(x, a.strength), x)
            return x

        return apply


__all__ = ["PromptScorer"]
