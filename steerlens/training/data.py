"""Training data for one-shot steering: ``Datapoint`` and its exact tokenisation.

A completion is scored on exactly the tokens that follow the prompt
(`steerlens.runtime.completion_tokens`: when tokenising ``prompt + completion`` jointly
merges tokens across the boundary, the completion is tokenised on its own, with a warning).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from steerlens import runtime
from steerlens.errors import InputError, ModelError, SpecError
from steerlens.steering.positions import Positions, PositionsLike, as_positions


def _check_target(value: Any, what: str) -> None:
    # None means "no target for this completion" (the stop rule's value= is used instead).
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise InputError(
            f"{what} must hold finite numbers (target losses in nats) or None, got {value!r}; "
            "e.g. promote_targets=[0.5]."
        )


@dataclass(frozen=True)
class Datapoint:
    """One prompt with completions to promote and/or suppress.

    Args:
        prompt: a user message, or with ``chat=False`` the full prompt text as the model
            sees it.
        promote: completions to make likely.
        suppress: completions to make unlikely.
        negate: apply ``-v`` on this datapoint (a vector that adds a behavior here and
            removes it when subtracted elsewhere).
        positions: where to steer on this datapoint (default: the optimizer's setting).
        promote_targets: per-completion target losses (nats) for the target-loss stop rule.
        suppress_targets: the same for the suppress completions.
        chat: put ``prompt`` in the model's chat template as a user message when it is
            tokenised (default: when the model has one; ``False``: as written; see
            `steerlens.runtime.uses_chat`). `Datapoint.from_message` formats it at once,
            with a system message.

    Example:
        >>> Datapoint("Q: 2+2?\\nA:", promote=[" 4"], chat=False).completions
        [(' 4', 'promote')]
        >>> from steerlens.testing import tiny_model
        >>> Datapoint("Hi", promote=[" there"]).for_model(tiny_model()).prompt
        '<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'
    """

    prompt: str
    promote: Sequence[str] = ()
    suppress: Sequence[str] = ()
    negate: bool = False
    positions: PositionsLike = None
    promote_targets: Sequence[float] | None = None
    suppress_targets: Sequence[float] | None = None
    chat: bool | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str):
            raise InputError(
                f"a Datapoint's prompt must be a str, got {type(self.prompt).__name__} "
                f"({self.prompt!r:.60}); pass the prompt text (decode bytes first)."
            )
        if not self.prompt.strip():
            raise InputError("a Datapoint's prompt is empty; give the prompt text.")
        for name in ("promote", "suppress"):
            value = getattr(self, name)
            if value is None:
                value = ()
            if isinstance(value, str):
                value = (value,)
            if not isinstance(value, (list, tuple)):
                raise InputError(
                    f"{name}= must be a completion or a list of completions, got "
                    f"{type(value).__name__} ({value!r:.60})."
                )
            object.__setattr__(self, name, tuple(value))
        if not self.promote and not self.suppress:
            raise InputError(
                f"Datapoint for prompt {self.prompt[:40]!r} has no promote and no suppress "
                "completions; pass promote=[...] and/or suppress=[...]."
            )
        for text, kind in self.completions:
            if not isinstance(text, str) or text == "":
                raise InputError(
                    f"a {kind} completion is empty or not text ({text!r}); every completion "
                    "needs text."
                )
        for name, comps in (("promote", self.promote), ("suppress", self.suppress)):
            targets = getattr(self, f"{name}_targets")
            if targets is not None and len(targets) != len(comps):
                raise InputError(
                    f"{name}_targets has {len(targets)} values for {len(comps)} {name} "
                    "completions; give one target per completion."
                )
            for t in targets or ():
                _check_target(t, f"{name}_targets")
        if not isinstance(self.negate, bool):
            # A truthy string such as "no" would otherwise flip the vector's sign.
            raise InputError(
                f"negate must be True or False, got {self.negate!r} ({type(self.negate).__name__})."
            )
        as_positions(self.positions)  # validate early
        if self.chat is not None and not isinstance(self.chat, bool):
            raise InputError(
                f"chat must be True, False or None (the chat template when the model has one), "
                f"got {self.chat!r:.60} ({type(self.chat).__name__})."
            )

    @classmethod
    def from_message(
        cls, model: Any, message: str, *, system: str | None = None, **kwargs: Any
    ) -> Datapoint:
        """A datapoint whose prompt is ``message`` in ``model``'s chat template, formatted now,
        with ``system`` as the system message (``kwargs``: the other fields, e.g.
        ``promote=``). Without a system message, ``Datapoint(message, ...)`` is the same.

        Example:
            >>> from steerlens.testing import tiny_model
            >>> dp = Datapoint.from_message(tiny_model(), "Hi", system="Be brief.",
            ...                             promote=[" there"])
            >>> dp.chat, dp.prompt.startswith("<|im_start|>system\\nBe brief.")
            (False, True)
        """
        if "chat" in kwargs:
            raise InputError(
                "Datapoint.from_message formats the prompt in the chat template itself; drop "
                "chat=, or use Datapoint(prompt, chat=False) for a prompt as written."
            )
        if not runtime.has_chat_template(model):
            raise ModelError(
                f"{runtime.model_id(model)!r} has no chat template, so Datapoint.from_message "
                "cannot format a message; use Datapoint(prompt, chat=False) with the full "
                "prompt text."
            )
        return cls(runtime.chat_prompt(model, message, system=system), chat=False, **kwargs)

    def for_model(self, model: Any) -> Datapoint:
        """This datapoint with its prompt as ``model`` sees it (``chat=False``)."""
        if self.chat is False:
            return self
        text = runtime.format_prompts(model, [self.prompt], chat=self.chat)[0]
        return dataclasses.replace(self, prompt=text, chat=False)

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


def tokenize(
    model: Any,
    datapoints: Datapoint | TokenizedDatapoint | Sequence[Datapoint | TokenizedDatapoint],
    default_positions: PositionsLike = None,
) -> list[TokenizedDatapoint]:
    """Tokenise every datapoint (already tokenised ones pass through); errors name the
    completion that cannot be scored."""
    if isinstance(datapoints, (Datapoint, TokenizedDatapoint)):
        datapoints = [datapoints]
    if isinstance(datapoints, Mapping):
        raise InputError(
            "datapoints must be a Datapoint or a list of them, got a dict; pass list(d.values())."
        )
    if datapoints is None or not datapoints:
        raise InputError("no datapoints given; pass at least one steerlens.Datapoint.")
    out = []
    for dp in datapoints:
        if isinstance(dp, TokenizedDatapoint):  # already exact tokens (e.g. a decoded reply)
            out.append(dp)
            continue
        if not isinstance(dp, Datapoint):
            raise InputError(
                f"expected steerlens.Datapoint, got {type(dp).__name__} ({dp!r:.60}); build "
                "one with Datapoint(prompt, promote=[...])."
            )
        dp = dp.for_model(model)
        prompt_tokens = runtime.encode(model, dp.prompt)
        if not prompt_tokens:
            raise InputError(f"prompt {dp.prompt!r} tokenises to nothing.")
        comps = []
        for (text, kind), target in zip(dp.completions, dp.targets(), strict=True):
            tokens, merged = runtime.completion_tokens(
                model, prompt_tokens, dp.prompt, text, label=f"{kind} completion"
            )
            runtime.check_fits(
                model,
                len(prompt_tokens) + len(tokens),
                f"the prompt {dp.prompt[:40]!r} with its {kind} completion {text[:40]!r}",
                "use a shorter prompt or completion",
            )
            comps.append(TokenizedCompletion(text, kind, tokens, target, merged))
        positions = as_positions(dp.positions if dp.positions is not None else default_positions)
        _check_selects_a_token(positions, len(prompt_tokens), dp.prompt)
        out.append(TokenizedDatapoint(dp, prompt_tokens, comps, positions))
    return out


def _check_selects_a_token(positions: Positions, n_prompt: int, prompt: str) -> None:
    """Refuse a prompt position rule that selects none of the prompt's tokens (it would
    steer nothing, silently)."""
    if positions.kind in ("all", "generated"):
        return
    ctx = runtime.TokenContext.prompts(torch.tensor([n_prompt]))
    mask = positions.mask(ctx, n_prompt)
    if mask is not None and not bool(mask.any()):
        raise SpecError(
            f"positions {positions.describe()!r} select none of the {n_prompt} tokens of the "
            f"prompt {prompt[:40]!r}, so nothing would be steered; pick positions inside the "
            "prompt (indices count from its first token, negative ones from its end)."
        )


@dataclass(frozen=True)
class ScoreLayout:
    """What is scored: one entry per completion token, in datapoint/completion order.

    ``targets[t]`` is token ``t``'s id and ``completion_index[t]`` its completion; per
    completion: ``is_suppress``, ``lengths`` (tokens), ``labels``, ``loss_targets`` (the
    target-loss stop rule's bound, if any) and ``datapoint_of``.
    """

    targets: Int[Tensor, " n"]
    completion_index: Int[Tensor, " n"]
    is_suppress: Bool[Tensor, " completions"]
    lengths: Float[Tensor, " completions"]
    labels: list[str]
    loss_targets: list[float | None]
    datapoint_of: list[int]


def score_layout(data: Sequence[TokenizedDatapoint], device: torch.device) -> ScoreLayout:
    """The `ScoreLayout` of tokenised datapoints, on ``device``."""
    targets: list[int] = []
    index: list[int] = []
    sup: list[bool] = []
    lengths: list[float] = []
    labels: list[str] = []
    loss_targets: list[float | None] = []
    dp_of: list[int] = []
    for d, tdp in enumerate(data):
        for comp in tdp.completions:
            i = len(lengths)
            targets += comp.tokens
            index += [i] * len(comp.tokens)
            sup.append(comp.kind == "suppress")
            lengths.append(float(len(comp.tokens)))
            labels.append(f"dp{d} {comp.kind} {comp.text!r}")
            loss_targets.append(comp.target)
            dp_of.append(d)
    return ScoreLayout(
        torch.tensor(targets, dtype=torch.long, device=device),
        torch.tensor(index, dtype=torch.long, device=device),
        torch.tensor(sup, dtype=torch.bool, device=device),
        torch.tensor(lengths, device=device),
        labels,
        loss_targets,
        dp_of,
    )


NEXT_TOKEN_LABEL = "<next token>"


def next_token_rows(
    model: Any,
    text: str,
    scored: PositionsLike = "last:1",
    positions: PositionsLike = None,
) -> list[TokenizedDatapoint]:
    """Rows whose scored positions lie in ``text`` itself: the next-token distribution after
    each chosen prefix of ``text`` (for `steerlens.training.regularizers.SideEffect`).

    ``scored`` picks positions of ``text``'s tokens with the grammar of a prompt position rule
    (``"last:1"``: the next token after the whole text; ``"all"``: after every token; a slice or
    indices). Each chosen position ``j`` becomes one row: the prefix ``text[:j+1]`` as the prompt
    and one placeholder completion token, so an engine returns the logits after that prefix
    (the placeholder is never an input to a scored position). ``positions`` says where to steer,
    each prefix taken as the prompt, as when generating after it. With ``"all"`` or ``"prompt"``
    that equals one forward of the whole text, so contiguous scored positions share one row
    (the text up to the first of them as the prompt, the rest as the completion, every token
    steered); ``len(rows)`` may thus be less than the number of scored positions.

    Example:
        >>> from steerlens.testing import tiny_model
        >>> model = tiny_model()
        >>> rows = next_token_rows(model, "the cat sat", scored="all", positions="last:1")
        >>> [len(r.prompt_tokens) for r in rows] == list(range(1, len(rows) + 1))
        True
        >>> len(next_token_rows(model, "the cat sat", scored="all"))
        1
    """
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"a side-effect prompt must be non-empty text, got {text!r:.60}.")
    ids = runtime.encode(model, text)
    if not ids:
        raise InputError(f"prompt {text!r} tokenises to nothing.")
    runtime.check_fits(model, len(ids) + 1, f"the prompt {text[:40]!r}", "use a shorter prompt")
    rule = as_positions(scored)
    if rule.kind == "generated":
        raise SpecError(
            "scored='generated' selects no token of the prompt itself; use 'last:N', 'all', a "
            "slice or indices."
        )
    ctx = runtime.TokenContext.prompts(torch.tensor([len(ids)]))
    mask = rule.mask(ctx, len(ids))
    chosen = list(range(len(ids))) if mask is None else mask[0].nonzero()[:, 0].tolist()
    if not chosen:
        raise SpecError(
            f"scored={rule.describe()!r} selects none of the {len(ids)} tokens of the prompt "
            f"{text[:40]!r}; pick positions inside it."
        )
    steer_at = as_positions(positions)
    point = Datapoint(text, promote=[NEXT_TOKEN_LABEL])
    first, last = chosen[0], chosen[-1]
    if steer_at.kind in ("all", "prompt") and last - first + 1 == len(chosen):
        # Every token of every prefix is steered and the scored positions are contiguous: one
        # row scores them all (prefix up to the first, then the rest and a placeholder as the
        # "completion", steered everywhere like the prompt).
        completion = [*ids[first + 1 : last + 1], ids[last]]
        comp = TokenizedCompletion(NEXT_TOKEN_LABEL, "promote", completion, None, False)
        return [TokenizedDatapoint(point, ids[: first + 1], [comp], Positions.all())]
    rows = []
    for j in chosen:
        placeholder = ids[j + 1] if j + 1 < len(ids) else ids[j]
        comp = TokenizedCompletion(NEXT_TOKEN_LABEL, "promote", [placeholder], None, False)
        rows.append(TokenizedDatapoint(point, ids[: j + 1], [comp], steer_at))
    return rows
