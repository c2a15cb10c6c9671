"""Regularizers: loss terms added to the objective that keep the steered model close to the
unsteered one where the behavior should not change.

- `SideEffect`: ``weight * mean_k KL(p_k || q_k)`` over the next-token distributions after a few
  neutral prompts, ``p_k`` unsteered (recorded once, before the first step) and ``q_k`` steered
  (coldness 1, nats). In the spirit of KL-then-steer (Stickland et al., 2024), but as a term of
  the steering vector's own objective.

A regularizer is given in ``OptimizeConfig(regularizers=(SideEffect(...),))`` and composes with
any objective (promotion, suppression, `KLObjective`) and any steering kind. The trainer
(`steerlens.training.loop`) adds its rows to the job's engine rows, so one forward per step
scores the completions and the neutral prompts together; the loss history gets one column per
regularizer, labelled by `SideEffect.label`, holding the weighted term (so a row still sums to
the minimised loss).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from steerlens import runtime
from steerlens.errors import InputError, SpecError
from steerlens.runtime.logprobs import kl_divergence
from steerlens.steering.positions import PositionsLike, as_positions
from steerlens.training.data import TokenizedDatapoint, next_token_rows


@dataclass(frozen=True)
class SideEffect:
    """``weight * mean KL(unsteered || steered)`` of the next-token distributions of neutral
    prompts, added to the objective while optimizing.

    Args:
        prompts: neutral prompts, where the vector should change nothing.
        weight: the term's weight ``lambda`` (``>= 0``; 0 scores it without steering by it).
        scored: which positions of each prompt are scored, in the grammar of a prompt position
            rule: ``"last:1"`` (default: the next token after the prompt, as
            `steerlens.evaluation.side_effect_kl` measures), ``"last:N"``, ``"all"`` (after
            every token), a slice (``slice(None, -1)``: every position but the last, e.g. on
            the training prompt itself) or indices. The mean is over every scored position of
            every prompt.
        chat: format each prompt as a user message in the model's chat template (default:
            when the model has one; ``False``: as written).

    Each prompt is steered as the vector is while training (the optimizer's ``positions``,
    each scored prefix taken as the prompt) at ``+strength`` (never negated).

    Example:
        >>> from steerlens import Datapoint, optimize_vector
        >>> from steerlens.testing import tiny_model
        >>> term = SideEffect(["a dog", "the sun is"], weight=2.0)
        >>> res = optimize_vector(tiny_model(), Datapoint("the cat", promote=[" sat"]), 1,
        ...                       lr=0.1, max_steps=3, regularizers=(term,), progress=False)
        >>> res.labels[-1], bool(res.loss_history[0, -1] == 0.0)
        ('side effect: 2 x KL(unsteered || steered), 2 prompts, last 1 prompt tokens', False)
    """

    prompts: Sequence[str]
    _: KW_ONLY
    weight: float = 1.0
    scored: PositionsLike = "last:1"
    chat: bool | None = None

    def __post_init__(self) -> None:
        if isinstance(self.prompts, str):
            object.__setattr__(self, "prompts", (self.prompts,))
        if not isinstance(self.prompts, (list, tuple)) or not self.prompts:
            raise InputError(
                f"SideEffect needs a non-empty list of prompts, got {self.prompts!r:.60}."
            )
        object.__setattr__(self, "prompts", tuple(self.prompts))
        bad = next((p for p in self.prompts if not isinstance(p, str) or not p.strip()), None)
        if bad is not None:
            raise InputError(f"every SideEffect prompt must be non-empty text, got {bad!r:.60}.")
        w = self.weight
        if not (isinstance(w, numbers.Real) and not isinstance(w, bool)) or not (
            math.isfinite(w) and w >= 0
        ):
            raise SpecError(f"SideEffect weight must be >= 0 and finite, got weight={w!r}.")
        rule = as_positions(self.scored)
        if rule.kind == "generated":
            raise SpecError(
                "SideEffect(scored='generated') scores no position of the prompts; use "
                "'last:N', 'all', a slice or indices."
            )

    @property
    def label(self) -> str:
        """The loss-history column's label."""
        n = len(self.prompts)
        where = as_positions(self.scored).describe()
        return (
            f"side effect: {self.weight:g} x KL(unsteered || steered), {n} prompt"
            f"{'s' if n != 1 else ''}, {where}"
        )

    def rows(self, model: Any, positions: PositionsLike = None) -> list[TokenizedDatapoint]:
        """The scored rows (one per scored position), steered at ``positions``."""
        texts = runtime.format_prompts(model, list(self.prompts), chat=self.chat)
        return [row for t in texts for row in next_token_rows(model, t, self.scored, positions)]

    def loss(
        self, logits: Float[Tensor, "n vocab"], target_logprobs: Float[Tensor, "n vocab"]
    ) -> Float[Tensor, ""]:
        """``weight * mean KL(p || softmax(logits))`` over the rows (nats)."""
        if logits.shape != target_logprobs.shape:
            raise SpecError(
                f"SideEffect has unsteered targets of shape {tuple(target_logprobs.shape)} but "
                f"the scored logits are {tuple(logits.shape)}."
            )
        kl = kl_divergence(target_logprobs, logits)
        return self.weight * kl.mean()


def unsteered_logprobs(logits: Float[Tensor, "n vocab"]) -> Float[Tensor, "n vocab"]:
    """The recorded targets: float32 log-probabilities, without grad."""
    return torch.log_softmax(logits.detach().float(), dim=-1)


Regularizer = SideEffect

__all__ = ["Regularizer", "SideEffect"]
