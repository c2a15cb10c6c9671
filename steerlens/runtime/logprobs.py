"""Log-probabilities and KL divergences of next-token distributions (nats, float32 or wider)."""

from __future__ import annotations

import math

import torch
from jaxtyping import Float, Int
from torch import Tensor

from steerlens.errors import SpecError

# Loss units: the base of the logarithm each one counts in.
LOG_BASES = {"nats": math.e, "bits": 2.0, "hartleys": 10.0}


def token_logprobs(
    logits: Float[Tensor, "n vocab"], targets: Int[Tensor, " n"], coldness: float = 1.0
) -> Float[Tensor, " n"]:
    """``log softmax(c * logits)[target]`` in float32 (or wider).

    Example:
        >>> token_logprobs(torch.zeros(1, 4), torch.tensor([2])).exp().tolist()
        [0.25]
    """
    scaled = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if coldness != 1:
        scaled = scaled * coldness
    # One fused kernel each way; gather minus logsumexp takes about twice as long.
    return scaled.log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)


def kl_divergence(
    target_logp: Float[Tensor, "n vocab"], logits: Float[Tensor, "n vocab"]
) -> Float[Tensor, " n"]:
    """``KL(p || q) = sum p (log p - log q)`` per row, with ``p = exp(target_logp)`` and
    ``q = softmax(logits)``; terms where ``p = 0`` count 0 (also when ``log q`` is ``-inf``).

    Example:
        >>> p = torch.log(torch.tensor([[0.5, 0.5]]))
        >>> round(float(kl_divergence(p, torch.log(torch.tensor([[0.9, 0.1]])))), 4)
        0.5108
    """
    logq = torch.log_softmax(logits.float(), dim=-1)
    p = target_logp.float().exp()
    terms = torch.where(p > 0, p * (target_logp.float() - logq), torch.zeros_like(logq))
    return terms.sum(-1)


def kl_of_logprobs(
    logp: Float[Tensor, "n vocab"], logq: Float[Tensor, "n vocab"]
) -> Float[Tensor, " n"]:
    """``KL(p || q)`` per row from two log-probability tensors, in their dtype (float64 stays
    exact to its rounding); terms where ``p = 0`` count 0.

    Example:
        >>> p, q = torch.tensor([[0.5, 0.5]]).log(), torch.tensor([[0.9, 0.1]]).log()
        >>> round(float(kl_of_logprobs(p, q)), 4)
        0.5108
    """
    p = logp.exp()
    return torch.where(p > 0, p * (logp - logq), torch.zeros_like(p)).sum(-1)


def check_coldness(coldness: float) -> float:
    """``coldness`` as a float, or an error when it is not > 0."""
    if not coldness > 0:
        raise SpecError(
            f"coldness must be > 0 (1 = the model's own probabilities), got {coldness}."
        )
    return float(coldness)


def convert_loss(value: float | Tensor, unit: str) -> float | Tensor:
    """Convert a loss from nats to ``"bits"``, ``"hartleys"`` or ``"nats"``.

    Example:
        >>> round(convert_loss(math.log(10), "hartleys"), 6)
        1.0
    """
    if unit not in LOG_BASES:
        raise SpecError(f"unknown loss unit {unit!r}; use one of {', '.join(LOG_BASES)}.")
    return value / math.log(LOG_BASES[unit])
