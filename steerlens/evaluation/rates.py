"""Rates with confidence intervals, and behavior-change rates on multiple-choice prompts.

`behavior_change_rates` gives the four numbers of the paper's Poser table: on a
*positive* prompt set (where adding the vector should change the answer) and a *negative* set
(where subtracting it should), the fraction of prompts whose answer flips when the vector is
added and when it is subtracted. A prompt's answer is the answer token with the highest logit
at the position after the prompt (the greedy choice among the answers, ignoring other tokens).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from steerlens import runtime
from steerlens.errors import InputError, SpecError, SteerlensError
from steerlens.io.plain import short, table, to_plain
from steerlens.steering.steer import SteeringLike, as_plans, describe_steering, steer


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval for a proportion: ``k`` successes in ``n`` trials.

    ``z = 1.96`` gives a 95% interval. Unlike the normal approximation it stays inside
    ``[0, 1]`` and is not empty at ``k = 0`` or ``k = n``.

    Example:
        >>> [round(x, 4) for x in wilson_interval(5, 10)]
        [0.2366, 0.7634]
        >>> wilson_interval(0, 10)[0]
        0.0
    """
    for name, value in (("k", k), ("n", n)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(f"{name} must be an int, got {value!r}.")
    if n < 1:
        raise SpecError(f"a rate needs at least one trial, got n={n}.")
    if not 0 <= k <= n:
        raise SpecError(f"successes must be between 0 and n={n}, got k={k}.")
    if not z > 0:
        raise SpecError(f"z must be > 0 (1.96 for a 95% interval), got {z}.")
    p, z2 = k / n, z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return low, high


@dataclass(frozen=True)
class RateResult:
    """A rate ``successes / n`` with its Wilson interval.

    Attributes:
        successes: the count ``k``.
        n: the number of trials.
        rate: ``k / n``.
        ci_low, ci_high: the Wilson interval (95% for ``z = 1.96``).
        z: the normal quantile of the interval.
        prompts, texts, outcomes: per-trial records where available (e.g. from
            `steerlens.evaluation.success_rate`: each prompt, the generated text and the
            judge's verdict).
    """

    successes: int
    n: int
    rate: float
    ci_low: float
    ci_high: float
    z: float = 1.96
    prompts: tuple[str, ...] = ()
    texts: tuple[str, ...] = ()
    outcomes: tuple[bool, ...] = ()

    @classmethod
    def from_outcomes(
        cls,
        outcomes: Sequence[bool],
        *,
        z: float = 1.96,
        prompts: Sequence[str] = (),
        texts: Sequence[str] = (),
    ) -> RateResult:
        """The rate of ``True`` among ``outcomes``, keeping the per-trial records.

        Example:
            >>> RateResult.from_outcomes([True, False, True, True])
            RateResult(3/4 = 75.0%, 95% CI [30.1%, 95.4%])
        """
        flags = tuple(bool(o) for o in outcomes)
        k, n = sum(flags), len(flags)
        low, high = wilson_interval(k, n, z)
        return cls(k, n, k / n, low, high, z, tuple(prompts), tuple(texts), flags)

    @property
    def fraction(self) -> str:
        """``"k/n"``."""
        return f"{self.successes}/{self.n}"

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, floats, strings) for saving as JSON."""
        return to_plain(self)

    def summary(self) -> str:
        level = math.erf(self.z / math.sqrt(2))
        return (
            f"{self.fraction} = {self.rate:.1%}, {level:.0%} CI "
            f"[{self.ci_low:.1%}, {self.ci_high:.1%}]"
        )

    def __repr__(self) -> str:
        head = f"RateResult({self.summary()})"
        if not self.texts:
            return head
        rows = [
            [str(i), short(p) if self.prompts else "", short(t, 48), str(o)]
            for i, (p, t, o) in enumerate(
                zip(self.prompts or [""] * len(self.texts), self.texts, self.outcomes, strict=True)
            )
        ]
        return head + "\n" + table(["#", "prompt", "text", "success"], rows, max_rows=8)


@dataclass(frozen=True)
class AnswerChoices:
    """The answer chosen on each prompt of one set: unsteered, with ``+v`` and with ``-v``."""

    prompts: tuple[str, ...]
    unsteered: tuple[str, ...]
    added: tuple[str, ...]
    subtracted: tuple[str, ...]

    def flipped(self, which: str) -> tuple[bool, ...]:
        """Per prompt: did the answer change when the vector was ``"added"``/``"subtracted"``?"""
        if which not in ("added", "subtracted"):
            raise SpecError(f"which must be 'added' or 'subtracted', got {which!r}.")
        steered = self.added if which == "added" else self.subtracted
        return tuple(a != b for a, b in zip(self.unsteered, steered, strict=True))


@dataclass(frozen=True)
class BehaviorRates:
    """Behavior-change rates of a vector on a positive and a negative prompt set.

    Attributes:
        answers: the answer strings compared.
        strength: the strength added and subtracted.
        steering: a description of the ``+v`` steering.
        positive, negative: the answers chosen on each prompt set.
    """

    answers: tuple[str, ...]
    strength: float
    steering: str
    positive: AnswerChoices
    negative: AnswerChoices

    def _rate(self, choices: AnswerChoices, which: str) -> RateResult:
        return RateResult.from_outcomes(choices.flipped(which), prompts=choices.prompts)

    @property
    def add_positive(self) -> RateResult:
        """Fraction of positive prompts whose answer flips when the vector is added."""
        return self._rate(self.positive, "added")

    @property
    def subtract_positive(self) -> RateResult:
        """Fraction of positive prompts whose answer flips when the vector is subtracted."""
        return self._rate(self.positive, "subtracted")

    @property
    def add_negative(self) -> RateResult:
        """Fraction of negative prompts whose answer flips when the vector is added."""
        return self._rate(self.negative, "added")

    @property
    def subtract_negative(self) -> RateResult:
        """Fraction of negative prompts whose answer flips when the vector is subtracted."""
        return self._rate(self.negative, "subtracted")

    def to_dict(self) -> dict[str, Any]:
        """Plain data, with the four rates (``k``, ``n``, rate, interval) included."""
        out: dict[str, Any] = to_plain(self)
        for name in ("add_positive", "subtract_positive", "add_negative", "subtract_negative"):
            r = getattr(self, name)
            out[name] = {k: v for k, v in to_plain(r).items() if k in _RATE_FIELDS}
        return out

    def __repr__(self) -> str:
        def cell(r: RateResult) -> str:
            return f"{r.fraction} ({r.rate:.1%})"

        rows = [
            [
                name,
                str(len(c.prompts)),
                cell(self._rate(c, "added")),
                cell(self._rate(c, "subtracted")),
            ]
            for name, c in (("positive", self.positive), ("negative", self.negative))
        ]
        answers = "/".join(repr(a) for a in self.answers)
        head = (
            f"BehaviorRates: answers {answers} flipped, strength {self.strength:g} "
            f"({self.steering})\n"
        )
        return head + table(["prompts", "n", "flipped by +v", "flipped by -v"], rows)


_RATE_FIELDS = ("successes", "n", "rate", "ci_low", "ci_high", "z")


def choose_answers(
    logits: Float[Tensor, "prompts vocab"], answer_ids: Sequence[int]
) -> Int[Tensor, " prompts"]:
    """Index of the answer token with the highest logit, per row of ``[prompts, vocab]``."""
    ids = torch.tensor(list(answer_ids), device=logits.device)
    return logits[:, ids].argmax(dim=-1)


@torch.no_grad()
def behavior_change_rates(
    model: Any,
    steering: SteeringLike | Sequence[SteeringLike],
    positive_prompts: Sequence[str],
    negative_prompts: Sequence[str],
    answers: Sequence[str] = ("A", "B"),
    *,
    chat: bool | None = None,
    system: str | None = None,
    batch_size: int = 16,
    progress: bool | None = None,
) -> BehaviorRates:
    """How often adding / subtracting a vector flips a multiple-choice answer (Poser table).

    Each prompt is answered three times: unsteered, steered with ``steering`` and with each
    plan's strength negated. The answer is the answer token with the highest logit right after the
    prompt (with ``chat=True``: at the start of the assistant's turn).

    Args:
        model: a TransformerLens model.
        steering: a `steerlens.Steering` plan, a ``SteeringVector`` or a list of these.
        positive_prompts: prompts where adding the vector should change the answer.
        negative_prompts: prompts where subtracting it should.
        answers: the answer strings; each must be exactly one token.
        chat: format prompts with the chat template (default:
            when the model has one; ``False``: as written).
        system: a system message for ``chat=True``.
        batch_size: prompts per forward pass.
        progress: a bar over the prompts of each pass when there is more than one batch
            (default: in a terminal or a notebook).

    Returns:
        A `BehaviorRates`: ``add_positive``, ``subtract_positive``, ``add_negative``
        and ``subtract_negative`` are `RateResult`\\ s (``k/n`` with an interval).

    Raises:
        AnswerTokenError: an answer that is not a single token.

    Example:
        >>> import torch
        >>> from steerlens import Steering
        >>> from steerlens.testing import tiny_model
        >>> model = tiny_model()
        >>> res = behavior_change_rates(
        ...     model, Steering(torch.ones(64), layer=1), ["Pick A or B"], ["Pick B or A"]
        ... )
        >>> res.add_positive.n, res.subtract_negative.n
        (1, 1)
    """
    runtime.check_batch_size(batch_size)
    plans = as_plans(steering)
    if not plans:
        raise SpecError("behavior_change_rates needs steering; got None.")
    sets = {}
    for name, prompts in (("positive", positive_prompts), ("negative", negative_prompts)):
        try:
            sets[name] = runtime.check_prompts(prompts)
        except SteerlensError as err:
            raise InputError(f"{name}_prompts: {err}") from None
    answer_list = list(answers) if not isinstance(answers, str) else [answers]
    answer_ids = runtime.answer_token_ids(model, answer_list)
    tokens = {}
    for name, prompts in sets.items():
        tokens[name] = [
            runtime.encode(model, t)
            for t in runtime.format_prompts(model, prompts, chat=chat, system=system)
        ]
        for i, ids in enumerate(tokens[name]):
            runtime.check_fits(model, len(ids), f"{name} prompt {i}", "use a shorter prompt")
    everything = tokens["positive"] + tokens["negative"]
    chosen = {}
    described = ""
    for label, sign in (("unsteered", 0.0), ("added", 1.0), ("subtracted", -1.0)):
        with steer(model, [p.scaled(sign) for p in plans] if sign else None) as handle:
            logits = runtime.last_logits(
                model, everything, batch_size=batch_size, progress=progress
            )
            if sign > 0:
                described = describe_steering(handle.steerings)
        chosen[label] = [answer_list[i] for i in choose_answers(logits, answer_ids).tolist()]
    n_pos = len(tokens["positive"])

    def choices(name: str, part: slice) -> AnswerChoices:
        return AnswerChoices(
            tuple(sets[name]),
            tuple(chosen["unsteered"][part]),
            tuple(chosen["added"][part]),
            tuple(chosen["subtracted"][part]),
        )

    return BehaviorRates(
        answers=tuple(answer_list),
        strength=float(plans[0].strength),
        steering=described,
        positive=choices("positive", slice(0, n_pos)),
        negative=choices("negative", slice(n_pos, None)),
    )
