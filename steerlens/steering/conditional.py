"""Conditional activation steering (CAST, Lee et al. 2024): steer only where the prompt is of
a kind, and leave every other prompt exactly untouched.

A `Condition` is a direction in the residual stream at ``blocks.{layer}.hook_resid_pre``.
A prompt *fires* it when the cosine between its pooled hidden state (the mean over its
tokens after the first, or its last token; `prompt_states`), centred, and the direction is
above a threshold.
`fit_condition` fits the direction (difference of the two prompt sets' means) and the
threshold (the best F1 on those sets) and reports F1, precision and recall;
`Condition.evaluate` measures them on held-out prompts. The plan
``steerlens.steering.steer.Conditional(steering, condition)`` then steers only the rows whose prompt
fires, in `steerlens.steering.steer.steer`, `steerlens.generate` (the decision is made at the prompt
and kept while decoding), `steerlens.steering.steer.steer_rows` and every function that takes
``steering=``.

Example:
    >>> import torch
    >>> from steerlens import Steering, generate
    >>> from steerlens.testing import tiny_model
    >>> model = tiny_model()
    >>> cond = fit_condition(model, ["the cat sat", "the cat ran"], ["a dog", "in a"], layer=0)
    >>> cond.fit.f1
    1.0
    >>> plan = Conditional(Steering(torch.ones(64), layer=1, strength=8.0), cond)
    >>> out = generate(model, ["the cat sat", "a dog"], plan, max_new_tokens=3)
    >>> out[1] == generate(model, "a dog", max_new_tokens=3)  # did not fire: untouched
    True
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from steerlens import runtime
from steerlens.errors import (
    InputError,
    ModelMismatchError,
    NonFiniteError,
    SpecError,
    SteerlensError,
    VectorShapeError,
)
from steerlens.io.plain import to_plain
from steerlens.runtime import TokenContext
from steerlens.steering.interventions import check_vector
from steerlens.steering.steer import Conditional

Pooling = Literal["mean", "last"]
POOLINGS = ("mean", "last")
_N_EXAMPLES = 3


@dataclass(frozen=True)
class ConditionReport:
    """How well a condition separates two prompt sets: it should fire on the positive prompts
    and stay quiet on the negative ones.

    Attributes:
        threshold: the threshold measured (a prompt fires when its score is above it).
        f1, precision, recall, accuracy: the usual rates, positive prompts as the class
            (precision is 0 when nothing fires).
        true_positives, false_positives, false_negatives, true_negatives: the counts.
        positive_scores, negative_scores: every prompt's cosine score, in prompt order.
    """

    threshold: float
    f1: float
    precision: float
    recall: float
    accuracy: float
    true_positives: int
    false_positives: int
    false_negatives: int
    true_negatives: int
    positive_scores: tuple[float, ...]
    negative_scores: tuple[float, ...]

    @classmethod
    def of(
        cls, positive_scores: Sequence[float], negative_scores: Sequence[float], threshold: float
    ) -> ConditionReport:
        """The report of ``threshold`` on the two sets' scores.

        Example:
            >>> r = ConditionReport.of([0.5, 0.2], [0.1, -0.3], threshold=0.3)
            >>> r.precision, r.recall, r.f1
            (1.0, 0.5, 0.6666666666666666)
        """
        pos = tuple(float(s) for s in positive_scores)
        neg = tuple(float(s) for s in negative_scores)
        tp = sum(s > threshold for s in pos)
        fp = sum(s > threshold for s in neg)
        fn, tn = len(pos) - tp, len(neg) - fp
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / len(pos) if pos else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return cls(
            threshold=float(threshold),
            f1=f1,
            precision=precision,
            recall=recall,
            accuracy=(tp + tn) / (len(pos) + len(neg)),
            true_positives=tp,
            false_positives=fp,
            false_negatives=fn,
            true_negatives=tn,
            positive_scores=pos,
            negative_scores=neg,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready)."""
        out: dict[str, Any] = to_plain(self)
        return out

    def __repr__(self) -> str:
        return (
            f"ConditionReport(F1 {self.f1:.3f}, precision {self.precision:.3f}, recall "
            f"{self.recall:.3f}, accuracy {self.accuracy:.3f} on {len(self.positive_scores)} "
            f"positive + {len(self.negative_scores)} negative prompts; fires above "
            f"{self.threshold:.4g})"
        )


@dataclass(frozen=True, kw_only=True, eq=False)
class Condition:
    """Does a prompt fire? The centred cosine of its pooled hidden state at
    ``blocks.{layer}.hook_resid_pre`` with ``direction``, above ``threshold``.

    Fit one with `fit_condition` (or `from_states`); apply a plan only where it fires with
    ``steerlens.steering.steer.Conditional(plan, condition)``.

    Attributes:
        layer: the layer whose ``hook_resid_pre`` is read.
        direction: ``[d_model]``; stored at unit norm.
        threshold: a prompt fires when its score is above it (scores are cosines, in
            ``[-1, 1]``).
        model_id: the model it was fitted on (using it on another is refused).
        center: ``[d_model]`` subtracted from the pooled state before the cosine (default 0).
        pooling: ``"mean"`` (the mean over the prompt's tokens after the first, an attention
            sink on many models) or ``"last"`` (its last token); see `prompt_states`.
        chat: whether the prompts it was fitted on were chat-formatted (the default of
            `scores` and `evaluate`; ``None``: the chat rule, `steerlens.runtime.uses_chat`);
            generate with the same ``chat``.
        fit: F1, precision and recall on the prompts it was fitted on.
        provenance: how it was made (method, prompt counts, example prompts).

    Example:
        >>> import torch
        >>> cond = Condition(layer=1, direction=torch.tensor([3.0, 4.0]), threshold=0.5,
        ...                  model_id="m")
        >>> cond.similarity(torch.tensor([[3.0, 4.0], [-4.0, 3.0]])).tolist()
        [1.0, 0.0]
    """

    layer: int
    direction: Float[Tensor, " d_model"]
    threshold: float
    model_id: str
    center: Float[Tensor, " d_model"] | None = None
    pooling: Pooling = "mean"
    chat: bool | None = None
    fit: ConditionReport | None = None
    provenance: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.layer, bool) or not isinstance(self.layer, numbers.Integral):
            raise SpecError(f"layer must be an int, got {self.layer!r}.")
        if self.layer < 0:
            raise SpecError(
                f"layer must be >= 0 (blocks.{{layer}}.hook_resid_pre), got {self.layer}."
            )
        object.__setattr__(self, "layer", int(self.layer))
        direction = check_vector(self.direction, name="condition direction").detach().float()
        norm = float(direction.norm())
        if norm == 0.0:
            raise NonFiniteError(
                "the condition direction is zero, so no cosine is defined; the two prompt sets "
                "have the same mean: pass prompts that differ in what the condition detects."
            )
        object.__setattr__(self, "direction", direction / norm)
        d_model = int(direction.shape[-1])
        center = torch.zeros_like(direction) if self.center is None else self.center
        center = check_vector(center, name="condition center", d_model=d_model)
        object.__setattr__(self, "center", center.detach().float().to(direction.device))
        if (
            isinstance(self.threshold, bool)
            or not isinstance(self.threshold, numbers.Real)
            or math.isnan(self.threshold)
        ):
            raise SpecError(
                f"threshold must be a number, got {self.threshold!r}; a prompt fires when its "
                "cosine score is above it."
            )
        object.__setattr__(self, "threshold", float(self.threshold))
        if not isinstance(self.model_id, str) or not self.model_id:
            raise SpecError(
                f"model_id must be a non-empty string, got {self.model_id!r}; pass "
                "runtime.model_id(model) of the model it reads."
            )
        if self.pooling not in POOLINGS:
            raise SpecError(f"unknown pooling {self.pooling!r}; use one of {', '.join(POOLINGS)}.")

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def from_states(
        cls,
        positive: Float[Tensor, "n_pos d_model"],
        negative: Float[Tensor, "n_neg d_model"],
        *,
        layer: int,
        model_id: str,
        pooling: Pooling = "mean",
        chat: bool | None = None,
        provenance: Mapping[str, Any] | None = None,
    ) -> Condition:
        """Fit from pooled hidden states: the direction is the difference of the two sets'
        means, the center their midpoint, and the threshold the one with the best F1 on these
        states (ties: the better accuracy, then the threshold nearest 0).

        Example:
            >>> import torch
            >>> pos = torch.tensor([[2.0, 0.1], [3.0, -0.2]])
            >>> neg = torch.tensor([[-2.0, 0.3], [-1.0, 0.0]])
            >>> cond = Condition.from_states(pos, neg, layer=0, model_id="m")
            >>> cond.fit.f1, cond.fires_on(torch.tensor([[5.0, 0.0], [-5.0, 0.0]])).tolist()
            (1.0, [True, False])
        """
        pos = _check_states(positive, "positive")
        neg = _check_states(negative, "negative")
        if pos.shape[1] != neg.shape[1]:
            raise VectorShapeError(
                f"positive states have d_model {pos.shape[1]} but negative ones "
                f"{neg.shape[1]}; read both sets at the same layer of one model."
            )
        mean_pos, mean_neg = pos.double().mean(0), neg.double().mean(0)
        unfitted = cls(
            layer=layer,
            direction=(mean_pos - mean_neg).float(),
            center=((mean_pos + mean_neg) / 2).float(),
            threshold=0.0,
            model_id=model_id,
            pooling=pooling,
            chat=chat,
            provenance=dict(provenance or {}),
        )
        pos_scores = unfitted.similarity(pos).tolist()
        neg_scores = unfitted.similarity(neg).tolist()
        threshold = _best_threshold(pos_scores, neg_scores)
        report = ConditionReport.of(pos_scores, neg_scores, threshold)
        return dataclasses.replace(unfitted, threshold=threshold, fit=report)

    def with_threshold(self, threshold: float) -> Condition:
        """The same condition firing above another threshold (e.g. to trade recall for
        precision); ``fit`` is re-measured on the fitting scores."""
        fit = self.fit
        if fit is not None:
            fit = ConditionReport.of(fit.positive_scores, fit.negative_scores, threshold)
        return dataclasses.replace(self, threshold=threshold, fit=fit)

    # -- scores ------------------------------------------------------------------------------

    def similarity(self, states: Float[Tensor, "n d_model"]) -> Float[Tensor, " n"]:
        """The score of pooled states: the cosine of ``state - center`` with the direction."""
        states = states.float()
        centred = states - self.center.to(states.device)  # type: ignore[union-attr]
        direction = self.direction.to(states.device)
        return torch.nn.functional.cosine_similarity(centred, direction[None, :], dim=-1)

    def fires_on(self, states: Float[Tensor, "n d_model"]) -> Bool[Tensor, " n"]:
        """Which pooled states fire (score above the threshold)."""
        return self.similarity(states) > self.threshold

    def fires(
        self, x: Float[Tensor, "batch pos d_model"], ctx: TokenContext
    ) -> Bool[Tensor, " batch"]:
        """Which rows of a forward call fire, from their prompt tokens (``ctx``); called by
        the steering hook at ``blocks.{layer}.hook_resid_pre``."""
        return self.fires_on(_pool(x, ctx, self.pooling))

    def scores(
        self,
        model: Any,
        prompts: Sequence[str],
        *,
        chat: bool | None = None,
        bos: bool = False,
        batch_size: int = 16,
    ) -> Float[Tensor, " n"]:
        """Each prompt's score (``chat`` defaults to how the condition was fitted).

        Example:
            >>> from steerlens.testing import tiny_model
            >>> model = tiny_model()
            >>> cond = fit_condition(model, ["the cat sat"], ["a dog"], layer=1)
            >>> bool(cond.scores(model, ["the cat sat"])[0] > cond.threshold)
            True
        """
        self.check_compatible(model)
        states = prompt_states(
            model,
            prompts,
            self.layer,
            pooling=self.pooling,
            chat=self.chat if chat is None else chat,
            bos=bos,
            batch_size=batch_size,
        )
        return self.similarity(states).cpu()

    def evaluate(
        self,
        model: Any,
        positive: Sequence[str],
        negative: Sequence[str],
        *,
        chat: bool | None = None,
        bos: bool = False,
        batch_size: int = 16,
    ) -> ConditionReport:
        """F1, precision and recall on (held-out) prompts: it should fire on ``positive`` and
        not on ``negative``.

        Example:
            >>> from steerlens.testing import tiny_model
            >>> model = tiny_model()
            >>> cond = fit_condition(model, ["the cat sat"], ["a dog"], layer=1)
            >>> cond.evaluate(model, ["the cat sat"], ["a dog"]).accuracy
            1.0
        """
        kw: dict[str, Any] = {"chat": chat, "bos": bos, "batch_size": batch_size}
        pos = self.scores(model, _check_prompts(positive, "positive"), **kw)
        neg = self.scores(model, _check_prompts(negative, "negative"), **kw)
        return ConditionReport.of(pos.tolist(), neg.tolist(), self.threshold)

    # -- the PromptCondition protocol --------------------------------------------------------

    def check_compatible(self, model: Any) -> None:
        """Refuse a model other than the one it was fitted on, or one lacking its layer."""
        mid = runtime.model_id(model)
        if mid != self.model_id:
            raise ModelMismatchError(
                f"this condition was fitted on {self.model_id!r} but the model is {mid!r}; fit "
                "it on this model with fit_condition(model, positive, negative, layer=...)."
            )
        d = runtime.d_model(model)
        if d != int(self.direction.shape[-1]):
            raise VectorShapeError(
                f"this condition has d_model {int(self.direction.shape[-1])} but the model has "
                f"{d}; fit it on this model."
            )
        runtime.check_layer(model, self.layer)

    def describe(self) -> str:
        return (
            f"the condition at layer {self.layer} ({self.pooling}-pooled prompt, cosine > "
            f"{self.threshold:.3g})"
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready), tensors as lists."""
        out: dict[str, Any] = to_plain(self)
        return out

    def __repr__(self) -> str:
        fit = "" if self.fit is None else f", fitted F1 {self.fit.f1:.3f}"
        return (
            f"Condition(layer {self.layer}, {self.pooling}-pooled prompt, fires above cosine "
            f"{self.threshold:.4g}, model {self.model_id!r}{fit})"
        )


def fit_condition(
    model: Any,
    positive: Sequence[str],
    negative: Sequence[str],
    *,
    layer: int,
    pooling: Pooling = "mean",
    chat: bool | None = None,
    bos: bool = False,
    batch_size: int = 16,
) -> Condition:
    """Fit a condition that fires on prompts like ``positive`` and not on ones like
    ``negative``.

    Each prompt's hidden state at ``blocks.{layer}.hook_resid_pre`` is pooled over its tokens
    (`prompt_states`); the direction is the difference of the two
    sets' means and the threshold the one with the best F1 on these prompts
    (`Condition.from_states`). Check it on prompts it was not fitted on with
    `Condition.evaluate`.

    Args:
        model: a TransformerLens model.
        positive: prompts the condition should fire on.
        negative: prompts it should not fire on.
        layer: the layer read; it must be at or below every layer the conditional plan steers.
        pooling: ``"mean"`` over the prompt's tokens after the first, or its ``"last"``
            token (see `prompt_states`).
        chat: format prompts as user messages in the chat template (default: when the model
            has one; ``False``: as written); generate with the same ``chat``.
        bos: put the BOS token in front of each prompt (as the generation will).
        batch_size: prompts per forward pass.

    Returns:
        A `Condition`; ``.fit`` holds F1, precision and recall on the fitting prompts.

    Example:
        >>> from steerlens.testing import tiny_model
        >>> cond = fit_condition(tiny_model(), ["the cat sat", "the cat ran"], ["a dog"],
        ...                      layer=1)
        >>> cond.layer, cond.fit.true_positives, cond.fit.true_negatives
        (1, 2, 1)
    """
    sets = {
        name: _check_prompts(items, name)
        for name, items in (("positive", positive), ("negative", negative))
    }
    chat = runtime.uses_chat(model, chat)  # recorded as used, so scores read prompts the same way
    kw: dict[str, Any] = {"pooling": pooling, "chat": chat, "bos": bos, "batch_size": batch_size}
    states = {name: prompt_states(model, items, layer, **kw) for name, items in sets.items()}
    provenance = {
        "method": "fit_condition",
        "pooling": pooling,
        "chat": chat,
        "bos": bos,
        "n_positive": len(sets["positive"]),
        "n_negative": len(sets["negative"]),
        "hook_template": runtime.HOOK_TEMPLATE,
        "examples": {name: items[:_N_EXAMPLES] for name, items in sets.items()},
    }
    return Condition.from_states(
        states["positive"],
        states["negative"],
        layer=layer,
        model_id=runtime.model_id(model),
        pooling=pooling,
        chat=chat,
        provenance=provenance,
    )


# -- helpers ---------------------------------------------------------------------------------


def _pool(x: Float[Tensor, "batch pos d_model"], ctx: TokenContext, pooling: str) -> Tensor:
    """Each row's prompt state (float32): the mean over its prompt tokens after the first
    (all of them for a one-token prompt), or its last prompt token."""
    start, end = ctx.prompt_start.to(x.device), ctx.prompt_end.to(x.device)
    if pooling == "last":
        rows = torch.arange(x.shape[0], device=x.device)
        return x[rows, (end - 1).clamp(min=0, max=x.shape[1] - 1)].float()
    first = torch.minimum(start + 1, end - 1)  # leave out the first token (a sink)
    pos = torch.arange(x.shape[1], device=x.device)[None, :]
    span = (pos >= first[:, None]) & (pos < end[:, None])
    summed = torch.where(span[..., None], x.float(), torch.zeros((), device=x.device)).sum(dim=1)
    return summed / span.sum(dim=1, keepdim=True).clamp(min=1).float()


@torch.no_grad()
def prompt_states(
    model: Any,
    prompts: Sequence[str],
    layer: int,
    *,
    pooling: Pooling = "mean",
    chat: bool | None = None,
    bos: bool = False,
    batch_size: int = 16,
) -> Float[Tensor, "n d_model"]:
    """Each prompt's pooled hidden state at ``blocks.{layer}.hook_resid_pre`` (float32),
    pooled exactly as a `Condition` pools it while steering.

    ``"mean"`` averages the prompt's tokens after the first (on many models, SmolLM2 among
    them, the first token is an attention sink whose norm dwarfs the others', see
    `steerlens.analysis.scale`); ``"last"`` takes its last token.

    Example:
        >>> from steerlens.testing import tiny_model
        >>> tuple(prompt_states(tiny_model(), ["the cat", "a"], 1).shape)
        (2, 64)
    """
    runtime.check_layer(model, layer)
    if pooling not in POOLINGS:
        raise SpecError(f"unknown pooling {pooling!r}; use one of {', '.join(POOLINGS)}.")
    texts = runtime.format_prompts(model, _check_prompts(prompts, "prompts"), chat=chat)
    rows = [runtime.encode(model, t, bos=bos) for t in texts]
    name = runtime.hook_name(layer)
    parts = []
    for batch in runtime.chunks(len(rows), runtime.check_batch_size(batch_size)):
        tokens, mask = runtime.right_pad(model, [rows[i] for i in batch])
        ctx = TokenContext.prompts(mask.sum(dim=1).to(tokens.device))
        with runtime.finite_scores(model):  # float64: pads stay finite under a sliding window
            _, cache = model.run_with_cache(tokens, attention_mask=mask, names_filter=[name])
        parts.append(_pool(cache[name], ctx, pooling))
        del cache
    states = torch.cat(parts)
    if not bool(torch.isfinite(states).all()):
        raise NonFiniteError(f"activations at {name} are NaN/inf; check the model and its dtype.")
    return states


def _check_states(states: Any, what: str) -> Tensor:
    if not isinstance(states, Tensor) or states.ndim != 2 or states.shape[0] == 0:
        shape = tuple(states.shape) if isinstance(states, Tensor) else type(states).__name__
        raise VectorShapeError(
            f"{what} states must be a non-empty [n, d_model] tensor, got {shape}; read them "
            "with steerlens.steering.conditional.prompt_states(model, prompts, layer)."
        )
    if not bool(torch.isfinite(states).all()):
        raise NonFiniteError(f"{what} states hold NaN/inf; check the model and its dtype.")
    return states.detach().float()


def _check_prompts(prompts: Any, what: str) -> list[str]:
    try:
        return runtime.check_prompts(prompts)
    except SteerlensError as err:
        raise InputError(f"{what}: {err}") from None


def _best_threshold(positive: Sequence[float], negative: Sequence[float]) -> float:
    """The threshold with the best F1 (then accuracy, then nearest 0) among the midpoints
    between consecutive scores and one below/above all of them."""
    values = sorted(set(positive) | set(negative))
    candidates = [values[0] - 1.0, values[-1] + 1.0]
    candidates += [(a + b) / 2 for a, b in itertools.pairwise(values)]

    def key(t: float) -> tuple[float, float, float]:
        r = ConditionReport.of(positive, negative, t)
        return (-r.f1, -r.accuracy, abs(t))

    return min(candidates, key=key)


__all__ = ["Condition", "ConditionReport", "Conditional", "fit_condition", "prompt_states"]
