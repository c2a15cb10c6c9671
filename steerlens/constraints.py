"""Constraints and regularisers applied to the parameters after each optimizer step."""

from __future__ import annotations

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
        if not self.scale >= 0:
            raise SpecError(f"noise scale must be >= 0, got {self.scale}.")

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
