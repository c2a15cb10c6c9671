"""The most likely continuations under steering: `beam_search`.

Beam search keeps, after each new token, the ``k`` highest-scoring prefixes (score = summed
log-probability) and extends only those. All beams of all prompts in a batch advance in one
forward pass; on a ``TransformerBridge`` the KV cache is kept and reordered as beams are chosen,
so each step computes one token per beam.

Beam search is a heuristic: a continuation whose prefix fell out of the beam is never
reconsidered, so the result can miss one of the true ``k`` most likely continuations. Since
adding tokens only lowers a log-probability, a pruned prefix's score bounds every continuation
through it; `BeamSearchResult.provably_exact` is True when the ``k``-th result scores at
least as high as every pruned prefix, i.e. when the result is certainly the exact top ``k``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload

import torch
from torch import Tensor

from steerlens import runtime
from steerlens.errors import InputError, SpecError
from steerlens.io.plain import short, table, to_plain
from steerlens.runtime import TokenContext
from steerlens.runtime.logprobs import convert_loss
from steerlens.steering.steer import SteeringLike, describe_steering, steer


@dataclass(frozen=True)
class BeamHypothesis:
    """One continuation: its text (special tokens kept), token ids and log-probability."""

    text: str
    tokens: tuple[int, ...]
    logprob: float


@dataclass(frozen=True)
class BeamSearchResult(Sequence[BeamHypothesis]):
    """The ``k`` continuations found for one prompt, most likely first; indexable like a list.

    Attributes:
        prompt: the prompt as given.
        hypotheses: the continuations, by decreasing log-probability.
        n_tokens: the length of every continuation, in tokens.
        unit: unit of ``logprob`` (``"nats"``, ``"bits"`` or ``"hartleys"``).
        coldness: the ``c`` in ``softmax(c * logits)``.
        provably_exact: True when no pruned prefix could lead to a continuation more likely
            than the ``k``-th found, so these are certainly the ``k`` most likely.
        steering: a description of the steering applied.
    """

    prompt: str
    hypotheses: tuple[BeamHypothesis, ...]
    n_tokens: int
    unit: str
    coldness: float
    provably_exact: bool
    steering: str

    @overload
    def __getitem__(self, index: int) -> BeamHypothesis: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[BeamHypothesis]: ...
    def __getitem__(self, index: int | slice) -> BeamHypothesis | Sequence[BeamHypothesis]:
        return self.hypotheses[index]

    def __len__(self) -> int:
        return len(self.hypotheses)

    def __iter__(self) -> Iterator[BeamHypothesis]:
        return iter(self.hypotheses)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, floats, strings) for saving as JSON."""
        return to_plain(self)

    def __repr__(self) -> str:
        exact = "provably exact" if self.provably_exact else "not provably exact"
        head = (
            f"BeamSearchResult for {short(self.prompt)}: top {len(self)} of {self.n_tokens}-token "
            f"continuations ({exact}; {self.steering})\n"
        )
        rows = [[str(i), short(h.text), f"{h.logprob:.4f}"] for i, h in enumerate(self)]
        return head + table(["rank", "text", f"log-prob ({self.unit})"], rows)


def _check_k(model: Any, k: int, n_tokens: int) -> None:
    for name, value in (("k", k), ("n_tokens", n_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SpecError(f"{name} must be an int >= 1, got {value!r}.")
    vocab = runtime.vocab_size(model)
    if vocab is not None and k > vocab:
        raise SpecError(
            f"beam width k={k} is larger than the vocabulary ({vocab} tokens); there are only "
            f"{vocab} candidates for each token; pass k <= {vocab}."
        )


def _search_batch(
    model: Any,
    token_lists: list[list[int]],
    k: int,
    n_tokens: int,
    coldness: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Beam search for a batch of prompts.

    Returns ``[prompts, k, n_tokens]`` token ids, ``[prompts, k]`` log-probs (nats) and a
    ``[prompts]`` flag: provably the exact top ``k``.
    """
    tokens, mask, n_pad = runtime.left_pad(model, token_lists)
    n_prompts, dev = len(token_lists), tokens.device
    prompt_end = torch.full_like(n_pad, tokens.shape[1])
    scores = torch.zeros(n_prompts, 1, device=dev)  # [prompts, beams]
    seqs = torch.zeros(n_prompts, 1, 0, dtype=torch.long, device=dev)
    bound = torch.full((n_prompts,), -torch.inf, device=dev)  # best pruned prefix score
    cache, n_cached = None, 0
    for step in range(n_tokens):
        ctx = TokenContext(n_pad, prompt_end, offset=n_cached)
        logits, cache = runtime.next_logits(model, tokens, mask, cache, n_cached, ctx)
        n_cached = tokens.shape[1] if cache is not None else 0
        vocab = logits.shape[-1]
        if k > vocab:
            raise SpecError(f"beam width k={k} is larger than the vocabulary ({vocab} tokens).")
        logp = (logits.float() * coldness).log_softmax(-1).view(n_prompts, -1, vocab)
        beams = logp.shape[1]
        candidates = (scores[:, :, None] + logp).view(n_prompts, beams * vocab)
        n_keep = min(k + 1, beams * vocab)
        top = candidates.topk(n_keep, dim=-1)
        if step < n_tokens - 1 and n_keep > k:
            # The best candidate left out now bounds every continuation through a pruned prefix.
            bound = torch.maximum(bound, top.values[:, k])
        scores, index = top.values[:, :k], top.indices[:, :k]
        source = index // vocab  # which beam each new beam extends
        new_token = index % vocab
        seqs = torch.cat(
            [seqs.gather(1, source[..., None].expand(-1, -1, step)), new_token[..., None]], 2
        )
        if step == n_tokens - 1:
            break
        rows = (torch.arange(n_prompts, device=dev)[:, None] * beams + source).reshape(-1)
        tokens = torch.cat([tokens[rows], new_token.reshape(-1, 1)], dim=1)
        mask = torch.cat([mask[rows], torch.ones_like(mask[rows, :1])], dim=1)
        n_pad, prompt_end = n_pad[rows], prompt_end[rows]
        if cache is not None:
            cache.reorder_cache(rows)
    return seqs, scores, scores[:, -1] >= bound


@torch.no_grad()
def beam_search(
    model: Any,
    prompt: str | Sequence[str],
    *,
    k: int,
    n_tokens: int,
    steering: SteeringLike | Sequence[SteeringLike] | None = None,
    coldness: float = 1.0,
    unit: str = "nats",
    chat: bool | None = None,
    system: str | None = None,
    batch_size: int = 8,
    bos: bool = False,
) -> BeamSearchResult | list[BeamSearchResult]:
    """The ``k`` most likely ``n_tokens``-token continuations of a prompt, by beam search.

    Every vocabulary token is a candidate at every step (end-of-turn and other special tokens
    included), so each continuation has exactly ``n_tokens`` tokens.

    Args:
        model: a TransformerLens model.
        prompt: a prompt, or a list of prompts (searched together, ``batch_size`` at a time).
        k: the beam width, which is also the number of continuations returned.
        n_tokens: the length of the continuations.
        steering: a `steerlens.Steering` plan, a ``SteeringVector`` or a list of these
            (``"generated"`` positions are the continuation's tokens).
        coldness: log-probabilities are those of ``softmax(c * logits)``.
        unit: ``"nats"``, ``"bits"`` or ``"hartleys"`` for the reported log-probabilities.
        chat: format prompts with the chat template (default:
            when the model has one; ``False``: as written).
        system: a system message for ``chat=True``.
        batch_size: prompts per forward pass (each takes ``k`` rows).
        bos: put the model's BOS token in front of each prompt (see
            `steerlens.runtime.encode`; chat-formatted prompts never get a second one).

    Returns:
        A `BeamSearchResult` (a sequence of `BeamHypothesis`, most likely first),
        or a list of them for a list of prompts.

    Raises:
        SpecError: ``k`` larger than the vocabulary, or ``k``/``n_tokens`` below 1.

    Example:
        >>> from steerlens.testing import tiny_model
        >>> res = beam_search(tiny_model(), "the cat", k=3, n_tokens=2)
        >>> len(res), len(res[0].tokens)
        (3, 2)
        >>> res[0].logprob >= res[1].logprob >= res[2].logprob
        True
    """
    prompts = runtime.check_prompts(prompt)
    _check_k(model, k, n_tokens)
    coldness = runtime.check_coldness(coldness)
    runtime.check_batch_size(batch_size)
    convert_loss(0.0, unit)
    texts = runtime.format_prompts(model, prompts, chat=chat, system=system)
    token_lists = [runtime.encode(model, t, bos=bos) for t in texts]
    for i, ids in enumerate(token_lists):
        runtime.check_fits(
            model,
            len(ids) + n_tokens,
            f"prompt {i} plus {n_tokens} new tokens",
            "use a shorter prompt or fewer n_tokens",
        )
    results: list[BeamSearchResult] = []
    with steer(model, steering) as handle:
        described = describe_steering(handle.steerings)
        for batch in runtime.chunks(len(prompts), batch_size):
            seqs, scores, exact = _search_batch(
                model, [token_lists[i] for i in batch], k, n_tokens, coldness
            )
            for row, i in enumerate(batch):
                hyps = tuple(
                    BeamHypothesis(
                        text=runtime.decode(model, seqs[row, b], skip_special_tokens=False),
                        tokens=tuple(int(t) for t in seqs[row, b].tolist()),
                        logprob=float(convert_loss(float(scores[row, b]), unit)),
                    )
                    for b in range(k)
                )
                results.append(
                    BeamSearchResult(
                        prompts[i], hyps, n_tokens, unit, coldness, bool(exact[row]), described
                    )
                )
    if not results:  # pragma: no cover - check_prompts refuses an empty list
        raise InputError("no prompts to search.")
    return results[0] if isinstance(prompt, str) else results
