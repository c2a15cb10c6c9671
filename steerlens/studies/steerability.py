"""Per-prompt steerability: does adding more of a vector push every prompt the same way?

Following Tan et al. (2024), "Analyzing the generalization and reliability of steering
vectors": `steerability` applies one vector at several multipliers of its trained strength
and measures, per prompt, the target log-prob change
(`steerlens.studies.matrix.target_logprobs`). The least-squares slope of change against
multiplier is that prompt's steerability; prompts whose slope has the wrong sign (< 0: more
of the vector makes the promoted completions *less* likely) are anti-steerable. All
``multipliers x prompts`` rows run together, each under its own strength
(`steerlens.steering.steer.steer_rows`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor

from steerlens.errors import InputError, SpecError
from steerlens.io.plain import prompt_label, short, table, to_plain
from steerlens.steering.steer import SteeringLike, as_plans
from steerlens.studies.matrix import check_examples, target_logprobs
from steerlens.training.data import Datapoint

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

DEFAULT_STRENGTHS = (-2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0)


@dataclass(frozen=True)
class SteerabilityResult:
    """Target log-prob change per prompt per multiplier; what `steerability` returns.

    Attributes:
        prompts: the examples' prompts.
        strengths: ``[strengths]``: the multipliers of the vector as trained.
        effects: ``[prompts, strengths]``: target log-prob change (nats).
        unsteered_logprob: ``[prompts]``: the unsteered target log-prob (nats).
        slopes: ``[prompts]``: least-squares slope of effect against multiplier (nats per
            unit multiplier); the prompt's steerability.
        unit: ``"nats"``.
    """

    prompts: tuple[str, ...]
    strengths: Float[Tensor, " strengths"]
    effects: Float[Tensor, "prompts strengths"]
    unsteered_logprob: Float[Tensor, " prompts"]
    slopes: Float[Tensor, " prompts"]
    unit: str = "nats"

    @property
    def anti_steerable(self) -> float:
        """The fraction of prompts with a negative slope (more of the vector makes the
        promoted completions less likely)."""
        return float((self.slopes < 0).double().mean())

    @property
    def anti_steerable_prompts(self) -> tuple[str, ...]:
        """The prompts with a negative slope."""
        return tuple(p for p, s in zip(self.prompts, self.slopes.tolist(), strict=True) if s < 0)

    @property
    def mean_slope(self) -> float:
        """The mean of the per-prompt slopes."""
        return float(self.slopes.mean())

    @property
    def slope_std(self) -> float:
        """The (population) standard deviation of the per-prompt slopes."""
        return float(self.slopes.std(correction=0))

    @property
    def slope_iqr(self) -> float:
        """The interquartile range of the per-prompt slopes."""
        q = torch.quantile(self.slopes.double(), torch.tensor([0.25, 0.75], dtype=torch.float64))
        return float(q[1] - q[0])

    def to_rows(self) -> list[dict[str, Any]]:
        """One plain dict per prompt x multiplier: prompt, strength, effect, slope."""
        return [
            {
                "prompt": prompt,
                "strength": float(s),
                "effect": float(self.effects[p, k]),
                "slope": float(self.slopes[p]),
                "anti_steerable": bool(self.slopes[p] < 0),
            }
            for p, prompt in enumerate(self.prompts)
            for k, s in enumerate(self.strengths.tolist())
        ]

    @classmethod
    def from_rows(
        cls,
        rows: Sequence[Mapping[str, Any]],
        *,
        unsteered_logprob: Sequence[float] | None = None,
    ) -> SteerabilityResult:
        """The result back from its rows (`to_rows`, e.g. read from a study folder):
        prompt-major, every prompt with the same multipliers in the same order. The slopes are
        fitted again from the effects; ``unsteered_logprob`` is NaN unless given.

        Example:
            >>> rows = [{"prompt": "a", "strength": s, "effect": 2 * s} for s in (0, 1)]
            >>> SteerabilityResult.from_rows(rows).slopes.tolist()
            [2.0]
        """
        by_prompt: list[list[Mapping[str, Any]]] = []
        for row in rows:
            missing = [k for k in ("prompt", "strength", "effect") if k not in row]
            if missing:
                raise InputError(
                    f"a steerability row lacks {missing}; pass to_rows() dicts "
                    "(prompt, strength, effect)."
                )
            # A prompt's rows end where the prompt (or its index) changes or a multiplier repeats.
            last = by_prompt[-1] if by_prompt else []
            if (
                not last
                or _key(row) != _key(last[0])
                or any(float(r["strength"]) == float(row["strength"]) for r in last)
            ):
                by_prompt.append([])
            by_prompt[-1].append(row)
        if not by_prompt:
            raise InputError("no steerability rows; pass the rows of at least one prompt.")
        prompts = [prompt_rows[0]["prompt"] for prompt_rows in by_prompt]
        strengths = [float(r["strength"]) for r in by_prompt[0]]
        for p, prompt_rows in enumerate(by_prompt):
            if [float(r["strength"]) for r in prompt_rows] != strengths:
                raise InputError(
                    f"prompt {p} ({short(prompt_label(prompts[p]), 40)!r}) has other multipliers "
                    f"than prompt 0 ({strengths}); every prompt needs a row per multiplier, in "
                    "the same order (sort by prompt, then multiplier)."
                )
        x = torch.tensor(strengths, dtype=torch.float64)
        effects = torch.tensor(
            [[float(r["effect"]) for r in prompt_rows] for prompt_rows in by_prompt],
            dtype=torch.float64,
        )
        unsteered = (
            torch.full((len(prompts),), torch.nan, dtype=torch.float64)
            if unsteered_logprob is None
            else torch.tensor([float(u) for u in unsteered_logprob], dtype=torch.float64)
        )
        return cls(
            prompts=tuple(prompts),
            strengths=x,
            effects=effects,
            unsteered_logprob=unsteered,
            slopes=_slopes(x, effects),
        )

    def to_pandas(self) -> pd.DataFrame:
        """`to_rows` as a ``pandas.DataFrame``."""
        import pandas as pd

        return pd.DataFrame(self.to_rows())

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, floats, strings) for saving as JSON."""
        return to_plain(self, include=["anti_steerable", "mean_slope", "slope_std", "slope_iqr"])

    def plot(self) -> go.Figure:
        """Each prompt's effect against multiplier (thin; blue when its slope is positive, red
        when anti-steerable) and the mean over prompts (thick)."""
        import plotly.graph_objects as go

        from steerlens.analysis.plots import style_figure

        x = self.strengths.tolist()
        fig = go.Figure()
        shown: set[bool] = set()
        for p, prompt in enumerate(self.prompts):
            anti = bool(self.slopes[p] < 0)
            group = "anti-steerable" if anti else "steerable"
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=self.effects[p].tolist(),
                    mode="lines",
                    line={"width": 1, "color": "#d62728" if anti else "#1f77b4"},
                    opacity=0.6,
                    name=group,
                    legendgroup=group,
                    showlegend=anti not in shown,
                    hovertext=(
                        f"{short(prompt_label(prompt), 40)}<br>slope {float(self.slopes[p]):+.3f}"
                    ),
                    hoverinfo="text+x+y",
                )
            )
            shown.add(anti)
        fig.add_trace(
            go.Scatter(
                x=x,
                y=self.effects.mean(dim=0).tolist(),
                mode="lines+markers",
                line={"width": 4, "color": "black"},
                name="mean",
            )
        )
        title = (
            f"Steerability: {self.anti_steerable:.0%} of {len(self.prompts)} prompts anti-steerable"
        )
        return style_figure(fig, title, "multiplier", f"target log-prob change ({self.unit})")

    def __repr__(self) -> str:
        head = (
            f"SteerabilityResult({len(self.prompts)} prompts x {len(self.strengths)} "
            f"multipliers {self.strengths.min():g}..{self.strengths.max():g}; mean slope "
            f"{self.mean_slope:+.4f} {self.unit}/unit, std {self.slope_std:.4f}, IQR "
            f"{self.slope_iqr:.4f}; anti-steerable {self.anti_steerable:.0%})\n"
        )
        order = sorted(range(len(self.prompts)), key=lambda p: float(self.slopes[p]))
        rows = [
            [short(prompt_label(self.prompts[p]), 40), f"{float(self.slopes[p]):+.4f}"]
            + (["anti-steerable"] if self.slopes[p] < 0 else [""])
            for p in order
        ]
        return head + table(["prompt", f"slope ({self.unit}/unit)", ""], rows)


def _key(row: Mapping[str, Any]) -> Any:
    return row.get("prompt_index", row["prompt"])


def _check_strengths(strengths: Sequence[float]) -> list[float]:
    if isinstance(strengths, (str, bytes)) or not isinstance(strengths, Sequence):
        raise SpecError(
            f"strengths must be a list of multipliers, got {type(strengths).__name__}; e.g. "
            "strengths=(-2, -1, 0, 1, 2)."
        )
    values: list[float] = []
    for s in strengths:
        if isinstance(s, bool) or not isinstance(s, numbers.Real) or not math.isfinite(s):
            raise SpecError(
                f"every strength must be a finite number, got {s!r} in {list(strengths)!r}."
            )
        values.append(float(s))
    if len(set(values)) < 2:
        raise SpecError(
            f"strengths {values!r} need at least two different multipliers to fit a slope; "
            "e.g. strengths=(-2, -1, 0, 1, 2)."
        )
    return values


def _slopes(
    strengths: Float[Tensor, " strengths"], effects: Float[Tensor, "prompts strengths"]
) -> Float[Tensor, " prompts"]:
    """The least-squares slope of each row of ``effects`` against ``strengths``."""
    x = strengths - strengths.mean()
    y = effects - effects.mean(dim=1, keepdim=True)
    return (y @ x) / (x @ x)


def steerability(
    model: Any,
    vector: SteeringLike | Sequence[SteeringLike],
    examples: Sequence[Datapoint],
    *,
    strengths: Sequence[float] = DEFAULT_STRENGTHS,
    batch_size: int = 32,
    progress: bool | None = None,
) -> SteerabilityResult:
    """How reliably one vector steers each prompt: the target log-prob change at several
    multipliers, and its per-prompt slope.

    Args:
        model: a TransformerLens model.
        vector: a ``SteeringVector`` or a `steerlens.Steering` plan (or a list of these); the
            multipliers scale it as trained (a plan's strength times each multiplier).
        examples: datapoints with promote completions (prompts used as written).
        strengths: the multipliers (at least two different finite numbers).
        batch_size: rows (each a multiplier x prompt x completion) per forward pass.
        progress: a progress bar when there is more than one batch.

    Returns:
        A `SteerabilityResult`: ``.slopes``, ``.anti_steerable``, ``.slope_std``,
        ``.slope_iqr``, ``.plot()``.

    Example:
        >>> import torch
        >>> from steerlens import Datapoint, SteeringVector
        >>> from steerlens.testing import tiny_model
        >>> model = tiny_model()
        >>> v = SteeringVector.from_tensor(torch.randn(64), layer=1, model=model)
        >>> examples = [Datapoint("the cat", promote=" sat"), Datapoint("a dog", promote=" ran")]
        >>> res = steerability(model, v, examples, strengths=(-1, 0, 1))
        >>> tuple(res.effects.shape), float(res.effects[0, 1])
        ((2, 3), 0.0)
        >>> 0.0 <= res.anti_steerable <= 1.0
        True
    """
    plans = as_plans(vector)
    if not plans:
        raise SpecError("vector is None; pass a SteeringVector or a steerlens.Steering plan.")
    for plan in plans:
        plan.applied(model)  # wrong model / layer / size: refused before any work
    values = _check_strengths(strengths)
    items = [dp.for_model(model) for dp in check_examples(examples)]
    steerings = [[plan.scaled(m) for plan in plans] for m in values]
    scores = target_logprobs(model, steerings, items, batch_size=batch_size, progress=progress)
    effects = scores.changes.T.contiguous()
    x = torch.tensor(values, dtype=torch.float64)
    return SteerabilityResult(
        prompts=tuple(dp.prompt for dp in items),
        strengths=x,
        effects=effects,
        unsteered_logprob=scores.unsteered,
        slopes=_slopes(x, effects),
    )


__all__ = ["DEFAULT_STRENGTHS", "SteerabilityResult", "steerability"]
