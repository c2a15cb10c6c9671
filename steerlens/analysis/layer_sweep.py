"""Layer-wise effect of steering (METHOD.md, "Layer-wise effect"): apply one vector, or optimize
a fresh one, at each layer and measure, per layer:

- ``"loss"``: the objective's loss of each datapoint (summed over its completions);
- ``"logprob_change"``: the change in log-probability of each promoted completion (coldness 1,
  i.e. the model's own probabilities), steered minus unsteered;
- ``"kl"``: ``KL(steered || unsteered)`` of the next-token distribution at each prompt's last
  position (a side-effect measure), ``sum_x p_steered(x) (log p_steered(x) - log p_unsteered(x))``;
- ``"behavior_rate"`` (with ``metric=``): ``metric(texts)`` on greedy steered generations.

All log-quantities are in ``unit`` (nats by default). Everything unsteered (losses,
log-probabilities, next-token distributions, generations) is computed once and shared by all
layers, and each layer's numbers do not depend on which other layers are swept.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import plotly.graph_objects as go
import torch
from jaxtyping import Float
from torch import Tensor

from steerlens import runtime
from steerlens.analysis.plots import style_figure
from steerlens.errors import InputError, NonFiniteError, SpecError, SteerlensError
from steerlens.io.plain import to_plain
from steerlens.runtime.logprobs import convert_loss
from steerlens.steering.generate import generate
from steerlens.steering.interventions import check_vector
from steerlens.steering.positions import PositionsLike
from steerlens.steering.steer import Steering, steer
from steerlens.steering.vector import SteeringVector
from steerlens.training.config import OptimizeConfig
from steerlens.training.data import Datapoint
from steerlens.training.loop import Job, optimize_many
from steerlens.training.objectives import Objective
from steerlens.training.optimize import evaluate_objective

Metric = Callable[[list[str]], float]
METRICS = ("loss", "logprob_change", "kl", "behavior_rate")
_TITLES = {
    "loss": ("Objective loss", "objective loss per datapoint"),
    "logprob_change": ("Change in log-probability of promoted completions", "Δ log P"),
    "kl": ("KL(steered ‖ unsteered) of the next-token distribution", "KL"),
    "behavior_rate": ("Behavior rate of steered generations", "behavior rate"),
}


@dataclass(frozen=True)
class LayerSweepResult:
    """Per-layer measurements of `layer_sweep`.

    Attributes:
        layers: the layers swept, in order.
        values: metric -> ``[layers, items]`` array (items: datapoints for ``"loss"``, promoted
            completions for ``"logprob_change"``, prompts for ``"kl"``, one for
            ``"behavior_rate"``).
        baseline: metric -> ``[items]`` unsteered values (``"loss"``: unsteered losses;
            ``"logprob"``: unsteered log-probabilities of the promoted completions;
            ``"behavior_rate"``: the metric on unsteered generations).
        item_labels: metric -> a label per item.
        units: metric -> its unit.
        vectors: layer -> the vector applied there (optimized ones carry their provenance).
        optimized: whether a vector was optimized at each layer.
        generations: layer -> steered generations (only with ``metric=``).
    """

    layers: list[int]
    values: dict[str, Float[np.ndarray, "layers items"]]
    baseline: dict[str, Float[np.ndarray, " items"]]
    item_labels: dict[str, list[str]]
    units: dict[str, str]
    vectors: dict[int, SteeringVector]
    optimized: bool
    generations: dict[int, list[str]] = field(default_factory=dict)

    @property
    def metrics(self) -> list[str]:
        return [m for m in METRICS if m in self.values]

    def _get(self, metric: str) -> Float[np.ndarray, "layers items"]:
        if metric not in self.values:
            raise SpecError(
                f"this sweep has no metric {metric!r}; it has {self.metrics} "
                "('behavior_rate' needs metric=..., 'logprob_change' promote completions)."
            )
        return self.values[metric]

    def mean(self, metric: str) -> Float[np.ndarray, " layers"]:
        """The metric averaged over items, per layer."""
        return self._get(metric).mean(axis=1)

    def best_layer(self, metric: str = "loss") -> int:
        """The layer with the lowest mean ``"loss"``/``"kl"`` or highest other metric."""
        m = self.mean(metric)
        i = int(np.argmin(m) if metric in ("loss", "kl") else np.argmax(m))
        return self.layers[i]

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready); ``vectors`` holds each layer's vector metadata and norm."""
        return to_plain(self)

    def plot(self, metric: str = "loss", *, band: Literal["minmax", "std"] = "minmax") -> go.Figure:
        """The metric's mean over items against the layer, with a band over items (min-max or
        ±1 standard deviation); a dashed line marks the unsteered level.

        Example:
            >>> import torch
            >>> from steerlens.testing import tiny_model
            >>> from steerlens import Datapoint
            >>> res = layer_sweep(tiny_model(), Datapoint("a", promote=[" b"]),
            ...                   vector=torch.ones(64), prompts=["x", "yz"])
            >>> [t.name for t in res.plot("kl").data]
            ['max', 'min', 'mean']
        """
        values = self._get(metric)
        if band not in ("minmax", "std"):
            raise SpecError(f"unknown band {band!r}; use 'minmax' or 'std'.")
        mean = values.mean(axis=1)
        if band == "minmax":
            lo, hi, names = values.min(axis=1), values.max(axis=1), ("max", "min")
        else:
            sd = values.std(axis=1)
            lo, hi, names = mean - sd, mean + sd, ("+1 std", "-1 std")
        x = list(self.layers)
        fig = go.Figure()
        if values.shape[1] > 1:
            fig.add_trace(
                go.Scatter(x=x, y=hi.tolist(), mode="lines", line={"width": 0}, name=names[0])
            )
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=lo.tolist(),
                    mode="lines",
                    line={"width": 0},
                    fill="tonexty",
                    fillcolor="rgba(99, 110, 250, 0.2)",
                    name=names[1],
                )
            )
        fig.add_trace(go.Scatter(x=x, y=mean.tolist(), mode="lines+markers", name="mean"))
        base = {"loss": "loss", "behavior_rate": "behavior_rate"}.get(metric)
        level = float(self.baseline[base].mean()) if base in self.baseline else 0.0
        fig.add_hline(y=level, line_dash="dash", annotation_text="unsteered")
        title, label = _TITLES[metric]
        how = "optimized at each layer" if self.optimized else "one vector applied at each layer"
        n = values.shape[1]
        spread = f", band: {'min-max' if band == 'minmax' else '±1 std'} over {n} items"
        fig = style_figure(
            fig,
            f"{title} ({how}{spread if n > 1 else ''})",
            "layer (steered at blocks.{layer}.hook_resid_pre)",
            f"{label} ({self.units[metric]})",
        )
        fig.update_xaxes(tickmode="array", tickvals=x)
        return fig


# -- measurements (small, reusable) --------------------------------------------------------


def _next_logprobs(
    model: Any,
    texts: Sequence[str],
    vector: Tensor | None = None,
    layer: int | None = None,
    *,
    positions: PositionsLike = None,
    batch_size: int = 16,
) -> Float[Tensor, "n vocab"]:
    """Float32 next-token log-probs after each text, with ``vector`` added at ``layer``."""
    rows = [runtime.encode(model, t) for t in texts]
    for t, r in zip(texts, rows, strict=True):
        if not r:
            raise InputError(f"prompt {t!r} tokenises to nothing.")
    plan = None if vector is None else Steering(vector, layer=layer, positions=positions)
    with steer(model, plan), torch.no_grad():
        return runtime.last_logits(model, rows, batch_size=batch_size).log_softmax(-1)


def _per_datapoint(values: Sequence[float], data: Sequence[Datapoint]) -> np.ndarray:
    """Sum per-completion values (datapoint order, promote first) into per-datapoint values."""
    out, i = [], 0
    for dp in data:
        k = len(dp.completions)
        out.append(sum(values[i : i + k]))
        i += k
    return np.asarray(out, dtype=np.float64)


def _promote_only(data: Sequence[Datapoint]) -> list[Datapoint]:
    return [
        Datapoint(
            dp.prompt, promote=dp.promote, negate=dp.negate, positions=dp.positions, chat=dp.chat
        )
        for dp in data
        if dp.promote
    ]


def _rate(metric: Metric, texts: list[str]) -> float:
    value = metric(texts)
    if not isinstance(value, (int, float, np.floating, np.integer)) or not math.isfinite(value):
        raise NonFiniteError(
            f"metric(texts) must return a finite float, got {value!r}; return e.g. the fraction "
            "of texts that show the behavior."
        )
    return float(value)


@dataclass(frozen=True)
class _Setup:
    """What every layer shares: inputs and the unsteered measurements (computed once)."""

    data: list[Datapoint]
    promote: list[Datapoint]
    texts: list[str]
    objective: Objective
    positions: PositionsLike
    unit: str
    metric: Metric | None
    max_new_tokens: int
    batch_size: int
    base_loss: np.ndarray
    base_logprob: np.ndarray
    base_next: Tensor
    base_rate: float | None


def _setup(model: Any, data: list[Datapoint], texts: list[str], **kw: Any) -> _Setup:
    objective, positions, unit = kw["objective"], kw["positions"], kw["unit"]
    loss = evaluate_objective(
        model, data, 0, None, objective=objective, positions=positions, unit=unit
    )
    promote = _promote_only(data)
    logprob = np.zeros(0)
    if promote:
        ev = evaluate_objective(
            model,
            promote,
            0,
            None,
            objective=Objective(coldness=1.0),
            positions=positions,
            unit=unit,
        )
        logprob = -np.asarray(list(ev.losses.values()))
    base_next = _next_logprobs(model, texts, batch_size=kw["batch_size"])
    rate = None
    if kw["metric"] is not None:
        gens = generate(
            model,
            texts,
            chat=False,
            max_new_tokens=kw["max_new_tokens"],
            batch_size=kw["batch_size"],
        )
        rate = _rate(kw["metric"], list(gens))
    return _Setup(
        data=data,
        promote=promote,
        texts=texts,
        base_loss=_per_datapoint(list(loss.losses.values()), data),
        base_logprob=logprob,
        base_next=base_next,
        base_rate=rate,
        **kw,
    )


def _measure(
    model: Any, s: _Setup, layer: int, v: Tensor
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Every metric at one layer, against the shared unsteered measurements."""
    ev = evaluate_objective(
        model, s.data, layer, v, objective=s.objective, positions=s.positions, unit=s.unit
    )
    out = {"loss": _per_datapoint(list(ev.losses.values()), s.data)}
    if s.promote:
        lp = evaluate_objective(
            model,
            s.promote,
            layer,
            v,
            objective=Objective(coldness=1.0),
            positions=s.positions,
            unit=s.unit,
        )
        out["logprob_change"] = -np.asarray(list(lp.losses.values())) - s.base_logprob
    steered = _next_logprobs(
        model, s.texts, v, layer, positions=s.positions, batch_size=s.batch_size
    )
    kl = runtime.kl_divergence(steered, s.base_next).double().cpu()
    out["kl"] = np.asarray([float(convert_loss(float(x), s.unit)) for x in kl])
    gens: list[str] = []
    if s.metric is not None:
        gens = list(
            generate(
                model,
                s.texts,
                Steering(v, layer=layer, positions=s.positions),
                chat=False,
                max_new_tokens=s.max_new_tokens,
                batch_size=s.batch_size,
            )
        )
        out["behavior_rate"] = np.asarray([_rate(s.metric, gens)])
    return out, gens


def _direction(model: Any, vector: Tensor | SteeringVector) -> Tensor:
    if isinstance(vector, SteeringVector):
        vector.check_compatible(model)
        if vector.affine:
            raise SteerlensError("layer_sweep applies additive vectors; this one has affine parts.")
        return vector.vector
    return check_vector(vector, d_model=runtime.d_model(model))


def _short(text: str, n: int = 40) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= n else text[: n - 1] + "…"


def layer_sweep(
    model: Any,
    datapoints: Datapoint | Sequence[Datapoint],
    *,
    vector: Tensor | SteeringVector | None = None,
    layers: Sequence[int] | None = None,
    optimize: bool = False,
    config: OptimizeConfig | None = None,
    prompts: Sequence[str] | None = None,
    metric: Metric | None = None,
    chat: bool | None = None,
    positions: PositionsLike = None,
    unit: str = "nats",
    max_new_tokens: int = 32,
    batch_size: int = 16,
) -> LayerSweepResult:
    """Apply ``vector`` at each layer, or optimize a fresh vector at each layer, and measure
    the objective loss, the change in promoted completions' log-probability, the KL of the
    next-token distribution from the unsteered one, and optionally a behavior rate.

    Args:
        model: a TransformerLens model.
        datapoints: the objective's datapoints (and, by default, the prompts measured).
        vector: a ``[d_model]`` tensor or single-direction ``SteeringVector`` applied (added)
            at every layer. Give this or ``optimize=True``.
        layers: the layers to sweep (default: all).
        optimize: optimize a vector at each layer (all layers in one batched
            `steerlens.training.loop.optimize_many` run, each as `steerlens.optimize_vector`
            would train it).
        config: an ``OptimizeConfig`` for ``optimize=True``; its objective (and positions,
            unless ``positions=`` is given) also define the measured loss in both modes, and
            its ``progress`` switches the sweep's progress bar (one bar over the layers).
        prompts: texts for the KL and behavior measures (default: the datapoints' prompts,
            de-duplicated); full prompt texts unless ``chat=True`` (user messages).
        metric: ``metric(texts) -> float``, e.g. the fraction of French answers, applied to
            greedy steered generations of the prompts (``max_new_tokens`` each).
        positions: where to steer (as in `steerlens.steer`).
        unit: ``"nats"``, ``"bits"`` or ``"hartleys"`` for losses, log-probabilities and KL.
        batch_size: prompts per forward pass for the KL and generations.

    Example:
        >>> import torch
        >>> from steerlens.testing import tiny_model
        >>> from steerlens import Datapoint
        >>> res = layer_sweep(tiny_model(), Datapoint("a", promote=[" b"]), vector=torch.ones(64))
        >>> res.layers, res.metrics, res.values["loss"].shape
        ([0, 1], ['loss', 'logprob_change', 'kl'], (2, 1))
    """
    if (vector is None) == (not optimize):
        raise SpecError(
            "pass exactly one of vector=... (apply one vector at every layer) or optimize=True "
            f"(optimize one per layer); got vector={'given' if vector is not None else None}, "
            f"optimize={optimize}."
        )
    data = [datapoints] if isinstance(datapoints, Datapoint) else list(datapoints)
    data = [dp.for_model(model) if isinstance(dp, Datapoint) else dp for dp in data]
    if not data:
        raise SteerlensError("no datapoints given; pass at least one steerlens.Datapoint.")
    swept = sorted(
        set(
            runtime.check_layers(
                model, range(runtime.n_layers(model)) if layers is None else layers, what="layers"
            )
        )
    )
    convert_loss(0.0, unit)
    cfg = config or OptimizeConfig()
    pos = positions if positions is not None else cfg.positions
    if prompts is None:
        texts = list(dict.fromkeys(dp.prompt for dp in data))
    else:
        texts = runtime.format_prompts(model, runtime.check_prompts(prompts), chat=chat)
    direction = None if vector is None else _direction(model, vector)
    s = _setup(
        model,
        data,
        texts,
        objective=cfg.objective,
        positions=pos,
        unit=unit,
        metric=metric,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
    )
    per_layer: list[dict[str, np.ndarray]] = []
    vectors: dict[int, SteeringVector] = {}
    generations: dict[int, list[str]] = {}
    trained: dict[int, SteeringVector] = {}
    if direction is None:
        # Every layer's vector in one batched optimization (one bar over all their steps).
        layer_cfg = dataclasses.replace(cfg, positions=pos)
        results = optimize_many(model, [Job(data, la, layer_cfg) for la in swept])
        trained = {la: r.vector for la, r in zip(swept, results, strict=True)}
    bar = runtime.progress(len(swept), "layer sweep", cfg.progress)
    for la in swept:
        bar.set_postfix_str(f"layer {la}")
        if direction is None:
            sv = trained[la]
        else:
            sv = SteeringVector.from_tensor(
                direction,
                la,
                model=model,
                provenance={"method": "layer_sweep", "source": _source(vector)},
            )
        vectors[la] = sv
        values, gens = _measure(model, s, la, sv.directions[la])
        per_layer.append(values)
        if metric is not None:
            generations[la] = gens
        bar.update(1)
    bar.close()
    names = list(per_layer[0])
    units = {"loss": unit, "logprob_change": unit, "kl": unit, "behavior_rate": "metric value"}
    labels = {
        "loss": [_short(dp.prompt) for dp in s.data],
        "logprob_change": [f"{_short(dp.prompt)} → {c!r}" for dp in s.promote for c in dp.promote],
        "kl": [_short(t) for t in texts],
        "behavior_rate": ["all prompts"],
    }
    baseline = {"loss": s.base_loss, "logprob": s.base_logprob}
    if s.base_rate is not None:
        baseline["behavior_rate"] = np.asarray([s.base_rate])
    return LayerSweepResult(
        layers=swept,
        values={m: np.stack([v[m] for v in per_layer]) for m in names},
        baseline=baseline,
        item_labels={m: labels[m] for m in names},
        units={m: units[m] for m in names},
        vectors=vectors,
        optimized=optimize,
        generations=generations,
    )


def _source(vector: Any) -> Any:
    if isinstance(vector, SteeringVector):
        return dict(vector.provenance)
    return "tensor"


__all__ = ["LayerSweepResult", "layer_sweep"]
