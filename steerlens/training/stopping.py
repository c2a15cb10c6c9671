"""Stop rules: pure objects that read the loss history and say whether (and why) to stop.

Each ``check(history)`` gets the list of per-completion loss vectors so far (nats) and returns a
reason string or ``None``. They hold no state, so they can be tested on made-up sequences.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from steerlens.errors import SpecError


def _finite_number(x: object) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def _check_patience(patience: object, rule: str) -> None:
    # patience 0 would stop before the first step (an empty window always "holds").
    if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
        raise SpecError(f"{rule} patience must be an int >= 1 (steps), got {patience!r}.")


@dataclass(frozen=True)
class Plateau:
    """Stop when ``|loss_t - loss_{t-1}| < eps`` (total loss) for ``patience`` steps in a row."""

    eps: float = 1e-6
    patience: int = 1

    def __post_init__(self) -> None:
        if not _finite_number(self.eps) or self.eps <= 0:
            raise SpecError(f"Plateau eps must be a finite number > 0, got {self.eps!r}.")
        _check_patience(self.patience, "Plateau")

    def check(self, history: Sequence[Tensor], targets: Sequence[float | None] = ()) -> str | None:
        if len(history) <= self.patience:
            return None
        totals = [float(h.sum()) for h in history[-self.patience - 1 :]]
        if all(abs(b - a) < self.eps for a, b in itertools.pairwise(totals)):
            return f"plateau: |delta loss| < {self.eps:g} for {self.patience} steps"
        return None


@dataclass(frozen=True)
class TargetLoss:
    """Stop when the loss is under a target for ``patience`` steps in a row.

    ``value`` is a target for the total loss; with ``per_completion=True`` every completion must
    be under its own target (the datapoint's ``promote_targets``/``suppress_targets``, else
    ``value``).
    """

    value: float | None = None
    per_completion: bool = False
    patience: int = 1

    def __post_init__(self) -> None:
        if self.value is None and not self.per_completion:
            raise SpecError("TargetLoss needs value= or per_completion=True.")
        if self.value is not None and not _finite_number(self.value):
            # A NaN target is never met: the run would go on silently to max_steps.
            raise SpecError(
                f"TargetLoss value must be a finite number (a loss in nats), got {self.value!r}."
            )
        _check_patience(self.patience, "TargetLoss")

    def _met(self, losses: Tensor, targets: Sequence[float | None]) -> bool:
        if not self.per_completion:
            return float(losses.sum()) < float(self.value)  # type: ignore[arg-type]
        bounds = [t if t is not None else self.value for t in targets] or [self.value]
        if any(b is None for b in bounds):
            raise SpecError(
                "TargetLoss(per_completion=True) needs a target for every completion: set the "
                "datapoints' promote_targets/suppress_targets or TargetLoss(value=...)."
            )
        return bool(torch.all(losses < torch.tensor(bounds, dtype=losses.dtype)))

    def check(self, history: Sequence[Tensor], targets: Sequence[float | None] = ()) -> str | None:
        if len(history) < self.patience:
            return None
        if all(self._met(h, targets) for h in history[-self.patience :]):
            what = "every completion" if self.per_completion else "total loss"
            return f"target reached: {what} under target for {self.patience} steps"
        return None


StopRule = Plateau | TargetLoss
