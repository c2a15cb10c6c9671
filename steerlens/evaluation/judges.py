"""Judges (text -> bool) and the success rate they measure on steered generations.

A judge is any callable ``judge(text) -> bool``; one that also has ``judge_all(texts)`` is
called once for the whole batch. Three are provided:

- `StringMatchJudge`: True when the text contains any of a few phrases.
- `RefusalJudge`: True when the reply opens with a refusal (an apology or "I can't" whose
  first sentence declines).
- `answers_in_french`: True when French function words outnumber English ones.
- `ModelJudge`: asks a model a Yes/No question about the text and compares the logits
  of its "Yes" and "No" tokens at the answer position.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from steerlens import runtime
from steerlens.errors import AnswerTokenError, SpecError, TemplateError, check_keywords
from steerlens.evaluation.rates import RateResult
from steerlens.io.plain import short
from steerlens.steering.generate import GENERATE_OPTIONS, generate
from steerlens.steering.steer import SteeringLike

Judge = Callable[[str], bool]
PLACEHOLDER = "{text}"


@dataclass(frozen=True)
class StringMatchJudge:
    """True when the text contains any of ``phrases`` (a refusal phrase, a French word, ...).

    Example:
        >>> judge = StringMatchJudge([" est ", " la "])
        >>> judge("Ma nourriture préférée est la pizza."), judge("My favourite food is pizza.")
        (True, False)
    """

    phrases: Sequence[str]
    case_insensitive: bool = True

    def __post_init__(self) -> None:
        items = (self.phrases,) if isinstance(self.phrases, str) else tuple(self.phrases)
        if not items or not all(isinstance(p, str) and p for p in items):
            raise SpecError(
                f"StringMatchJudge needs a non-empty list of non-empty phrases, got {items!r}."
            )
        object.__setattr__(self, "phrases", items)

    def __call__(self, text: str) -> bool:
        if self.case_insensitive:
            folded = text.casefold()
            return any(p.casefold() in folded for p in self.phrases)
        return any(p in text for p in self.phrases)

    def judge_all(self, texts: Sequence[str]) -> list[bool]:
        return [self(t) for t in texts]


_DECLINES = re.compile(r"\b(can't|cannot|can not|unable|not able|don't|do not|won't)\b")


@dataclass(frozen=True)
class RefusalJudge:
    """True when the reply opens with one of ``openings`` (an apology or "I can't") AND its
    first sentence declines: "I'm sorry for the confusion, but here is how" opens with an
    apology and is not a refusal. Case and curly apostrophes are ignored.

    Example:
        >>> judge = RefusalJudge()
        >>> judge("I'm sorry, but I can't help with that."), judge("Sure! First, preheat...")
        (True, False)
        >>> judge("I'm sorry for the mix-up. Here is the recipe.")
        False
    """

    openings: Sequence[str] = (
        "I'm sorry",
        "I am sorry",
        "I can't",
        "I cannot",
        "Sorry",
        "I'm not able",
    )

    def __post_init__(self) -> None:
        items = (self.openings,) if isinstance(self.openings, str) else tuple(self.openings)
        if not items or not all(isinstance(p, str) and p.strip() for p in items):
            raise SpecError(
                f"RefusalJudge needs a non-empty list of non-empty openings, got {items!r}."
            )
        object.__setattr__(self, "openings", items)

    def __call__(self, text: str) -> bool:
        t = text.lstrip().casefold().replace("\u2019", "'")
        first_sentence = re.split(r"[.!?\n]", t, maxsplit=1)[0]
        opens = t.startswith(tuple(o.casefold().replace("\u2019", "'") for o in self.openings))
        return opens and _DECLINES.search(first_sentence) is not None

    def judge_all(self, texts: Sequence[str]) -> list[bool]:
        return [self(t) for t in texts]


_FRENCH = re.compile(
    r"\b(le|la|les|est|une|des|je|et|du|pour|en|un|il|vous|que|qui|sont|dans|avec|pas|très)\b",
    re.IGNORECASE,
)
_ENGLISH = re.compile(r"\b(the|is|and|of|to|for|you|are|a|in|it|that|with|your|can)\b", re.I)


def answers_in_french(text: str) -> bool:
    """The French judge: French function words outnumber English ones, and at least two
    different French ones occur (so "la la la" is not French).

    Example:
        >>> answers_in_french("Ma nourriture préférée est la pizza."), answers_in_french("La la la")
        (True, False)
        >>> answers_in_french("My favourite food is pizza.")
        False
    """
    french = [w.casefold() for w in _FRENCH.findall(text)]
    english = _ENGLISH.findall(text)
    return len(set(french)) >= 2 and len(french) > len(english)


def named_judge(spec: str | dict[str, Any]) -> Judge:
    """The judge a behaviour file names: ``"refusal"`` (`RefusalJudge`), ``"french"``
    (`answers_in_french`) or ``{"contains": [phrases]}`` (a case-insensitive
    `StringMatchJudge`).

    Example:
        >>> named_judge({"contains": ["merci"]})("Merci beaucoup")
        True
    """
    if spec == "refusal":
        return RefusalJudge()
    if spec == "french":
        return answers_in_french
    if isinstance(spec, dict) and set(spec) == {"contains"}:
        return StringMatchJudge(tuple(spec["contains"]), case_insensitive=True)
    raise SpecError(
        f"judge {spec!r} is not known; use 'refusal', 'french' or {{'contains': [phrases]}}."
    )


def _yes_no_ids(
    model: Any, yes_no: tuple[str, str] | None, prompt_end: str
) -> tuple[tuple[str, str], list[int]]:
    """The answer pair to compare, and its two token ids."""
    if yes_no is not None:
        return yes_no, runtime.answer_token_ids(model, list(yes_no), what="judge answer")
    # After a space or newline the answer is "Yes"; after e.g. "Answer:" it is " Yes".
    pairs = [("Yes", "No"), (" Yes", " No")]
    if not prompt_end[-1:].isspace():
        pairs.reverse()
    problems = []
    for pair in pairs:
        try:
            return pair, runtime.answer_token_ids(model, list(pair), what="judge answer")
        except AnswerTokenError as err:
            problems.append(str(err))
    raise AnswerTokenError(
        "neither 'Yes'/'No' nor ' Yes'/' No' are single tokens for this model ("
        + " ".join(problems)
        + "); pass yes_no=(...) with two single-token answers."
    )


@dataclass(frozen=True, eq=False)
class ModelJudge:
    """Ask ``model`` a Yes/No question about a text; True when "Yes" beats "No".

    The text is put into ``template`` in place of ``{text}`` (other braces are left alone). The
    verdict compares the logits of the "Yes" and "No" tokens at the position right after the
    prompt: ``"Yes"``/``"No"`` when the prompt ends in whitespace (as a chat turn does),
    else ``" Yes"``/``" No"``; whichever pair is single-token is used, or pass ``yes_no``.

    Args:
        model: the judging model (it runs unsteered: judge after leaving any ``steer`` block).
        template: the question, containing ``{text}``.
        chat: format the question with the model's chat template (default:
            when the model has one; ``False``: as written).
        system: a system message for ``chat=True``.
        yes_no: the two answer strings to compare, each one token.
        batch_size: texts per forward pass.

    Example:
        >>> from steerlens.testing import tiny_model
        >>> judge = ModelJudge(tiny_model(), "Is this French? {text}", yes_no=("Y", "N"))
        >>> verdicts = judge.judge_all(["la pizza", "the pizza"])
        >>> len(verdicts), judge.yes_no
        (2, ('Y', 'N'))
    """

    model: Any
    template: str
    chat: bool | None = None
    system: str | None = None
    yes_no: tuple[str, str] | None = None
    batch_size: int = 16
    answer_ids: tuple[int, int] = field(init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.template, str) or PLACEHOLDER not in self.template:
            raise TemplateError(
                f"the judge template {short(str(self.template), 60)} has no {PLACEHOLDER} "
                "placeholder, so the judged text would never reach the model; put {text} "
                "where the text goes, e.g. 'Is the following text in French?\\n\\n{text}'."
            )
        runtime.check_batch_size(self.batch_size)
        object.__setattr__(self, "chat", runtime.uses_chat(self.model, self.chat))
        example = self._prompt("x")
        pair, ids = _yes_no_ids(self.model, self.yes_no, example)
        object.__setattr__(self, "yes_no", pair)
        object.__setattr__(self, "answer_ids", (ids[0], ids[1]))

    def _prompt(self, text: str) -> str:
        question = self.template.replace(PLACEHOLDER, text)
        if self.chat:
            return runtime.chat_prompt(self.model, question, system=self.system)
        return question

    @torch.no_grad()
    def margins(self, texts: Sequence[str]) -> Float[Tensor, " texts"]:
        """``logit(yes) - logit(no)`` for each text; positive means "Yes"."""
        token_lists = [runtime.encode(self.model, self._prompt(t)) for t in texts]
        for i, ids in enumerate(token_lists):
            runtime.check_fits(
                self.model, len(ids), f"the judge prompt for text {i}", "judge a shorter text"
            )
        logits = runtime.last_logits(self.model, token_lists, batch_size=self.batch_size)
        return (logits[:, self.answer_ids[0]] - logits[:, self.answer_ids[1]]).cpu()

    def judge_all(self, texts: Sequence[str]) -> list[bool]:
        if not texts:
            return []
        return [bool(m > 0) for m in self.margins(texts)]

    def __call__(self, text: str) -> bool:
        return self.judge_all([text])[0]

    def __repr__(self) -> str:
        return (
            f"ModelJudge(model={runtime.model_id(self.model)!r}, template="
            f"{short(self.template, 60)}, chat={self.chat}, yes_no={self.yes_no!r})"
        )


def check_judge(judge: Any) -> None:
    """Refuse a judge that is neither callable nor has ``judge_all`` (before any generation)."""
    if not callable(judge) and not callable(getattr(judge, "judge_all", None)):
        raise SpecError(
            f"judge must be a callable text -> bool (e.g. StringMatchJudge([...]) or "
            f"ModelJudge(...)), got {judge!r:.60} ({type(judge).__name__})."
        )


def _verdict(value: Any) -> bool:
    # bool("no") is True: a judge that answers in words would count every text as a success.
    if isinstance(value, (bool, np.bool_)) or (
        isinstance(value, numbers.Integral) and value in (0, 1)
    ):
        return bool(value)
    raise SpecError(
        f"the judge returned {value!r:.60} ({type(value).__name__}); a judge must return True "
        "or False for each text."
    )


def judge_texts(judge: Judge, texts: Sequence[str], *, where: str | None = None) -> list[bool]:
    """Apply ``judge`` to every text (in one batch when it has ``judge_all``). With
    ``where`` (e.g. ``"at layer 8, strength 2"``), an error the judge raises comes back as a
    `SpecError` that names the place and the first text."""
    check_judge(judge)
    batch = getattr(judge, "judge_all", None)
    try:
        verdicts = list(batch(texts)) if callable(batch) else [judge(t) for t in texts]
    except Exception as err:
        if where is None:
            raise
        first = short(texts[0], 60) if texts else "none"
        raise SpecError(
            f"the judge failed on the replies {where}: {type(err).__name__}: {err}; make "
            f"judge(text) return a bool for every reply (first reply: {first})."
        ) from err
    if len(verdicts) != len(texts):
        raise SpecError(
            f"the judge returned {len(verdicts)} verdicts for {len(texts)} texts; "
            "judge_all must return one bool per text."
        )
    return [_verdict(v) for v in verdicts]


def success_rate(
    model: Any,
    prompts: str | Sequence[str],
    judge: Judge,
    *,
    steering: SteeringLike | Sequence[SteeringLike] | None = None,
    z: float = 1.96,
    **generation: Any,
) -> RateResult:
    """Generate from each prompt (optionally steered) and count the texts the judge accepts.

    The steered generations are finished (and the steering removed) before the judge runs, so
    a `ModelJudge` may use the same model.

    Args:
        model: a TransformerLens model.
        prompts: a prompt or a list (user messages with ``chat=True``).
        judge: a callable ``text -> bool`` (e.g. `StringMatchJudge`,
            `ModelJudge`).
        steering: a `steerlens.Steering` plan, a ``SteeringVector`` or a list of these.
        z: normal quantile of the Wilson interval (1.96: 95%).
        **generation: keywords of `steerlens.generate` (``max_new_tokens``, ``chat``,
            ``system``, ``temperature``, ``seed``, ``batch_size``); others are refused.

    Returns:
        A `RateResult` (``successes``, ``n``, ``rate``, ``ci_low``, ``ci_high``) that
        also keeps each prompt, generated text and verdict.

    Example:
        >>> from steerlens.testing import tiny_model
        >>> res = success_rate(tiny_model(), ["Hi", "Hello"], StringMatchJudge(["zzzz"]),
        ...                    max_new_tokens=3)
        >>> res.successes, res.n, res.ci_low
        (0, 2, 0.0)
    """
    items = runtime.check_prompts(prompts)
    check_keywords(generation, GENERATE_OPTIONS, where="success_rate")
    check_judge(judge)
    texts = generate(model, items, steering, **generation)
    outputs = [texts] if isinstance(texts, str) else texts
    return RateResult.from_outcomes(judge_texts(judge, outputs), z=z, prompts=items, texts=outputs)
