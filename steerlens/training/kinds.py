"""What the optimizer trains: the steering kinds (`AddSteering`, `ClampSteering`,
`AffineSteering`, `RankOneSteering`), each naming its start parameters and the intervention of
`steerlens.steering.interventions` it builds from them."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor

from steerlens.errors import SpecError
from steerlens.steering.interventions import Add, Affine, Clamp, Intervention, check_vector
from steerlens.steering.vector import SteeringVector

if TYPE_CHECKING:
    from steerlens.training.config import OptimizeConfig


def is_number(x: Any) -> bool:
    """A real number that is not a bool."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


Params = dict[str, Tensor]


def start_vector(d_model: int, gen: torch.Generator, init: Any, norm: float) -> Tensor:
    if init is not None:
        start = init.vector if isinstance(init, SteeringVector) else init
        return check_vector(start.detach(), name="init vector", d_model=d_model).clone().float()
    v = torch.randn(d_model, generator=gen, dtype=torch.float32)
    return v / v.norm() * norm


class SteeringSpec(Protocol):
    """What `optimize_vector` trains: which intervention (``intervention(params)``),
    from which start parameters (``parameters(...)``, float32 on the CPU), at which strength,
    and what projection follows each update (``after_step``)."""

    @property
    def name(self) -> str: ...

    @property
    def strength(self) -> float: ...

    def parameters(self, d_model: int, gen: torch.Generator, config: OptimizeConfig) -> Params: ...

    def intervention(self, params: Params) -> Intervention: ...

    def after_step(self, params: Params) -> None: ...


@dataclass(frozen=True, kw_only=True)
class AddSteering:
    """Train ``v`` of `Add`: ``x + v``."""

    name: str = "add"

    @property
    def strength(self) -> float:
        return 1.0

    def parameters(self, d_model: int, gen: torch.Generator, config: OptimizeConfig) -> Params:
        return {"v": start_vector(d_model, gen, config.init, config.starting_norm)}

    def intervention(self, params: Params) -> Intervention:
        return Add(params["v"])

    def after_step(self, params: Params) -> None:
        """Nothing to project for an added vector."""


@dataclass(frozen=True, kw_only=True)
class ClampSteering:
    """Train ``v`` of `Clamp`: ``x - (v v^T/||v||^2) x + strength * v``
    (fixed strength)."""

    strength: float = 1.0
    name: str = "clamp"

    def __post_init__(self) -> None:
        if not is_number(self.strength) or not math.isfinite(self.strength):
            raise SpecError(
                f"ClampSteering strength must be a finite number, got {self.strength!r}; it is "
                "the value the component along v is clamped to, e.g. ClampSteering(strength=4.0)."
            )

    def parameters(self, d_model: int, gen: torch.Generator, config: OptimizeConfig) -> Params:
        return {"v": start_vector(d_model, gen, config.init, config.starting_norm)}

    def intervention(self, params: Params) -> Intervention:
        return Clamp(params["v"])

    def after_step(self, params: Params) -> None:
        """Nothing to project for a clamped vector."""


@dataclass(frozen=True, kw_only=True)
class AffineSteering:
    """Train ``L``, ``R`` (rank ``rank``) and ``v`` of `Affine`:
    ``x + L^T R x + v``; each row of ``L`` and ``R`` is capped at ``factor_norm_cap`` after
    every step."""

    rank: int = 1
    factor_norm_cap: float | None = None
    init_scale: float = 1e-3
    name: str = "affine"

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise SpecError(f"affine rank must be >= 1, got {self.rank}.")
        if self.factor_norm_cap is not None and not self.factor_norm_cap > 0:
            raise SpecError(f"factor_norm_cap must be > 0, got {self.factor_norm_cap}.")

    @property
    def strength(self) -> float:
        return 1.0

    def parameters(self, d_model: int, gen: torch.Generator, config: OptimizeConfig) -> Params:
        return {
            "v": start_vector(d_model, gen, config.init, config.starting_norm),
            "left": torch.randn(self.rank, d_model, generator=gen) * self.init_scale,
            "right": torch.randn(self.rank, d_model, generator=gen) * self.init_scale,
        }

    def intervention(self, params: Params) -> Intervention:
        return Affine(params["left"], params["right"], params["v"])

    def after_step(self, params: Params) -> None:
        if self.factor_norm_cap is None:
            return
        for name in ("left", "right"):
            rows = params[name]
            norms = rows.norm(dim=1, keepdim=True)
            rows.mul_(torch.clamp(self.factor_norm_cap / norms.clamp_min(1e-12), max=1.0))


@dataclass(frozen=True, kw_only=True)
class RankOneSteering:
    """Train unit ``u``, ``v`` of the rank-one map ``x + (u . x) v`` (an
    `Affine` with ``left = v``, ``right = u`` and no bias), renormalised
    after every step; no scale is learned. It starts from a random direction pair, so
    ``init``, ``constraints`` and ``output_constraint`` do not apply."""

    name: str = "rank_one"

    @property
    def strength(self) -> float:
        return 1.0

    def check(self, config: OptimizeConfig) -> None:
        """Refuse the settings a rank-one map cannot use (before any work)."""
        set_fields = {
            "init": config.init is not None,
            "constraints": bool(config.constraints),
            "output_constraint": config.output_constraint is not None,
        }
        bad = [name for name, is_set in set_fields.items() if is_set]
        if bad:
            raise SpecError(
                "RankOneSteering keeps ||u|| = ||v|| = 1 and starts from a random direction "
                f"pair, so {'/'.join(bad)} cannot be used; leave them at their defaults."
            )

    def parameters(self, d_model: int, gen: torch.Generator, config: OptimizeConfig) -> Params:
        self.check(config)
        u = torch.randn(d_model, generator=gen, dtype=torch.float32)
        v = torch.randn(d_model, generator=gen, dtype=torch.float32)
        return {"left": (v / v.norm())[None], "right": (u / u.norm())[None]}

    def intervention(self, params: Params) -> Intervention:
        return Affine(params["left"], params["right"])

    def after_step(self, params: Params) -> None:
        for p in params.values():
            p.div_(p.norm(dim=1, keepdim=True).clamp_min(1e-12))


KINDS = (AddSteering, ClampSteering, AffineSteering, RankOneSteering)
