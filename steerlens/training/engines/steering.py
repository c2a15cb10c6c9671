"""The engines' steering functions and the bookkeeping both engines share: which positions of a
datapoint are steered, and which batch rows and scored positions belong to each group."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from steerlens.runtime import TokenContext
from steerlens.steering.interventions import Intervention
from steerlens.training.data import TokenizedDatapoint

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
        >>> from steerlens.steering.interventions import Add
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


def steer_mask(tdp: TokenizedDatapoint, n_completion: int, device: torch.device) -> Tensor:
    """Positions to steer in the linear sequence ``prompt + completion`` (bool [length])."""
    p = len(tdp.prompt_tokens)
    ctx = TokenContext.prompts(torch.full((1,), p, dtype=torch.long, device=device))
    mask = tdp.positions.mask(ctx, p + n_completion)
    if mask is None:
        return torch.ones(p + n_completion, dtype=torch.bool, device=device)
    return mask[0]


def check_groups(data: Sequence[TokenizedDatapoint], groups: Sequence[int] | None) -> list[int]:
    """Group of each datapoint: ``0, 0, 1, 1, 2 ...`` (contiguous, numbered from 0)."""
    if groups is None:
        return [0] * len(data)
    out = [int(g) for g in groups]
    if len(out) != len(data) or (out and out[0] != 0):
        raise ValueError("groups must give one group per datapoint, starting at 0")
    if any(b not in (a, a + 1) for a, b in itertools.pairwise(out)):
        raise ValueError("groups must be contiguous and numbered in order: 0, 0, 1, 2, 2, ...")
    return out


class Groups:
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


def apply_spans(spans: Sequence[Span], layer: int, x: Tensor, mask: Tensor, sign: Tensor) -> Tensor:
    """Each span's rows of ``x`` under its own steering function."""
    if len(spans) == 1:
        return spans[0][2](layer, x, mask, sign)
    return torch.cat([fn(layer, x[a:b], mask[a:b], sign[a:b]) for a, b, fn in spans])
