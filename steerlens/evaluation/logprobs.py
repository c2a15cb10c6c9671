"""Log-probabilities of given completions under any steering: `completion_logprobs`.

Every completion is scored after every prompt (prompts x completions). Each ``prompt +
completion`` is one row of a right-padded batch; the model unembeds only the positions that
predict completion tokens (on a ``TransformerBridge``), and ``log softmax(c * logits)`` is taken
in float32 at those positions only.

Tokenisation is exact, as in the optimizer (`steerlens.training.data.tokenize_completion`): a
completion is scored on the tokens that follow the prompt's own tokens. When tokenising
``prompt + completion`` jointly merges a token across the boundary, the completion is scored
tokenised on its own after the prompt's tokens, with a warning.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from steerlens import runtime
from steerlens.errors import InputError
from steerlens.io.plain import short, table, to_plain
from steerlens.runtime.logprobs import convert_loss
from steerlens.steering.steer import SteeringLike, describe_steering, steer


@dataclass(frozen=True)
class CompletionLogprobs:
    """Log-probabilities of completions after prompts; what `completion_logprobs` returns.

    Attributes:
        prompts: the prompts as given (before any chat formatting).
        completions: the completions as given.
        tokens: ``tokens[i][j]``: the token ids of completion ``j`` after prompt ``i``.
        token_logprobs: ``token_logprobs[i][j]``: ``[tokens]`` log-probability of each of them.
        totals: ``[prompts, completions]`` sums of the per-token log-probabilities.
        unit: ``"nats"``, ``"bits"`` or ``"hartleys"`` (log base e, 2 or 10).
        coldness: the ``c`` in ``softmax(c * logits)``.
        steering: a description of the steering applied (``"unsteered"`` if none).
        chat: whether the prompts were formatted with the chat template.
        boundary_merged: ``[i][j]``: the completion merged with its prompt when tokenised
            jointly, so it was scored tokenised on its own.
    """

    prompts: tuple[str, ...]
    completions: tuple[str, ...]
    tokens: tuple[tuple[tuple[int, ...], ...], ...]
    token_logprobs: tuple[tuple[Float[Tensor, " tokens"], ...], ...]
    totals: Float[Tensor, "prompts completions"]
    unit: str
    coldness: float
    steering: str
    chat: bool
    boundary_merged: tuple[tuple[bool, ...], ...]

    def total(self, prompt: int = 0, completion: int = 0) -> float:
        """The log-probability of completion ``completion`` after prompt ``prompt``."""
        return float(self.totals[prompt, completion])

    @property
    def means(self) -> Float[Tensor, "prompts completions"]:
        """Per-token mean log-probabilities (totals divided by token counts)."""
        lengths = torch.tensor([[len(t) for t in row] for row in self.tokens], dtype=torch.float32)
        return self.totals / lengths

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, floats, strings) for saving as JSON."""
        return to_plain(self)

    def __repr__(self) -> str:
        rows = [
            [short(p), short(c), str(len(self.tokens[i][j])), f"{self.total(i, j):.4f}"]
            for i, p in enumerate(self.prompts)
            for j, c in enumerate(self.completions)
        ]
        head = f"CompletionLogprobs ({self.unit}, coldness {self.coldness:g}, {self.steering})\n"
        return head + table(["prompt", "completion", "tokens", f"log-prob ({self.unit})"], rows)


@dataclass(frozen=True)
class _Row:
    """One ``prompt + completion`` to score."""

    prompt_index: int
    completion_index: int
    prompt_tokens: list[int]
    completion_tokens: list[int]
    merged: bool

    @property
    def length(self) -> int:
        return len(self.prompt_tokens) + len(self.completion_tokens)


def _check_completions(completions: str | Sequence[str]) -> list[str]:
    items = [completions] if isinstance(completions, str) else list(completions)
    if not items:
        raise InputError("the completion list is empty; pass at least one completion.")
    for j, c in enumerate(items):
        if not isinstance(c, str) or c == "":
            raise InputError(
                f"completion {j} is {c!r}; every completion must be a non-empty string."
            )
    return items


def _make_rows(
    model: Any, texts: Sequence[str], completions: Sequence[str], bos: bool
) -> list[_Row]:
    rows = []
    for i, text in enumerate(texts):
        prompt_tokens = runtime.encode(model, text, bos=bos)
        for j, completion in enumerate(completions):
            tokens, merged = runtime.completion_tokens(
                model, prompt_tokens, text, completion, where=f"prompt {i}"
            )
            row = _Row(i, j, prompt_tokens, tokens, merged)
            runtime.check_fits(
                model,
                row.length,
                f"prompt {i} followed by completion {j}",
                "use a shorter prompt or completion",
            )
            rows.append(row)
    return rows


@torch.no_grad()
def completion_logprobs(
    model: Any,
    prompts: str | Sequence[str],
    completions: str | Sequence[str],
    *,
    steering: SteeringLike | Sequence[SteeringLike] | None = None,
    coldness: float = 1.0,
    unit: str = "nats",
    chat: bool | None = None,
    system: str | None = None,
    batch_size: int = 32,
    bos: bool = False,
    progress: bool | None = None,
) -> CompletionLogprobs:
    """Log-probabilities of completions after prompts, per token and in total, under steering.

    Args:
        model: a TransformerLens model.
        prompts: a prompt or a list; with ``chat=True`` each is a user message formatted with
            the model's chat template.
        completions: a completion or a list; each is scored after every prompt.
        steering: a `steerlens.Steering` plan, a ``SteeringVector`` or a list of these.
            ``"prompt"`` positions are the prompt's tokens; ``"generated"`` positions are the
            completion's tokens.
        coldness: inverse temperature ``c``: log-probs of ``softmax(c * logits)``. 1 gives the
            model's own probabilities (the optimizer's default is the paper's 0.7).
        unit: ``"nats"`` (natural log), ``"bits"`` (log base 2) or ``"hartleys"`` (log base 10).
        chat: format prompts with the chat template (default: when the model has one;
            ``False``: as written).
        system: a system message for ``chat=True``.
        batch_size: ``prompt + completion`` rows per forward pass.
        bos: put the model's BOS token in front of each prompt (see
            `steerlens.runtime.encode`; chat-formatted prompts never get a second one).
        progress: a bar over the rows when there is more than one batch (default: in a
            terminal or a notebook).

    Returns:
        A `CompletionLogprobs`; ``result.totals[i, j]`` is the log-probability of
        completion ``j`` after prompt ``i``.

    Example:
        >>> from steerlens.testing import tiny_model
        >>> model = tiny_model()
        >>> res = completion_logprobs(model, ["the cat", "a dog"], [" sat", " in the"])
        >>> tuple(res.totals.shape), res.unit
        ((2, 2), 'nats')
        >>> bool((res.totals < 0).all())
        True
    """
    prompt_list = runtime.check_prompts(prompts)
    completion_list = _check_completions(completions)
    convert_loss(0.0, unit)  # validate the unit before any work
    coldness = runtime.check_coldness(coldness)
    runtime.check_batch_size(batch_size)
    texts = runtime.format_prompts(model, prompt_list, chat=chat, system=system)
    rows = _make_rows(model, texts, completion_list, bos)
    with steer(model, steering) as handle:
        per_row = runtime.score_rows(
            model,
            [(r.prompt_tokens + r.completion_tokens, len(r.prompt_tokens)) for r in rows],
            coldness=coldness,
            batch_size=batch_size,
            progress=progress,
        )
        described = describe_steering(handle.steerings)
    n_c = len(completion_list)
    lps = [torch.as_tensor(convert_loss(lp, unit)) for lp in per_row]
    grid = [[lps[i * n_c + j] for j in range(n_c)] for i in range(len(prompt_list))]
    return CompletionLogprobs(
        prompts=tuple(prompt_list),
        completions=tuple(completion_list),
        tokens=tuple(
            tuple(tuple(rows[i * n_c + j].completion_tokens) for j in range(n_c))
            for i in range(len(prompt_list))
        ),
        token_logprobs=tuple(tuple(r) for r in grid),
        totals=torch.tensor([[float(t.sum()) for t in r] for r in grid], dtype=torch.float32),
        unit=unit,
        coldness=coldness,
        steering=described,
        chat=runtime.uses_chat(model, chat),
        boundary_merged=tuple(
            tuple(rows[i * n_c + j].merged for j in range(n_c)) for i in range(len(prompt_list))
        ),
    )
