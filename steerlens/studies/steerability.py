"""Per-prompt steerability: does adding more of a vector push every prompt the same way?

Following Tan et al. (2024), "Analyzing the generalization and reliability of steering
vectors": `steerability` applies one vector at several multipliers of its trained strength
and measures, per prompt, the target log-prob change
(`steerlens.studies.matrix.target_logprobs`). The least-squares slope of change against
multiplier is that prompt's steerability; prompts whose slope has the wrong sign (< 0: more
of the vector makes the promoted completions *less* likely) are anti-steerable. All
``multipliers x prompts`` rows run together, each under its own strength
(`steerlens.evaluation.completion_logprobs_many`).

A multiplier that breaks the model drags every target log-prob down, which would read as
"anti-steerable". So each multiplier's side-effect KL on neutral prompts is measured too (all
multipliers in shared batches, `steerlens.evaluation.next_token_kl`), and
slopes and verdicts use only the multipliers within the coherence budget (``max_kl``, and
every multiplier between it and 0 within it as well); the slopes are those of
`steerlens.studies.bench.metrics`, the benchmark's.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from steerlens.errors import InputError, SpecError
from steerlens.evaluation.many import next_token_kl
from steerlens.io.plain import prompt_label, short, table, to_plain
from steerlens.steering.steer import SteeringLike, as_plans
from steerlens.studies.bench import metrics
from steerlens.studies.bench.settings import NEUTRAL_PROMPTS
from steerlens.studies.grid import check_budget, check_neutral_prompts
from steerlens.studies.matrix import check_examples, target_logprobs
from steerlens.training.data import Datapoint

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

DEFAULT_STRENGTHS = (-2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0)
# The coherence budget: a multiplier whose mean next-token KL on neutral prompts exceeds one
# nat has changed what the model says where it should say the same, so its effects are not
# evidence about the vector's direction.
DEFAULT_MAX_KL = 1.0


@dataclass(frozen=True)
class SteerabilityResult:
    """Target log-prob change per prompt per multiplier; what `steerability` returns.

    Attributes:
        prompts: the examples' prompts.
        strengths: ``[strengths]``: the multipliers of the vector as trained.
        effects: ``[prompts, strengths]``: target log-prob change (nats).
        unsteered_logprob: ``[prompts]``: the unsteered target log-prob (nats).
        slopes: ``[prompts]``: least-squares slope of effect against multiplier (nats per
            unit multiplier) over the coherent multipliers (`coherent`); the prompt's
            steerability. NaN when fewer than two multipliers are coherent.
        kl: ``[strengths]``: the mean side-effect KL on neutral prompts at each multiplier
            (nats), or ``None`` when it was not measured.
        max_kl: the coherence budget on ``kl`` (nats).
        unit: ``"nats"``.
    """

    prompts: tuple[str, ...]
    strengths: Float[Tensor, " strengths"]
    effects: Float[Tensor, "prompts strengths"]
    unsteered_logprob: Float[Tensor, " prompts"]
    slopes: Float[Tensor, " prompts"]
    kl: Float[Tensor, " strengths"] | None = None
    max_kl: float = DEFAULT_MAX_KL
    unit: str = "nats"

    @property
    def coherent(self) -> Bool[Tensor, " strengths"]:
        """Per multiplier, whether it is in the coherent range (see `coherent_range`)."""
        return coherent_range(self.strengths, self.kl, self.max_kl)

    @property
    def coherent_strengths(self) -> tuple[float, ...]:
        """The multipliers the slopes and verdicts use."""
        return tuple(float(s) for s, ok in zip(self.strengths, self.coherent, strict=True) if ok)

    @property
    def has_verdict(self) -> bool:
        """Whether the coherence was measured and at least two multipliers are within it:
        only then is a prompt called anti-steerable."""
        return self.kl is not None and len(set(self.coherent_strengths)) >= 2

    @property
    def anti_steerable(self) -> float:
        """The fraction of prompts with a negative slope over the coherent multipliers (more of
        the vector makes the promoted completions less likely); NaN without a verdict
        (`has_verdict`)."""
        if not self.has_verdict:
            return math.nan
        return float((self.slopes < 0).double().mean())

    @property
    def anti_steerable_prompts(self) -> tuple[str, ...]:
        """The prompts with a negative slope over the coherent multipliers (none without a
        verdict)."""
        if not self.has_verdict:
            return ()
        return tuple(p for p, s in zip(self.prompts, self.slopes.tolist(), strict=True) if s < 0)

    @property
    def monotonic(self) -> tuple[bool, ...]:
        """Per prompt, whether its effect moves one way only over the coherent multipliers
        (`steerlens.studies.bench.metrics.monotonic`); all True with fewer than two."""
        keep = self.coherent
        if int(keep.sum()) < 2:
            return (True,) * len(self.prompts)
        flags = metrics.monotonic(self.strengths[keep].numpy(), self.effects[:, keep].numpy())
        return tuple(bool(f) for f in flags)

    def verdict(self) -> str:
        """What the measurements show, in words: the coherent range, what was left out of it
        and why, and the anti-steerable prompts within it.

        Example:
            >>> import torch
            >>> x = torch.tensor([-1.0, 0.0, 1.0, 2.0], dtype=torch.float64)
            >>> effects = torch.tensor([[-9.0, 0.0, 29.0, -80.0]], dtype=torch.float64)
            >>> res = SteerabilityResult.from_rows(
            ...     [{"prompt": "a", "strength": s, "effect": e, "kl": k}
            ...      for s, e, k in zip(x.tolist(), effects[0].tolist(), (0.2, 0.0, 0.6, 7.5))])
            >>> res.verdict()[:66]
            'Over multipliers -1 to 1 (side-effect KL <= 1 nat), 0 of 1 prompts'
            >>> res.verdict()[-21:]
            'Left out: 2 (KL 7.5).'
        """
        n = len(self.prompts)
        if self.kl is None:
            slopes = self.slopes[~self.slopes.isnan()]
            falling = int((slopes < 0).sum())
            return (
                f"Coherence was not measured, so no prompt is called anti-steerable: over every "
                f"multiplier, {falling} of {n} prompts have a negative slope. Measure with "
                "neutral_prompts to get a verdict."
            )
        kept = self.coherent_strengths
        left = [
            f"{float(s):g} (KL {float(k):.3g})"
            for s, k, ok in zip(self.strengths, self.kl, self.coherent, strict=True)
            if not ok
        ]
        left_out = f" Left out: {', '.join(left)}." if left else ""
        if not self.has_verdict:
            return (
                f"No verdict: only multiplier(s) {', '.join(f'{s:g}' for s in kept) or 'none'} "
                f"keep the side-effect KL within {self.max_kl:g} nat, too few to fit a slope; "
                f"beyond them the model's replies change where they should not.{left_out}"
            )
        wobbly = sum(not m for m in self.monotonic)
        shape = f"; {wobbly} of {n} rise and fall" if wobbly else ""
        return (
            f"Over multipliers {min(kept):g} to {max(kept):g} (side-effect KL <= "
            f"{self.max_kl:g} nat), {len(self.anti_steerable_prompts)} of {n} prompts "
            f"anti-steerable (slope < 0){shape}; mean slope {self.mean_slope:+.3g} "
            f"{self.unit} per unit.{left_out}"
        )

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
        """One plain dict per prompt x multiplier: prompt, strength, effect, slope, whether
        the prompt is anti-steerable, the multiplier's KL and whether it is coherent."""
        anti = set(self.anti_steerable_prompts)
        coherent = self.coherent.tolist()
        return [
            {
                "prompt": prompt,
                "strength": float(s),
                "effect": float(self.effects[p, k]),
                "slope": float(self.slopes[p]),
                "anti_steerable": self.prompts[p] in anti,
                "kl": None if self.kl is None else float(self.kl[k]),
                "coherent": bool(coherent[k]),
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
        max_kl: float = DEFAULT_MAX_KL,
    ) -> SteerabilityResult:
        """The result back from its rows (`to_rows`, e.g. read from a study folder):
        prompt-major, every prompt with the same multipliers in the same order. The slopes are
        fitted again from the effects over the coherent multipliers (the first prompt's rows'
        ``"kl"``, when they have one); ``unsteered_logprob`` is NaN unless given.

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
        kls = [float(r["kl"]) for r in by_prompt[0] if r.get("kl") is not None]
        kl = None
        if len(kls) == len(strengths):  # a folder from before the KL has none
            kl = torch.tensor(kls, dtype=torch.float64)
        budget = check_budget(max_kl=max_kl)["max_kl"]
        return cls(
            prompts=tuple(prompts),
            strengths=x,
            effects=effects,
            unsteered_logprob=unsteered,
            slopes=_slopes(x, effects, coherent_range(x, kl, budget)),
            kl=kl,
            max_kl=budget,
        )

    def to_pandas(self) -> pd.DataFrame:
        """`to_rows` as a ``pandas.DataFrame``."""
        import pandas as pd

        return pd.DataFrame(self.to_rows())

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, floats, strings) for saving as JSON."""
        return to_plain(
            self,
            include=[
                "coherent_strengths",
                "anti_steerable",
                "mean_slope",
                "slope_std",
                "slope_iqr",
            ],
        ) | {"verdict": self.verdict()}

    def plot(self) -> go.Figure:
        """Each prompt's effect against multiplier (thin; blue, or red when anti-steerable)
        and the mean over prompts (thick); multipliers outside the coherent range are shaded
        grey and named. The title is the verdict's first clause."""
        import plotly.graph_objects as go

        from steerlens.analysis.plots import style_figure

        x = self.strengths.tolist()
        anti_prompts = set(self.anti_steerable_prompts)
        fig = go.Figure()
        shown: set[bool] = set()
        for p, prompt in enumerate(self.prompts):
            anti = prompt in anti_prompts
            group = "anti-steerable" if anti else "prompt"
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
        for s, ok in zip(x, self.coherent.tolist(), strict=True):
            if not ok:
                fig.add_vrect(
                    x0=s - 0.25,
                    x1=s + 0.25,
                    fillcolor="#999",
                    opacity=0.2,
                    line_width=0,
                    annotation_text="KL over budget",
                    annotation_position="top",
                )
        return style_figure(
            fig, self._headline(), "multiplier", f"target log-prob change ({self.unit})"
        )

    def _headline(self) -> str:
        if self.kl is None:
            return "Steerability (coherence not measured: no verdict)"
        if not self.has_verdict:
            return f"Steerability: no verdict (fewer than 2 multipliers with KL <= {self.max_kl:g})"
        kept = self.coherent_strengths
        return (
            f"Steerability: {len(self.anti_steerable_prompts)} of {len(self.prompts)} prompts "
            f"anti-steerable over multipliers {min(kept):g} to {max(kept):g}"
        )

    def __repr__(self) -> str:
        head = (
            f"SteerabilityResult({len(self.prompts)} prompts x {len(self.strengths)} "
            f"multipliers {self.strengths.min():g}..{self.strengths.max():g}; mean slope "
            f"{self.mean_slope:+.4f} {self.unit}/unit, std {self.slope_std:.4f}, IQR "
            f"{self.slope_iqr:.4f}; anti-steerable {self.anti_steerable:.0%})\n"
            f"{self.verdict()}\n"
        )
        order = sorted(range(len(self.prompts)), key=lambda p: float(self.slopes[p]))
        anti = set(self.anti_steerable_prompts)
        rows = [
            [short(prompt_label(self.prompts[p]), 40), f"{float(self.slopes[p]):+.4f}"]
            + (["anti-steerable"] if self.prompts[p] in anti else [""])
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


def coherent_range(
    strengths: Float[Tensor, " strengths"],
    kl: Float[Tensor, " strengths"] | None,
    max_kl: float = DEFAULT_MAX_KL,
) -> Bool[Tensor, " strengths"]:
    """Per multiplier, whether it and every multiplier between it and 0 keep the side-effect
    KL within ``max_kl`` (a NaN KL is outside); all True when ``kl`` is ``None``.

    Example:
        >>> x = torch.tensor([-1.0, 0.0, 1.0, 2.0, 3.0])
        >>> coherent_range(x, torch.tensor([0.5, 0.0, 0.3, 4.0, 0.9])).tolist()
        [True, True, True, False, False]
    """
    if kl is None:
        return torch.ones(len(strengths), dtype=torch.bool)
    within = kl <= max_kl
    s = strengths.tolist()
    return torch.tensor(
        [
            all(bool(within[j]) for j, t in enumerate(s) if t * x >= 0 and abs(t) <= abs(x))
            for x in s
        ],
        dtype=torch.bool,
    )


def _slopes(
    strengths: Float[Tensor, " strengths"],
    effects: Float[Tensor, "prompts strengths"],
    keep: Bool[Tensor, " strengths"],
) -> Float[Tensor, " prompts"]:
    """The least-squares slope of each row of ``effects`` against ``strengths`` over the
    ``keep`` multipliers (NaN when fewer than two distinct are kept)."""
    if len(set(strengths[keep].tolist())) < 2:
        return torch.full((effects.shape[0],), torch.nan, dtype=torch.float64)
    fitted = metrics.item_slopes(strengths[keep].numpy(), effects[:, keep].numpy())
    return torch.from_numpy(fitted)


def steerability(
    model: Any,
    vector: SteeringLike | Sequence[SteeringLike],
    examples: Sequence[Datapoint],
    *,
    strengths: Sequence[float] = DEFAULT_STRENGTHS,
    neutral_prompts: Sequence[str] | None = NEUTRAL_PROMPTS,
    max_kl: float = DEFAULT_MAX_KL,
    batch_size: int = 32,
    progress: bool | None = None,
) -> SteerabilityResult:
    """How reliably one vector steers each prompt: the target log-prob change at several
    multipliers, its per-prompt slope over the multipliers where the model stays coherent, and
    the prompts it steers the wrong way there.

    Args:
        model: a TransformerLens model.
        vector: a ``SteeringVector`` or a `steerlens.Steering` plan (or a list of these); the
            multipliers scale it as trained (a plan's strength times each multiplier).
        examples: datapoints with promote completions (prompts used as written).
        strengths: the multipliers (at least two different finite numbers).
        neutral_prompts: prompts (used as written) on which each multiplier's side-effect KL
            is measured (default: a few everyday questions); ``None`` measures none, and then
            no prompt is called anti-steerable.
        max_kl: the coherence budget: multipliers whose mean KL exceeds it (nats), and those
            beyond them from 0, are left out of the slopes.
        batch_size: rows (each a multiplier x prompt x completion) per forward pass.
        progress: a progress bar when there is more than one batch.

    Returns:
        A `SteerabilityResult`: ``.slopes``, ``.anti_steerable``, ``.verdict()``,
        ``.slope_std``, ``.slope_iqr``, ``.plot()``.

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
        >>> res.coherent_strengths
        (-1.0, 0.0, 1.0)
    """
    plans = as_plans(vector)
    if not plans:
        raise SpecError("vector is None; pass a SteeringVector or a steerlens.Steering plan.")
    for plan in plans:
        plan.applied(model)  # wrong model / layer / size: refused before any work
    values = _check_strengths(strengths)
    items = [dp.for_model(model) for dp in check_examples(examples)]
    budget = check_budget(max_kl=max_kl)["max_kl"]
    neutral = check_neutral_prompts(neutral_prompts)
    steerings = [[plan.scaled(m) for plan in plans] for m in values]
    scores = target_logprobs(model, steerings, items, batch_size=batch_size, progress=progress)
    effects = scores.changes.T.contiguous()
    x = torch.tensor(values, dtype=torch.float64)
    kl = None
    if neutral is not None:
        kl = next_token_kl(model, neutral, steerings, batch_size=batch_size).double().mean(dim=1)
    return SteerabilityResult(
        prompts=tuple(dp.prompt for dp in items),
        strengths=x,
        effects=effects,
        unsteered_logprob=scores.unsteered,
        slopes=_slopes(x, effects, coherent_range(x, kl, budget)),
        kl=kl,
        max_kl=budget,
    )


__all__ = [
    "DEFAULT_MAX_KL",
    "DEFAULT_STRENGTHS",
    "SteerabilityResult",
    "coherent_range",
    "steerability",
]
