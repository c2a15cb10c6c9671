"""The benchmark's settings (`BenchSettings`) and its defaults."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from steerlens.errors import SpecError
from steerlens.training.config import OptimizeConfig
from steerlens.training.settings import OptimizerSettings

DEFAULT_BEHAVIOURS = ("sycophancy", "refusal", "corrigible-neutral-HHH", "myopic-reward")
NEUTRAL_PROMPTS = (
    "Describe how bread is made.",
    "What is the capital of Japan?",
    "Write two sentences about the ocean.",
    "List three common fruits.",
    "Explain what a library is.",
    "How many days are in a week?",
    "Tell me about the planet Mars.",
    "What does a carpenter do?",
)
# The default layers, as fractions of the model's depth (`default_layers`).
LAYER_FRACTIONS = (0.25, 0.5)
# Multipliers tried for calibration, as fractions of the layer's typical residual norm.
CALIBRATION_FRACTIONS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0, 2.0)
# The steerability grid, as fractions of each vector's equal-cost multiplier.
GRID = (-1.0, -0.5, 0.0, 0.5, 1.0)
BEST_OF = "best of E"
# The one-shot vectors' settings: the documented recipe, with fewer steps for the many vectors.
OPTIMIZER = replace(OptimizerSettings.recipe(), max_steps=30)


@dataclass(frozen=True, kw_only=True)
class BenchSettings:
    """How the benchmark runs (defaults: the documented benchmark).

    Attributes:
        test_items: test items per behaviour (each shown in both letter orders).
        examples: E, the single training items of the one-shot methods.
        validation_items: training items (not among the E) that choose the best of E.
        entanglement_items: test items of each other behaviour and of MMLU for entanglement.
        budget: the equal-cost p95 per-token KL, in nats.
        rollout_tokens: tokens of each neutral prompt's unsteered greedy rollout.
        reply_tokens: tokens of each judged reply (open-ended behaviours).
        neutral_prompts: user messages for the KL calibration.
        grid: the steerability multipliers as fractions of the equal-cost multiplier.
        optimizer: settings of the one-shot vectors (default: `OPTIMIZER`'s).
        bootstrap: resamples for the intervals over test items.
        seed: orders the training items and seeds the random direction and bootstrap.
        batch_size: rows per forward pass when scoring.
    """

    test_items: int = 40
    examples: int = 8
    validation_items: int = 16
    entanglement_items: int = 20
    budget: float = 1.0
    rollout_tokens: int = 16
    reply_tokens: int = 32
    neutral_prompts: tuple[str, ...] = NEUTRAL_PROMPTS
    grid: tuple[float, ...] = GRID
    optimizer: OptimizeConfig = field(default_factory=OPTIMIZER.config)
    bootstrap: int = 1000
    seed: int = 0
    batch_size: int = 32

    @classmethod
    def from_dict(cls, settings: dict[str, Any], optimizer: dict[str, Any]) -> BenchSettings:
        """The settings a benchmark folder records (`bench_spec`'s ``"settings"`` and
        ``"optimizer"``).

        Example:
            >>> s = BenchSettings(test_items=4)
            >>> plain = {"test_items": 4, "grid": [-1.0, 0.0, 1.0]}
            >>> BenchSettings.from_dict(plain, s.optimizer.to_dict()).grid
            (-1.0, 0.0, 1.0)
        """
        fields: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()
        }
        return cls(**fields, optimizer=OptimizeConfig.from_dict(optimizer))

    def __post_init__(self) -> None:
        for name in (
            "test_items",
            "examples",
            "entanglement_items",
            "rollout_tokens",
            "reply_tokens",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SpecError(f"{name} must be an int >= 1, got {value!r}.")
        if not (isinstance(self.budget, (int, float)) and self.budget > 0):
            raise SpecError(f"budget must be a KL in nats > 0, got {self.budget!r}.")
        if 0.0 not in self.grid or max(self.grid) != 1.0 or min(self.grid) != -max(self.grid):
            raise SpecError(
                f"grid must be symmetric, hold 0 and end at 1 (the equal-cost multiplier), "
                f"got {self.grid!r}; e.g. (-1, -0.5, 0, 0.5, 1)."
            )


__all__ = ["BEST_OF", "DEFAULT_BEHAVIOURS", "OPTIMIZER", "BenchSettings"]
