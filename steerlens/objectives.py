"""Promotion, suppression and mixed objectives (METHOD.md section 2.1), in nats.

Given the log-probabilities (with coldness) of each completion token, a completion's loss is

- promotion:   ``-sum_k log P(y_k)``
- suppression: ``-sum_k log(1 - P(y_k))``  (or, with ``suppression="logprob"``, ``+sum_k log P``)

optionally divided by the completion's token count. Units: nats internally; convert with
:func:`convert_loss`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from steerlens.errors import SpecError

LOG_BASES = {"nats": math.e, "bits": 2.0, "hartleys": 10.0}


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
        if not self.coldness > 0:
            raise SpecError(f"coldness must be > 0, got {self.coldness}.")
        if self.suppression not in ("one_minus", "logprob"):
            raise SpecError(
                f"unknown suppression {self.suppression!r}; use 'one_minus' or 'logprob'."
            )


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


def convert_loss(value: float | Tensor, unit: str) -> float | Tensor:
    """Convert a loss from nats to ``"bits"``, ``"hartleys"`` or ``"nats"``.

    Example:
        >>> round(convert_loss(math.log(10), "hartleys"), 6)
        1.0
    """
    if unit not in LOG_BASES:
        raise SpecError(f"unknown loss unit {unit!r}; use one of {', '.join(LOG_BASES)}.")
    return value / math.log(LOG_BASES[unit])
