"""Compare a one-shot optimized vector with the CAA (difference-of-means) vector of a contrastive
prompt set, layer by layer (METHOD.md, "Skyline" and "Evaluation framework"):

- **cosine similarity** between the two vectors;
- **effect per unit norm** on the objective of ``datapoints``: each vector is rescaled to norm
  ``effect_norm`` (default 1: unit norm), added at the layer, and the change of the objective's
  total loss from the unsteered loss is divided by ``effect_norm``. Negative means the vector
  lowers the loss (makes the promoted completions likelier). Rescaling compares *directions*
  at one common norm, independent of how long each vector happens to be;
- **dot-product classifier ROC-AUC**: each prompt is scored by the mean dot product of its
  activations (over its tokens) with the vector, and the ROC-AUC separates the positive from
  the negative prompts (0.5: chance; 1: positives always score higher);
- **steered generations** side by side (unsteered, one-shot, CAA) on ``generation_prompts``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import plotly.graph_objects as go
from jaxtyping import Float
from plotly.subplots import make_subplots
from torch import Tensor

from steerlens import runtime
from steerlens.analysis.geometry import as_direction, cosine_matrix
from steerlens.analysis.plots import style_figure
from steerlens.baselines import Position, PromptItem, collect_activations
from steerlens.baselines import diff_of_means as _diff_of_means
from steerlens.errors import LayerError, NonFiniteError, SpecError, SteerlensError
from steerlens.io.plain import to_plain
from steerlens.steering.generate import generate
from steerlens.steering.steer import Steering
from steerlens.steering.vector import SteeringVector
from steerlens.training.data import Datapoint
from steerlens.training.objectives import Objective
from steerlens.training.optimize import ObjectiveScorer, evaluate_objective

ScoresLike = Sequence[float] | np.ndarray | Tensor
_NAMES = ("one_shot", "caa")


def roc_auc(scores_pos: ScoresLike, scores_neg: ScoresLike) -> float:
    """Exact ROC-AUC of scores where positives should score higher: the Mann-Whitney U
    statistic over ``n_pos * n_neg``, i.e. the probability that a random positive outscores a
    random negative, ties counting one half.

    Example:
        >>> roc_auc([3, 2], [1, 0]), roc_auc([1, 2], [1, 2]), roc_auc([0], [1])
        (1.0, 0.5, 0.0)
    """
    pos, neg = _scores(scores_pos, "positive"), _scores(scores_neg, "negative")
    neg = np.sort(neg)
    below = np.searchsorted(neg, pos, side="left")
    not_above = np.searchsorted(neg, pos, side="right")
    wins = int(below.sum())
    ties = int((not_above - below).sum())
    return (wins + 0.5 * ties) / (pos.size * neg.size)


def _scores(scores: ScoresLike, name: str) -> np.ndarray:
    if isinstance(scores, Tensor):
        scores = scores.detach().double().cpu().numpy()
    x = np.asarray(scores, dtype=np.float64)
    if x.ndim != 1:
        raise SteerlensError(f"{name} scores must be 1-D, got shape {x.shape}.")
    if x.size == 0:
        raise SteerlensError(
            f"the {name} scores are empty; ROC-AUC needs at least one score of each class "
            "(positive and negative)."
        )
    if not np.isfinite(x).all():
        raise NonFiniteError(f"the {name} scores contain NaN/inf.")
    return x


@dataclass(frozen=True)
class ComparisonResult:
    """What `compare_with_caa` returns; every array has one entry per layer.

    Attributes:
        layers: the layers compared.
        cosine: cosine similarity of the one-shot and CAA vectors.
        norms: ``"one_shot"``/``"caa"`` -> each vector's norm.
        auc: ``"one_shot"``/``"caa"`` -> dot-product classifier ROC-AUC (positives vs
            negatives), on the held-out sets when given, else on the CAA prompts themselves.
        effect_per_unit_norm: ``"one_shot"``/``"caa"`` -> objective loss change (in ``unit``)
            when the vector, rescaled to norm ``effect_norm``, is added, divided by
            ``effect_norm``; empty without datapoints.
        unsteered_loss: the objective's unsteered total loss (``None`` without datapoints).
        effect_norm: the common norm the vectors were rescaled to for the effect.
        unit: the loss unit.
        caa: the CAA vector (one direction per layer).
        score_position: how prompts were reduced for the classifier (``"mean"``: over tokens).
        generations: layer -> rows ``{"prompt", "unsteered", "one_shot", "caa"}``.
        auc_on: ``"held-out"`` (``held_out=`` sets no vector was built from) or
            ``"in-sample"`` (the CAA prompts, which flatters CAA).
    """

    layers: list[int]
    cosine: Float[np.ndarray, " layers"]
    norms: dict[str, Float[np.ndarray, " layers"]]
    auc: dict[str, Float[np.ndarray, " layers"]]
    effect_per_unit_norm: dict[str, Float[np.ndarray, " layers"]]
    unsteered_loss: float | None
    effect_norm: float
    unit: str
    caa: SteeringVector
    score_position: str
    generations: dict[int, list[dict[str, str]]] = field(default_factory=dict)
    auc_on: str = "in-sample"

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready); ``caa`` is the CAA vector's metadata and norm."""
        return to_plain(self)

    def plot(self) -> go.Figure:
        """Cosine similarity, classifier ROC-AUC and (with datapoints) effect per unit norm
        against the layer, one panel each."""
        panels = [
            ("cosine(one-shot, CAA)", "cosine similarity"),
            (f"dot-product classifier ({self.auc_on})", "ROC-AUC (0.5 = chance)"),
        ]
        if self.effect_per_unit_norm:
            panels.append(("effect on the objective", f"Δ loss per unit norm ({self.unit})"))
        fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[p[0] for p in panels])
        x = list(self.layers)
        colors = {"one_shot": "#636efa", "caa": "#ef553b"}
        labels = {"one_shot": "one-shot", "caa": "CAA"}
        fig.add_trace(
            go.Scatter(x=x, y=self.cosine.tolist(), mode="lines+markers", name="cosine"), 1, 1
        )
        for col, series in ((2, self.auc), (3, self.effect_per_unit_norm)):
            for name in _NAMES if series else ():
                fig.add_trace(
                    go.Scatter(
                        x=x,
                        y=series[name].tolist(),
                        mode="lines+markers",
                        name=f"{labels[name]} ({'AUC' if col == 2 else 'effect'})",
                        line={"color": colors[name], "dash": "solid" if col == 2 else "dot"},
                    ),
                    1,
                    col,
                )
        fig = style_figure(fig, "One-shot vector vs CAA, by layer", "layer", panels[0][1])
        for col, (_, ylabel) in enumerate(panels, start=1):
            fig.update_xaxes(title_text="layer", tickmode="array", tickvals=x, row=1, col=col)
            fig.update_yaxes(title_text=ylabel, row=1, col=col)
        fig.update_yaxes(range=[-1.05, 1.05], row=1, col=1)
        fig.update_yaxes(range=[-0.02, 1.02], row=1, col=2)
        return fig

    def plot_generations(self, layer: int | None = None) -> go.Figure:
        """A table of the generations at ``layer`` (default: the first layer compared)."""
        la = self.layers[0] if layer is None else layer
        if la not in self.generations:
            raise LayerError(
                f"no generations at layer {la}; layers with generations: "
                f"{sorted(self.generations)} (pass generation_prompts= to compare_with_caa)."
            )
        rows = self.generations[la]
        cols = ["prompt", "unsteered", "one_shot", "caa"]
        fig = go.Figure(
            go.Table(
                header={"values": ["prompt", "unsteered", "one-shot", "CAA"], "align": "left"},
                cells={"values": [[r[c] for r in rows] for c in cols], "align": "left"},
            )
        )
        return style_figure(fig, f"Steered generations at layer {la} (greedy)", "", "")


def _one_shot_direction(one_shot: SteeringVector, layer: int) -> Tensor:
    """The vector's direction at ``layer``, or its single direction if it has none there."""
    if layer in one_shot.directions:
        return one_shot.directions[layer]
    try:
        return as_direction(one_shot)
    except SteerlensError:
        raise LayerError(
            f"the one-shot vector has no direction at layer {layer} and different directions at "
            f"its layers {one_shot.layers}; pass layers= among {one_shot.layers}."
        ) from None


def _effects(
    model: Any,
    datapoints: Sequence[Datapoint],
    directions: dict[str, dict[int, Tensor]],
    layers: list[int],
    *,
    effect_norm: float,
    objective: Objective | None,
    unit: str,
) -> tuple[float, dict[str, np.ndarray]]:
    base = evaluate_objective(model, datapoints, 0, None, objective=objective, unit=unit).total
    values: dict[str, list[float]] = {name: [] for name in directions}
    for la in layers:
        scorer = ObjectiveScorer(model, datapoints, la, objective=objective, unit=unit)
        for name, per_layer in directions.items():
            v = per_layer[la]
            if float(v.norm()) == 0.0:
                raise SteerlensError(
                    f"the {name} vector has norm 0 at layer {la}; it has no direction to rescale."
                )
            loss = scorer(v / v.norm() * effect_norm).total
            values[name].append((loss - base) / effect_norm)
    return base, {name: np.asarray(vals) for name, vals in values.items()}


def _generations(
    model: Any,
    prompts: Sequence[str],
    directions: dict[str, dict[int, Tensor]],
    layers: list[int],
    *,
    chat: bool | None,
    max_new_tokens: int,
    batch_size: int,
) -> dict[int, list[dict[str, str]]]:
    kw: dict[str, Any] = {"chat": chat, "max_new_tokens": max_new_tokens, "batch_size": batch_size}
    plain = list(generate(model, list(prompts), **kw))
    out = {}
    for la in layers:
        steered = {
            name: list(generate(model, list(prompts), Steering(per_layer[la], layer=la), **kw))
            for name, per_layer in directions.items()
        }
        out[la] = [
            {"prompt": p, "unsteered": plain[i], **{n: steered[n][i] for n in _NAMES}}
            for i, p in enumerate(prompts)
        ]
    return out


def compare_with_caa(
    model: Any,
    one_shot: SteeringVector,
    positive: Sequence[PromptItem],
    negative: Sequence[PromptItem],
    *,
    layers: int | Sequence[int] | None = None,
    datapoints: Datapoint | Sequence[Datapoint] | None = None,
    generation_prompts: Sequence[str] | None = None,
    max_new_tokens: int = 40,
    position: Position = "last",
    score_position: Position | None = None,
    chat: bool | None = None,
    completions: tuple[Sequence[str], Sequence[str]] | None = None,
    held_out: tuple[Sequence[PromptItem], Sequence[PromptItem]] | None = None,
    effect_norm: float = 1.0,
    objective: Objective | None = None,
    unit: str = "nats",
    batch_size: int = 16,
) -> ComparisonResult:
    """Compare a one-shot vector with the CAA vector of ``positive`` vs ``negative`` prompts.

    Args:
        model: a TransformerLens model.
        one_shot: the one-shot vector (its direction at each layer, or its single direction).
        positive, negative: the contrastive prompt sets (as in
            `steerlens.diff_of_means`).
        layers: layers to compare (default: the one-shot vector's layers).
        datapoints: datapoints whose objective measures the effect per unit norm.
        generation_prompts: prompts for side-by-side steered generations (user messages when
            ``chat=True``).
        max_new_tokens: tokens per generation.
        position: how CAA reduces each prompt (``"last"``, ``"mean"``, ``"completion"``).
        score_position: how the classifier reduces each prompt (default ``"mean"``: the mean
            over the prompt's tokens, or ``"completion"`` when ``position="completion"``).
        chat: format the prompt sets and generation prompts with the chat template (default:
            when the model has one; ``False``: as written).
        completions: ``(positive, negative)`` completions for ``position="completion"``.
        held_out: ``(positive, negative)`` prompts (items as in ``positive``) the classifier
            is scored on instead of the CAA prompts, for an out-of-sample ROC-AUC.
        effect_norm: the common norm both vectors are rescaled to for the effect (1: unit).
        objective, unit: the objective's settings and loss unit.
        batch_size: prompts per forward pass.

    Example:
        >>> import torch
        >>> from steerlens.testing import tiny_model
        >>> from steerlens import SteeringVector
        >>> m = tiny_model()
        >>> v = SteeringVector.from_tensor(torch.ones(64), 1, model=m)
        >>> res = compare_with_caa(m, v, ["the cat", "the dog"], ["a cat", "a dog"])
        >>> res.layers, bool(0.0 <= res.auc["caa"][0] <= 1.0)
        ([1], True)
    """
    one_shot.check_compatible(model)
    la = sorted(
        set(
            runtime.check_layers(
                model, one_shot.layers if layers is None else layers, what="layers"
            )
        )
    )
    if not effect_norm > 0:
        raise SpecError(f"effect_norm must be > 0, got {effect_norm}.")
    score_pos = score_position or ("completion" if position == "completion" else "mean")
    kw: dict[str, Any] = {"chat": chat, "batch_size": batch_size}
    caa = _diff_of_means(
        model, positive, negative, la, position=position, completions=completions, **kw
    )
    directions = {
        "one_shot": {layer: _one_shot_direction(one_shot, layer) for layer in la},
        "caa": {layer: caa.directions[layer] for layer in la},
    }
    cosine = np.asarray(
        [
            cosine_matrix([directions["one_shot"][layer], directions["caa"][layer]]).matrix[0, 1]
            for layer in la
        ]
    )
    pos_c, neg_c = completions if completions is not None else (None, None)
    sc_kw = {"position": score_pos, **kw}
    if held_out is not None:
        if len(held_out) != 2 or not held_out[0] or not held_out[1]:
            raise SpecError(
                "held_out must be (positive prompts, negative prompts), both non-empty."
            )
        scored, pos_c, neg_c = held_out, None, None
    else:
        scored = (positive, negative)
    acts_pos = collect_activations(model, scored[0], la, completions=pos_c, **sc_kw)
    acts_neg = collect_activations(model, scored[1], la, completions=neg_c, **sc_kw)
    auc = {
        name: np.asarray(
            [
                roc_auc(
                    acts_pos[layer] @ d[layer].to(acts_pos[layer]),
                    acts_neg[layer] @ d[layer].to(acts_neg[layer]),
                )
                for layer in la
            ]
        )
        for name, d in directions.items()
    }
    norms = {
        name: np.asarray([float(d[layer].norm()) for layer in la]) for name, d in directions.items()
    }
    base: float | None = None
    effects: dict[str, np.ndarray] = {}
    if datapoints is not None:
        data = [datapoints] if isinstance(datapoints, Datapoint) else list(datapoints)
        base, effects = _effects(
            model, data, directions, la, effect_norm=effect_norm, objective=objective, unit=unit
        )
    gens: dict[int, list[dict[str, str]]] = {}
    if generation_prompts is not None:
        gens = _generations(
            model,
            generation_prompts,
            directions,
            la,
            chat=chat,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
        )
    return ComparisonResult(
        layers=la,
        cosine=cosine,
        norms=norms,
        auc=auc,
        effect_per_unit_norm=effects,
        unsteered_loss=base,
        effect_norm=effect_norm,
        unit=unit,
        caa=caa,
        score_position=score_pos,
        generations=gens,
        auc_on="held-out" if held_out is not None else "in-sample",
    )


__all__ = ["ComparisonResult", "compare_with_caa", "roc_auc"]
