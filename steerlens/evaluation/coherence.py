"""Coherence: does a steered model still write well, and what else did the vector change?

- `reply_nll`: the unsteered model's mean per-token negative log-likelihood of replies
  (fluency; nats per token, lower is more fluent). Steered replies that loop or drift score
  higher than the unsteered model's own replies.
- `distinct_n`: distinct n-grams over all n-grams of each reply (diversity; a fraction).
- `loop_rate`: how many replies repeat some n-gram ``repeats`` times or more (a rate with a
  Wilson interval).
- `side_effect_kl`: ``KL(unsteered || steered)`` of the next-token distribution after neutral
  prompts, where the behavior should not change (nats).
- `coherence`: all of them for steered and unsteered generations of the same prompts.

Every metric reports its unit and an interval over prompts: a percentile bootstrap of the mean
(seeded, so reports are reproducible) or, for rates, a Wilson interval. An on-task check is a
judge: see `steerlens.evaluation.success_rate`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from steerlens import runtime
from steerlens.errors import InputError, SpecError
from steerlens.evaluation.rates import RateResult
from steerlens.io.plain import to_plain
from steerlens.steering.generate import generate
from steerlens.steering.steer import SteeringLike, steer


@dataclass(frozen=True)
class MetricResult:
    """A metric over items: the mean, an interval, and every item's value.

    Attributes:
        name: what was measured.
        unit: its unit (``"nats/token"``, ``"nats"``, ``"fraction"``).
        values: one value per item (prompt or reply), in order.
        mean: their mean.
        ci_low, ci_high: a 95% percentile-bootstrap interval of the mean (2000 resamples,
            seeded); equal to the mean for one item.
        skipped: items that had no value (e.g. empty replies), not in ``values``.
    """

    name: str
    unit: str
    values: tuple[float, ...]
    mean: float
    ci_low: float
    ci_high: float
    skipped: int = 0

    @classmethod
    def of(cls, name: str, unit: str, values: Sequence[float], skipped: int = 0) -> MetricResult:
        """The result for ``values``, with its bootstrap interval.

        Example:
            >>> r = MetricResult.of("x", "nats", [1.0, 2.0, 3.0])
            >>> r.mean, r.ci_low <= 2.0 <= r.ci_high
            (2.0, True)
        """
        vals = np.asarray(list(values), dtype=np.float64)
        if vals.size == 0:
            raise InputError(
                f"{name}: no item has a value ({skipped} skipped); nothing to average."
            )
        low, high = bootstrap_interval(vals)
        return cls(name, unit, tuple(vals.tolist()), float(vals.mean()), low, high, skipped)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready)."""
        return to_plain(self)

    def __repr__(self) -> str:
        skipped = f", {self.skipped} skipped" if self.skipped else ""
        return (
            f"{self.name}: {self.mean:.4g} {self.unit} (95% CI {self.ci_low:.4g}-"
            f"{self.ci_high:.4g}, n={len(self.values)}{skipped})"
        )


def bootstrap_interval(
    values: np.ndarray, *, level: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of ``values`` (seeded, so reproducible).

    Example:
        >>> low, high = bootstrap_interval(np.array([1.0, 2.0, 3.0, 4.0]))
        >>> low < 2.5 < high
        True
    """
    if values.size == 1:
        return float(values[0]), float(values[0])
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(resamples, values.size))].mean(axis=1)
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def _check_pairs(prompts: Sequence[str], replies: Sequence[str]) -> tuple[list[str], list[str]]:
    items, texts = runtime.check_prompts(prompts), _texts(replies)
    if len(texts) != len(items):
        raise InputError(
            f"got {len(items)} prompts and {len(texts)} replies; give one reply per prompt."
        )
    return items, texts


@torch.no_grad()
def reply_nll(
    model: Any,
    prompts: Sequence[str],
    replies: Sequence[str],
    *,
    chat: bool | None = None,
    bos: bool = False,
    batch_size: int = 32,
    progress: bool | None = None,
) -> MetricResult:
    """The model's mean per-token negative log-likelihood of each reply after its prompt
    (``progress``: a bar over the replies when there is more than one batch).

    Run it on the *unsteered* model to score fluency: ``reply_nll(model, prompts,
    steered_replies)`` beside ``reply_nll(model, prompts, unsteered_replies)``. Empty replies
    have no tokens and are counted in ``skipped``.

    Example:
        >>> from steerlens.testing import tiny_model
        >>> r = reply_nll(tiny_model(), ["the cat", "a dog"], [" sat on", " ran"])
        >>> r.unit, len(r.values)
        ('nats/token', 2)
    """
    items, texts = _check_pairs(prompts, replies)
    rows, skipped = [], 0
    for prompt, text in zip(runtime.format_prompts(model, items, chat=chat), texts, strict=True):
        if not text:
            skipped += 1
            continue
        ids = runtime.encode(model, prompt, bos=bos)
        tokens, _ = runtime.completion_tokens(model, ids, prompt, text, label="reply")
        rows.append((ids + tokens, len(ids)))
    logprobs = (
        runtime.score_rows(model, rows, batch_size=batch_size, progress=progress) if rows else []
    )
    values = [float(-lp.double().mean()) for lp in logprobs]
    return MetricResult.of("reply NLL", "nats/token", values, skipped)


def _texts(texts: Sequence[str]) -> list[str]:
    """Replies as a list of str (empty ones allowed: a model may stop at once)."""
    items = [texts] if isinstance(texts, str) else list(texts)
    if not items:
        raise InputError("no replies given; pass at least one text.")
    bad = next((i for i, t in enumerate(items) if not isinstance(t, str)), None)
    if bad is not None:
        raise InputError(f"reply {bad} is a {type(items[bad]).__name__}, not a str.")
    return items


def _ngrams(tokens: Sequence[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def _check_n(n: int, what: str = "n") -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise SpecError(f"{what} must be an int >= 1, got {n!r}.")


def distinct_n(model: Any, texts: Sequence[str], n: int = 3) -> MetricResult:
    """Per reply, distinct ``n``-grams of its tokens over all its ``n``-grams (1 = no
    repetition); replies shorter than ``n`` tokens are skipped.

    Example:
        >>> from steerlens.testing import tiny_model
        >>> distinct_n(tiny_model(), ["a b a b a b", "the cat sat"], n=2).values[0] < 1.0
        True
    """
    _check_n(n)
    values, skipped = [], 0
    for text in _texts(texts):
        grams = _ngrams(runtime.encode(model, text), n)
        if not grams:
            skipped += 1
            continue
        values.append(len(set(grams)) / len(grams))
    return MetricResult.of(f"distinct-{n}", "fraction", values, skipped)


def loop_rate(model: Any, texts: Sequence[str], n: int = 3, repeats: int = 3) -> RateResult:
    """How many replies loop: some ``n``-gram of tokens occurs ``repeats`` times or more.

    Example:
        >>> from steerlens.testing import tiny_model
        >>> loop_rate(tiny_model(), ["la la la la la la la", "the cat sat"], n=2).successes
        1
    """
    _check_n(n)
    _check_n(repeats, "repeats")
    items = _texts(texts)
    loops = []
    for text in items:
        counts = Counter(_ngrams(runtime.encode(model, text), n))
        loops.append(bool(counts) and max(counts.values()) >= repeats)
    return RateResult.from_outcomes(loops, texts=items)


@torch.no_grad()
def side_effect_kl(
    model: Any,
    prompts: Sequence[str],
    steering: SteeringLike | Sequence[SteeringLike],
    *,
    chat: bool | None = None,
    bos: bool = False,
    batch_size: int = 16,
    progress: bool | None = None,
) -> MetricResult:
    """``KL(unsteered || steered)`` of the next-token distribution after each prompt (nats):
    how much the vector changes the model where the behavior should not change (neutral
    prompts). 0 means untouched. ``progress``: bars over the prompts when there is more than
    one batch.

    Example:
        >>> import torch
        >>> from steerlens import Steering
        >>> from steerlens.testing import tiny_model
        >>> model = tiny_model()
        >>> side_effect_kl(model, ["the cat"], Steering(torch.zeros(64), layer=1)).mean
        0.0
    """
    items = runtime.check_prompts(prompts)
    rows = [
        runtime.encode(model, t, bos=bos) for t in runtime.format_prompts(model, items, chat=chat)
    ]
    kw: dict[str, Any] = {"batch_size": batch_size, "progress": progress}
    base = runtime.last_logits(model, rows, **kw).log_softmax(-1)
    with steer(model, steering):
        steered = runtime.last_logits(model, rows, **kw)
    kl = runtime.kl_divergence(base, steered).clamp_min(0.0)
    return MetricResult.of("side-effect KL", "nats", kl.double().tolist())


@dataclass(frozen=True)
class CoherenceReport:
    """Coherence of steered generations beside unsteered ones (see `coherence`).

    Attributes:
        prompts: the prompts generated from.
        unsteered, steered: the replies.
        nll: ``"unsteered"``/``"steered"`` -> the unsteered model's reply NLL.
        distinct: ``"unsteered"``/``"steered"`` -> distinct-n of the replies.
        loops: ``"unsteered"``/``"steered"`` -> the loop rate.
        side_effect: KL on the neutral prompts (``None`` without them).
        nll_ratio: steered over unsteered mean NLL (1 = as fluent).
    """

    prompts: tuple[str, ...]
    unsteered: tuple[str, ...]
    steered: tuple[str, ...]
    nll: dict[str, MetricResult]
    distinct: dict[str, MetricResult]
    loops: dict[str, RateResult]
    side_effect: MetricResult | None

    @property
    def nll_ratio(self) -> float:
        return self.nll["steered"].mean / self.nll["unsteered"].mean

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready)."""
        return to_plain(self, include=["nll_ratio"])

    def __repr__(self) -> str:
        lines = [f"CoherenceReport ({len(self.prompts)} prompts; steered vs unsteered)"]
        for key in ("unsteered", "steered"):
            loops = self.loops[key]
            lines.append(
                f"  {key:>9}: {self.nll[key]!r}; {self.distinct[key]!r}; loops "
                f"{loops.successes}/{loops.n}"
            )
        lines.append(f"  NLL ratio (steered / unsteered): {self.nll_ratio:.3g}")
        if self.side_effect is not None:
            lines.append(f"  {self.side_effect!r}")
        return "\n".join(lines)


def coherence(
    model: Any,
    prompts: Sequence[str],
    steering: SteeringLike | Sequence[SteeringLike],
    *,
    neutral_prompts: Sequence[str] | None = None,
    max_new_tokens: int = 48,
    chat: bool | None = None,
    n: int = 3,
    batch_size: int = 16,
) -> CoherenceReport:
    """Greedy replies to ``prompts`` with and without ``steering``, scored for fluency (the
    unsteered model's NLL), diversity (distinct-n) and loops; with ``neutral_prompts``, also
    the side-effect KL there.

    Example:
        >>> import torch
        >>> from steerlens import Steering
        >>> from steerlens.testing import tiny_model
        >>> rep = coherence(tiny_model(), ["the cat", "a dog"], Steering(torch.ones(64), layer=1),
        ...                 neutral_prompts=["in the"], max_new_tokens=6)
        >>> sorted(rep.nll), rep.side_effect is not None
        (['steered', 'unsteered'], True)
    """
    items = runtime.check_prompts(prompts)
    kw: dict[str, Any] = {"max_new_tokens": max_new_tokens, "chat": chat, "batch_size": batch_size}
    replies = {
        "unsteered": list(generate(model, items, None, **kw)),
        "steered": list(generate(model, items, steering, **kw)),
    }
    side = None
    if neutral_prompts is not None:
        side = side_effect_kl(model, neutral_prompts, steering, chat=chat, batch_size=batch_size)
    return CoherenceReport(
        prompts=tuple(items),
        unsteered=tuple(replies["unsteered"]),
        steered=tuple(replies["steered"]),
        nll={k: reply_nll(model, items, r, chat=chat) for k, r in replies.items()},
        distinct={k: distinct_n(model, r, n) for k, r in replies.items()},
        loops={k: loop_rate(model, r, n) for k, r in replies.items()},
        side_effect=side,
    )


__all__ = [
    "CoherenceReport",
    "MetricResult",
    "bootstrap_interval",
    "coherence",
    "distinct_n",
    "loop_rate",
    "reply_nll",
    "side_effect_kl",
]
