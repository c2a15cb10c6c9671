"""Objectives: per-completion losses from the logits at the scored positions, in nats.

- `Objective` (METHOD.md section 2.1): with the log-probabilities (with coldness) of each
  completion token, promotion ``-sum_k log P(y_k)``, suppression ``-sum_k log(1 - P(y_k))`` (or,
  with ``suppression="logprob"``, ``+sum_k log P``), optionally divided by the completion's
  token count.
- `KLObjective` (reentrant steering, Algorithm 1): ``sum_k KL(p_k || q_k)`` to recorded
  next-token distributions ``p_k`` at the completion's positions (coldness 1).

Both take ``losses(logits, layout)``; the optimizer minimises their sum. Units: nats
internally; convert with `convert_loss`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from steerlens.errors import SpecError
from steerlens.runtime.logprobs import kl_divergence, token_logprobs
from steerlens.training.data import ScoreLayout


@dataclass(frozen=True, kw_only=True)
class Objective:
    """How completion losses are computed.

    Attributes:
        coldness: inverse temperature ``c``: probabilities are ``softmax(c * logits)``.
        suppression: ``"one_minus"`` for ``-log(1 - p)`` (the paper), ``"logprob"`` for ``+log p``.
        length_normalize: divide each completion's loss by its number of tokens.
    """

    coldness: float = 0.7
    suppression: Literal["one_minus", "logprob"] = "one_minus"
    length_normalize: bool = False

    def __post_init__(self) -> None:
        if not (isinstance(self.coldness, (int, float)) and 0 < self.coldness < math.inf):
            raise SpecError(f"coldness must be > 0 and finite, got {self.coldness!r}.")
        if self.suppression not in ("one_minus", "logprob"):
            raise SpecError(
                f"unknown suppression {self.suppression!r}; use 'one_minus' or 'logprob'."
            )
        if not isinstance(self.length_normalize, bool):
            # A truthy string such as "no" would otherwise switch normalization on.
            raise SpecError(
                f"length_normalize must be True or False, got {self.length_normalize!r} "
                f"({type(self.length_normalize).__name__})."
            )

    def losses(
        self, logits: Float[Tensor, "n vocab"], layout: ScoreLayout
    ) -> Float[Tensor, " completions"]:
        """Per-completion losses (nats) from the logits at the scored positions."""
        lp = token_logprobs(logits, layout.targets, self.coldness)
        return completion_losses(
            lp, layout.completion_index, layout.is_suppress, layout.lengths, self
        )


@dataclass(frozen=True, eq=False)
class KLObjective:
    """``sum_k KL(p_k || q_k)`` per completion: ``p_k`` are recorded next-token distributions
    (``target_logprobs``, one row per scored token, in layout order) and ``q_k`` the steered
    model's (coldness 1).

    Example:
        >>> import torch
        >>> from steerlens.training.data import ScoreLayout
        >>> layout = ScoreLayout(torch.tensor([0, 1]), torch.tensor([0, 0]), torch.tensor([False]),
        ...                      torch.tensor([2.0]), ["c"], [None], [0])
        >>> target = torch.log_softmax(torch.randn(2, 5), -1)
        >>> KLObjective(target).losses(target, layout).abs().item() < 1e-6
        True
    """

    target_logprobs: Float[Tensor, "n vocab"]

    def __post_init__(self) -> None:
        if self.target_logprobs.ndim != 2 or not bool(torch.isfinite(self.target_logprobs).all()):
            raise SpecError(
                "KLObjective needs finite target log-probabilities of shape [tokens, vocab], got "
                f"shape {tuple(self.target_logprobs.shape)}."
            )

    def losses(
        self, logits: Float[Tensor, "n vocab"], layout: ScoreLayout
    ) -> Float[Tensor, " completions"]:
        if logits.shape != self.target_logprobs.shape:
            raise SpecError(
                f"KLObjective has targets for {tuple(self.target_logprobs.shape)} but the "
                f"scored logits are {tuple(logits.shape)}; record one row per scored token."
            )
        kl = kl_divergence(self.target_logprobs.to(logits.device), logits)
        total = torch.zeros(len(layout.lengths), dtype=kl.dtype, device=kl.device)
        return total.index_add(0, layout.completion_index, kl)


ObjectiveLike = Objective | KLObjective


def log1mexp(logp: Tensor) -> Tensor:
    """``log(1 - exp(logp))`` for ``logp <= 0``, accurate at both ends."""
    logp = logp.clamp(max=-1e-12)
    near_zero = logp > -math.log(2.0)
    # Each branch gets an input where it is finite: torch.where's backward would otherwise
    # multiply the unused branch's inf gradient by 0 and give NaN.
    small = torch.log(-torch.expm1(torch.where(near_zero, logp, torch.full_like(logp, -1.0))))
    large = torch.log1p(-torch.exp(torch.where(near_zero, torch.full_like(logp, -1.0), logp)))
    return torch.where(near_zero, small, large)


def completion_losses(
    token_lp: Float[Tensor, " n"],
    completion_index: Int[Tensor, " n"],
    is_suppress: Bool[Tensor, " completions"],
    lengths: Float[Tensor, " completions"],
    objective: Objective,
) -> Float[Tensor, " completions"]:
    """Per-completion losses (nats) from per-token log-probs.

    ``completion_index[t]`` says which completion token ``t`` belongs to; ``is_suppress[i]``
    whether completion ``i`` is suppressed.
    """
    sup_token = is_suppress[completion_index]
    one_minus = objective.suppression == "one_minus"
    sup_term = -log1mexp(token_lp) if one_minus else token_lp
    per_token = torch.where(sup_token, sup_term, -token_lp)
    losses = torch.zeros(len(lengths), dtype=per_token.dtype, device=per_token.device)
    losses = losses.index_add(0, completion_index, per_token)
    if objective.length_normalize:
        losses = losses / lengths.to(losses)
    return losses
