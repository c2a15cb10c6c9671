"""Training data for one-shot steering: ``Datapoint`` and its exact tokenisation.

A completion is scored on exactly the tokens that follow the prompt. When tokenising
``prompt + completion`` jointly merges tokens across the boundary, the joint tokens would not
start with the prompt's tokens; steerlens then scores the completion tokenised on its own,
appended to the prompt's tokens, and warns (never silently scoring other tokens).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from steerlens import _tl
from steerlens.errors import SteerlensError
from steerlens.positions import Positions, PositionsLike, as_positions


@dataclass(frozen=True)
class Datapoint:
    """One prompt with completions to promote and/or suppress.

    Args:
        prompt: the full prompt text as the model sees it (use :meth:`chat` for a user message).
        promote: completions to make likely.
        suppress: completions to make unlikely.
        negate: apply ``-v`` on this datapoint (a vector that adds a behaviour here and
            removes it when subtracted elsewhere).
        positions: where to steer on this datapoint (default: the optimizer's setting).
        promote_targets: per-completion target losses (nats) for the target-loss stop rule.
        suppress_targets: the same for the suppress completions.

    Example:
        >>> Datapoint("Q: 2+2?\\nA:", promote=[" 4"]).completions
        [(' 4', 'promote')]
    """

    prompt: str
    promote: Sequence[str] = ()
    suppress: Sequence[str] = ()
    negate: bool = False
    positions: PositionsLike = None
    promote_targets: Sequence[float] | None = None
    suppress_targets: Sequence[float] | None = None

    def __post_init__(self) -> None:
        for name in ("promote", "suppress"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, (value,))
            else:
                object.__setattr__(self, name, tuple(value))
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise SteerlensError("a Datapoint's prompt is empty; give the prompt text.")
        if not self.promote and not self.suppress:
            raise SteerlensError(
                f"Datapoint for prompt {self.prompt[:40]!r} has no promote and no suppress "
                "completions; pass promote=[...] and/or suppress=[...]."
            )
        for text, kind in self.completions:
            if not isinstance(text, str) or text == "":
                raise SteerlensError(
                    f"a {kind} completion is empty or not text ({text!r}); every completion "
                    "needs text."
                )
        for name, comps in (("promote", self.promote), ("suppress", self.suppress)):
            targets = getattr(self, f"{name}_targets")
            if targets is not None and len(targets) != len(comps):
                raise SteerlensError(
                    f"{name}_targets has {len(targets)} values for {len(comps)} {name} "
                    "completions; give one target per completion."
                )
        as_positions(self.positions)  # validate early

    @classmethod
    def chat(
        cls, model: Any, user_message: str, *, system: str | None = None, **kwargs: Any
    ) -> Datapoint:
        """A datapoint whose prompt is ``user_message`` in the model's chat template."""
        return cls(_tl.chat_prompt(model, user_message, system=system), **kwargs)

    @property
    def completions(self) -> list[tuple[str, str]]:
        """``(text, kind)`` pairs, promote completions first."""
        return [(c, "promote") for c in self.promote] + [(c, "suppress") for c in self.suppress]

    def targets(self) -> list[float | None]:
        pt = list(self.promote_targets) if self.promote_targets is not None else []
        st = list(self.suppress_targets) if self.suppress_targets is not None else []
        return [pt[i] if pt else None for i in range(len(self.promote))] + [
            st[i] if st else None for i in range(len(self.suppress))
        ]


@dataclass(frozen=True)
class TokenizedCompletion:
    text: str
    kind: str  # "promote" | "suppress"
    tokens: list[int]
    target: float | None
    boundary_merged: bool


@dataclass(frozen=True)
class TokenizedDatapoint:
    datapoint: Datapoint
    prompt_tokens: list[int]
    completions: list[TokenizedCompletion] = field(default_factory=list)
    positions: Positions = field(default_factory=Positions.all)


def tokenize_completion(model: Any, prompt_tokens: list[int], prompt: str, completion: str):
    """The tokens of ``completion`` that follow ``prompt``, and whether the boundary merged."""
    joint = _tl.encode(model, prompt + completion)
    n = len(prompt_tokens)
    if joint[:n] == prompt_tokens and len(joint) > n:
        return joint[n:], False
    alone = _tl.encode(model, completion)
    return alone, True


def completion_tokens(
    model: Any,
    prompt_tokens: list[int],
    prompt: str,
    completion: str,
    *,
    label: str = "completion",
    where: str = "its prompt",
) -> tuple[list[int], bool]:
    """:func:`tokenize_completion`, refusing a completion with no tokens and warning when the
    prompt/completion boundary merges. ``label`` and ``where`` name the completion and its
    prompt in the messages."""
    tokens, merged = tokenize_completion(model, prompt_tokens, prompt, completion)
    if not tokens:
        raise SteerlensError(
            f"{label} {completion!r} tokenises to nothing; use a completion with at least one "
            "token."
        )
    if merged:
        warnings.warn(
            f"completion {completion!r} merges with the end of {where} when tokenised jointly; "
            "scoring it tokenised on its own after the prompt's tokens.",
            stacklevel=4,
        )
    return tokens, merged


def tokenize(
    model: Any, datapoints: Datapoint | Sequence[Datapoint], default_positions: PositionsLike = None
) -> list[TokenizedDatapoint]:
    """Tokenise every datapoint; errors name the completion that cannot be scored."""
    if isinstance(datapoints, Datapoint):
        datapoints = [datapoints]
    if not datapoints:
        raise SteerlensError("no datapoints given; pass at least one steerlens.Datapoint.")
    out = []
    for dp in datapoints:
        if not isinstance(dp, Datapoint):
            raise SteerlensError(f"expected steerlens.Datapoint, got {type(dp).__name__}.")
        prompt_tokens = _tl.encode(model, dp.prompt)
        if not prompt_tokens:
            raise SteerlensError(f"prompt {dp.prompt!r} tokenises to nothing.")
        comps = []
        for (text, kind), target in zip(dp.completions, dp.targets(), strict=True):
            tokens, merged = completion_tokens(
                model, prompt_tokens, dp.prompt, text, label=f"{kind} completion"
            )
            comps.append(TokenizedCompletion(text, kind, tokens, target, merged))
        positions = as_positions(dp.positions if dp.positions is not None else default_positions)
        out.append(TokenizedDatapoint(dp, prompt_tokens, comps, positions))
    return out
