"""Constraints on the steering vector: applied after each optimizer step (`NormCap`,
`Noise`), or as a second phase that shrinks the vector without raising any loss
(`OutputConstraint`, run by `minimize_norm`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from steerlens.errors import SpecError


@dataclass(frozen=True)
class NormCap:
    """After each step, if ``||v|| > max_norm``, rescale ``v <- max_norm * v / ||v||``."""

    max_norm: float

    def __post_init__(self) -> None:
        if not self.max_norm > 0:
            raise SpecError(f"norm cap must be > 0, got {self.max_norm}; pass a positive number.")

    def apply(self, v: Tensor) -> None:
        norm = v.norm()
        if norm > self.max_norm:
            v.mul_(self.max_norm / norm)


@dataclass(frozen=True)
class Noise:
    """Gaussian noise added to the vector after each step (the authors' regulariser).

    Attributes:
        scale: standard deviation per coordinate.
        project_off_gradient: remove the noise's component along the current gradient.
        anticorrelated: add ``z_t - z_{t-1}`` instead of ``z_t`` (anti-correlated perturbation).
    """

    scale: float
    project_off_gradient: bool = False
    anticorrelated: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.scale < float("inf"):
            raise SpecError(f"noise scale must be >= 0 and finite, got {self.scale}.")

    def sample(
        self, v: Tensor, grad: Tensor | None, previous: Tensor | None, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """The perturbation to add, and the raw draw to pass as ``previous`` next time."""
        z = torch.randn(v.shape, generator=generator, dtype=torch.float32).to(v) * self.scale
        step = z - previous if (self.anticorrelated and previous is not None) else z
        if self.project_off_gradient and grad is not None and grad.norm() > 0:
            g = grad / grad.norm()
            step = step - (step.flatten() @ g.flatten()) * g
        return step, z


Constraint = NormCap | Noise


def apply_constraints(
    constraints: Sequence[Constraint],
    v: Tensor,
    generator: torch.Generator,
    noise_state: dict[int, Tensor],
) -> None:
    """Apply each constraint to ``v`` in place, in order (call without grad). ``noise_state``
    keeps each `Noise`'s previous draw between calls."""
    for i, c in enumerate(constraints):
        if isinstance(c, NormCap):
            c.apply(v)
        else:
            step, noise_state[i] = c.sample(v, v.grad, noise_state.get(i), generator)
            v.add_(step)


@dataclass(frozen=True, kw_only=True)
class OutputConstraint:
    """Second phase: minimise ``||v||`` while no completion's loss rises above where it was
    when the phase began (gradient projection with restoration; see `minimize_norm`).

    Attributes:
        lr: the fraction of the norm removed per shrinking step.
        max_steps: steps of this phase (each costs one forward and one backward per completion).
        margin: how far (nats) inside a violated bound a restoration step aims.
    """

    lr: float = 0.05
    max_steps: int = 100
    margin: float = 1e-3


def minimize_norm(
    v: Tensor,
    losses: Callable[[], Tensor | None],
    bounds: Tensor,
    phase: OutputConstraint,
    caps: Sequence[NormCap] = (),
) -> None:
    """Minimise ``||v||`` subject to ``losses()_i <= bounds_i`` for every completion, in place,
    by gradient projection with restoration.

    Each step computes the constraint Jacobian ``J`` (one row per completion). If some
    constraint is violated, a Gauss-Newton restoration step moves ``v`` back to ``margin``
    inside the violated bounds; otherwise ``v`` shrinks along ``-v`` projected off the span of
    ``J`` (to first order no loss changes), by up to ``lr`` times its norm (halved after a step
    that broke a bound; if restoration fails, back to the best point). The smallest-norm ``v``
    that meets every bound exactly is kept; the start point meets them, so the norm never
    grows. ``losses()`` returns ``None`` when it is not finite, which ends the phase.
    """
    best, best_norm = v.detach().clone(), float(v.detach().norm())
    rate, restoring = phase.lr, 0
    for _ in range(phase.max_steps):
        values = losses()
        if values is None:
            break
        rows = [torch.autograd.grad(li, v, retain_graph=True)[0] for li in values]
        jac = torch.stack(rows).float()
        gap = (values.detach() - bounds).float()
        with torch.no_grad():
            norm = float(v.norm())
            violated = gap > 0
            if not bool(violated.any()) and norm < best_norm:
                best, best_norm = v.detach().clone(), norm
            # Shrink gently after a step that broke a bound, boldly after one that did not.
            rate = rate / 2 if bool(violated.any()) else min(rate * 1.5, phase.lr)
            restoring = restoring + 1 if bool(violated.any()) else 0
            if restoring > 3:
                v.copy_(best)  # restoration failed: back to the best point, smaller steps
                restoring = 0
                continue
            if restoring:
                ja = jac[violated]
                rhs = gap[violated] + phase.margin
                step = -ja.T @ torch.linalg.solve(ja @ ja.T + 1e-8 * torch.eye(len(ja)), rhs)
            else:
                d = -v.detach().float()
                coef = torch.linalg.solve(jac @ jac.T + 1e-8 * torch.eye(len(jac)), jac @ d)
                step = rate * (d - jac.T @ coef)
            v.add_(step.to(v))
            for cap in caps:
                cap.apply(v)
    with torch.no_grad():
        v.copy_(best)
