"""`OptimizerSettings`: the optimizer's settings as flat, JSON- and TOML-ready data.

`OptimizeConfig` holds objects (an `Objective`, ``NormCap`` constraints, a start tensor);
`OptimizerSettings` holds the few numbers a study spec, the benchmark and the command line
choose, and builds the `OptimizeConfig` from them (`OptimizerSettings.config`). Its fields
carry the help text the command line shows, and `OptimizerSettings.recipe` is the documented
recipe for the embedded SmolLM2-135M-Instruct (the CLI's and the demo's defaults).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from steerlens.errors import SpecError, check_keywords
from steerlens.training.config import OptimizeConfig
from steerlens.training.constraints import NormCap
from steerlens.training.kinds import is_number
from steerlens.training.objectives import Objective

_CONFIG = OptimizeConfig()
_OBJECTIVE = Objective()

RECIPE_LAYER = 8
"""The layer of the embedded SmolLM2-135M-Instruct the recipe (`OptimizerSettings.recipe`)
was tuned at: the CLI's ``--layer`` default and the demo's layer."""


def _setting(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True, kw_only=True)
class OptimizerSettings:
    """The flat settings an `OptimizeConfig` is built from (`config`); defaults follow
    `OptimizeConfig`'s (the paper's).

    Attributes:
        lr, max_steps, starting_norm: as in `OptimizeConfig`.
        norm_cap: ``NormCap(norm_cap)`` after each step (``None``: no cap).
        coldness, suppression_loss, length_normalize: the `Objective`'s ``coldness``,
            ``suppression`` and ``length_normalize``.

    Example:
        >>> OptimizerSettings(lr=0.1, max_steps=3).config(seed=2).seed
        2
        >>> OptimizerSettings.recipe().lr
        0.1
    """

    lr: float = _setting(_CONFIG.lr, "Adam learning rate")
    max_steps: int = _setting(_CONFIG.max_steps, "Adam steps")
    starting_norm: float = _setting(_CONFIG.starting_norm, "norm of the random start vector")
    norm_cap: float | None = _setting(None, "the most the vector's norm may grow to")
    coldness: float = _setting(_OBJECTIVE.coldness, "the objective's coldness")
    suppression_loss: str = _setting(_OBJECTIVE.suppression, "the objective's suppression loss")
    length_normalize: bool = _setting(
        _OBJECTIVE.length_normalize, "average each completion's loss over its tokens"
    )

    def __post_init__(self) -> None:
        # Numbers are stored as floats, so a spec's ``lr = 1`` and ``lr = 1.0`` are one spec.
        for name in ("lr", "starting_norm", "coldness", "norm_cap"):
            value = getattr(self, name)
            if value is None and name == "norm_cap":
                continue
            if not is_number(value):
                raise SpecError(f"optimizer.{name} must be a number, got {value!r}.")
            object.__setattr__(self, name, float(value))
        if not isinstance(self.length_normalize, bool):
            raise SpecError(
                f"optimizer.length_normalize must be true or false, got {self.length_normalize!r}."
            )
        self.config()  # OptimizeConfig, Objective and NormCap check the values

    @classmethod
    def recipe(cls) -> OptimizerSettings:
        """The documented recipe (README, docs/howto.md), tuned on the embedded
        SmolLM2-135M-Instruct at layer `RECIPE_LAYER`: a faster learning rate than the
        paper's, fewer steps, and a norm cap that guards rather than shapes the vector.

        Example:
            >>> OptimizerSettings.recipe()
            OptimizerSettings(lr=0.1, max_steps=40, ..., norm_cap=40.0, ...)
        """
        return cls(lr=0.1, max_steps=40, norm_cap=40.0)

    @classmethod
    def help(cls, name: str) -> str:
        """One field's help text (the command line's option help).

        Example:
            >>> OptimizerSettings.help("lr")
            'Adam learning rate'
        """
        for f in fields(cls):
            if f.name == name:
                return str(f.metadata["help"])
        raise SpecError(
            f"OptimizerSettings has no setting {name!r}; the settings are: "
            f"{', '.join(f.name for f in fields(cls))}."
        )

    def config(self, *, seed: int = 0, progress: bool | None = None) -> OptimizeConfig:
        """The `OptimizeConfig` these settings give, with ``seed`` and ``progress`` (as in
        `OptimizeConfig`)."""
        return OptimizeConfig(
            lr=self.lr,
            max_steps=self.max_steps,
            seed=seed,
            starting_norm=self.starting_norm,
            constraints=() if self.norm_cap is None else (NormCap(self.norm_cap),),
            objective=Objective(
                coldness=self.coldness,
                suppression=self.suppression_loss,  # type: ignore[arg-type]
                length_normalize=self.length_normalize,
            ),
            progress=progress,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data (numbers, a string, a bool; ``norm_cap`` ``None`` when uncapped).

        Example:
            >>> s = OptimizerSettings(lr=0.2, norm_cap=8.0)
            >>> OptimizerSettings.from_dict(s.to_dict()) == s
            True
        """
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "optimizer") -> OptimizerSettings:
        """The settings in ``data`` (`to_dict`'s, or a spec's ``[optimizer]`` table); a
        missing or ``None`` key keeps its default.

        Raises:
            SpecError: ``data`` is not a table, or has an unknown key (``where`` names it in
                the message) or a bad value.
        """
        if not isinstance(data, Mapping):
            raise SpecError(
                f"{where} must be a table of settings ([{where}] in a spec file), got {data!r:.60}."
            )
        given = {k: v for k, v in data.items() if v is not None}
        check_keywords(given, [f.name for f in fields(cls)], where=where)
        return cls(**given)


__all__ = ["RECIPE_LAYER", "OptimizerSettings"]
