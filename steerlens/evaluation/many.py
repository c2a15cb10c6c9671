"""Many steerings in shared batches: next-token log-probabilities, A/B propensities,
completion log-probabilities and KLs, for every ``(steering, prompt)`` pair.

One forward pass per steering leaves most of a batch empty when a steering has a handful of
prompts. Here the ``steerings x prompts`` pairs are the rows: ``batch_size`` of them per forward
pass, mixing steerings, each row under its own steering
(`steerlens.steering.steer.steer_rows`). Rows are grouped by prompt, shortest prompts first, so
a batch pads little. Every value is what one steering at a time gives (``with steer(model, s)``
around the runtime's forward) up to float rounding: rows packed differently sum in another
order.

- `next_token_logprobs`: log-probabilities of chosen tokens right after each prompt.
- `propensities`: ``log p(matching) - log p(other)`` per pair (e.g. the A/B answer letters).
- `completion_logprobs_many`: the total log-probability of each prompt's completion.
- `next_token_kl`: ``KL(unsteered || steered)`` of the next token after each prompt (the
  side-effect KL on neutral prompts).
- `rollout_kl`: per-token ``KL(steered || unsteered)`` along the unsteered model's greedy
  rollouts.

Prompts are text used as written (format chat prompts first, e.g. with
`steerlens.runtime.format_prompts`) or token lists used as given; each is tokenised once.
Results are on the CPU, in float32 (the model's dtype when it is wider).
"""

from __future__ import annotations

import itertools
import numbers
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from steerlens import runtime
from steerlens.errors import SpecError
from steerlens.evaluation.inputs import (
    Prompts,
    answer_pairs,
    check_in_vocab,
    check_token_ids,
    completion_rows,
    prompt_rows,
    propensity_of,
)
from steerlens.steering.steer import (
    RowSteering,
    check_row_steerings,
    resolve_steering,
    steer_rows,
)


@torch.no_grad()
def next_token_logprobs(
    model: Any,
    prompts: Prompts,
    steerings: Sequence[RowSteering],
    token_ids: Sequence[int],
    *,
    batch_size: int = 32,
    bos: bool = False,
    progress: bool | None = None,
    prefixes: runtime.PrefixStore | None = None,
) -> Float[Tensor, "steerings prompts answers"]:
    """``log p(token | prompt)`` of the next token after each prompt under each steering, at
    ``token_ids``, with every ``(steering, prompt)`` pair a row of shared batches.

    ``out[s, p, k]`` is what ``with steer(model, steerings[s])`` and
    `steerlens.runtime.last_logits` give for prompt ``p``, log-softmaxed, at ``token_ids[k]``
    (equal up to float rounding). Each row's tokens are its prompt for position rules.

    Args:
        model: a TransformerLens model.
        prompts: texts, used as written (tokenised without special tokens; apply a chat
            template first), or token lists (lists of ids or 1-D tensors) used as given.
        steerings: one entry per steering: a `steerlens.Steering` plan, a
            ``SteeringVector``, a list of these (applied together), or ``None`` (unsteered).
        token_ids: the vocabulary ids to read, e.g. answer letters.
        batch_size: ``(steering, prompt)`` rows per forward pass.
        bos: put the model's BOS token in front of each text prompt.
        progress: a bar over the rows when there is more than one batch.
        prefixes: a `steerlens.runtime.PrefixStore` to keep the prompts' unsteered prefixes
            in for later calls on the same prompts (each is computed once per call anyway).

    Returns:
        ``[steerings, prompts, len(token_ids)]`` log-probabilities (nats) on the CPU.

    Raises:
        InputError: no prompts, an empty prompt, or prompt token ids outside the vocabulary.
        SpecError: no steerings, no token ids, token ids outside the vocabulary, or a bad
            ``batch_size``.

    Example:
        >>> import torch
        >>> from steerlens import Steering, runtime, steer
        >>> from steerlens.testing import tiny_model
        >>> model = tiny_model()
        >>> plan = Steering(torch.ones(64), layer=1, strength=4.0)
        >>> lp = next_token_logprobs(model, ["the cat", "a dog"], [None, plan], [5, 6, 7])
        >>> lp.shape
        torch.Size([2, 2, 3])
        >>> with steer(model, plan):
        ...     alone = runtime.last_logits(model, [runtime.encode(model, "a dog")])
        >>> torch.allclose(lp[1, 1], alone[0].log_softmax(-1)[[5, 6, 7]], atol=1e-5)
        True
    """
    rows = prompt_rows(model, prompts, bos=bos)
    plans, _ = _steerings(model, steerings)
    ids = check_token_ids(model, token_ids, what="token_ids")
    runtime.check_batch_size(batch_size)
    return _next_token_logprobs(model, rows, plans, ids, batch_size, progress, prefixes)


@torch.no_grad()
def propensities(
    model: Any,
    prompts: Prompts,
    steerings: Sequence[RowSteering],
    matching: Sequence[int],
    other: Sequence[int],
    *,
    batch_size: int = 32,
    bos: bool = False,
    progress: bool | None = None,
    prefixes: runtime.PrefixStore | None = None,
) -> Float[Tensor, "steerings prompts"]:
    """``log p(matching[p]) - log p(other[p])`` of the next token after prompt ``p`` under
    each steering (nats; > 0 when the matching answer is the more likely one).

    The log-probabilities are `next_token_logprobs`'s, so the rows are shared as there; each
    prompt has its own pair of answer tokens (the letters of an A/B item whose matching answer
    is A on some prompts and B on others).

    Args:
        model: a TransformerLens model.
        prompts: texts used as written (e.g. a chat-formatted question ending in ``"("``) or
            token lists used as given.
        steerings: one entry per steering (a plan, a ``SteeringVector``, a list, or ``None``).
        matching: per prompt, the token id of the answer that shows the behaviour.
        other: per prompt, the token id of the other answer.
        batch_size: ``(steering, prompt)`` rows per forward pass.
        bos: put the model's BOS token in front of each text prompt.
        progress: a bar over the rows when there is more than one batch.
        prefixes: a `steerlens.runtime.PrefixStore` shared with other calls on the same
            prompts (as `next_token_logprobs`).

    Returns:
        ``[steerings, prompts]`` log-probability differences on the CPU.

    Raises:
        SpecError: ``matching`` or ``other`` not one id per prompt, an id outside the
            vocabulary, or the same id for both answers of a prompt; and as
            `next_token_logprobs`.

    Example:
        >>> import torch
        >>> from steerlens import Steering, runtime
        >>> from steerlens.testing import tiny_model
        >>> model = tiny_model()
        >>> a, b = runtime.answer_token_ids(model, ["A", "B"])
        >>> prompts = ["Pick (A) yes or (B) no: (", "Pick (A) no or (B) yes: ("]
        >>> plans = [None, Steering(torch.ones(64), layer=1, strength=4.0)]
        >>> propensities(model, prompts, plans, matching=[a, b], other=[b, a]).shape
        torch.Size([2, 2])
    """
    rows = prompt_rows(model, prompts, bos=bos)
    plans, _ = _steerings(model, steerings)
    yes, no, ids = answer_pairs(model, matching, other, len(rows))
    runtime.check_batch_size(batch_size)
    logp = _next_token_logprobs(model, rows, plans, ids, batch_size, progress, prefixes)
    return propensity_of(logp, ids, yes, no)


@torch.no_grad()
def rollout_kl(
    model: Any,
    prompts: Prompts,
    steerings: Sequence[RowSteering],
    *,
    n_tokens: int = 16,
    batch_size: int = 32,
    bos: bool = False,
    progress: bool | None = None,
    prefixes: runtime.PrefixStore | None = None,
) -> Float[Tensor, "steerings tokens"]:
    """Per-token ``KL(steered || unsteered)`` of the next-token distribution along the
    unsteered model's greedy rollouts: how far each steering moves the model on text it
    would write itself (nats; 0 = untouched).

    First the unsteered model decodes ``n_tokens`` greedy tokens after each prompt
    (`steerlens.runtime.decode_tokens`, once; a rollout ends early at an end-of-turn token,
    which it keeps, or at the context window). Then every ``(steering, prompt)`` row is scored
    with teacher forcing on ``prompt + rollout``, in shared batches beside the unsteered rows
    it is compared with, at each position that predicts a rollout token (the prompt's last
    position first). Prompt tokens count as prompt for position rules, rollout tokens as
    generated, as in `steerlens.runtime.score_rows`.

    Args:
        model: a TransformerLens model.
        prompts: texts used as written or token lists used as given.
        steerings: one entry per steering (a plan, a ``SteeringVector``, a list, or ``None``).
        n_tokens: the rollout length per prompt (at most; see above).
        batch_size: rows per forward pass (prompts per batch while decoding).
        bos: put the model's BOS token in front of each text prompt.
        progress: bars over the prompts and the rows when there is more than one batch.
        prefixes: a `steerlens.runtime.PrefixStore` shared with other calls on the same
            prompts (as `next_token_logprobs`).

    Returns:
        ``[steerings, tokens]`` on the CPU: row ``s`` holds prompt 0's per-token KLs in
        rollout order, then prompt 1's, and so on (the same order for every steering;
        ``tokens`` is the total rollout length, at most ``n_tokens * len(prompts)``). Values are
        clamped at 0 against rounding; a steering that applies nothing (``None``) gets exact
        zeros without a forward pass. Take e.g. ``torch.quantile(kl, 0.95, dim=1)``.

    Raises:
        SpecError: ``n_tokens`` not an int >= 1, and as `next_token_logprobs`.
        ContextWindowError: a prompt that leaves no room to decode.

    Example:
        >>> import torch
        >>> from steerlens import Steering
        >>> from steerlens.testing import tiny_model
        >>> model = tiny_model()
        >>> plans = [None, Steering(torch.zeros(64), layer=1), Steering(torch.ones(64), layer=1)]
        >>> kl = rollout_kl(model, ["the cat", "a dog"], plans, n_tokens=4)
        >>> kl.shape
        torch.Size([3, 8])
        >>> bool(kl[0].eq(0).all()), bool(kl[1].max() < 1e-5), bool(kl[2].min() > 0)
        (True, True, True)
    """
    rows = prompt_rows(model, prompts, bos=bos)
    plans, applies = _steerings(model, steerings)
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, numbers.Integral) or n_tokens < 1:
        raise SpecError(f"n_tokens must be an int >= 1, got {n_tokens!r}.")
    runtime.check_batch_size(batch_size)
    rollouts = _rollouts(model, rows, int(n_tokens), batch_size, progress)
    sizes = [len(r) for r in rollouts]
    starts = [0, *itertools.accumulate(sizes)]
    scored = _ScoredRows(model, rows, [r[:-1] for r in rollouts], plans, _compared(applies))
    pairs = _against_unsteered(scored, batch_size, prefixes, progress)
    kls = (
        (s, slice(starts[p], starts[p] + sizes[p]), runtime.kl_of_logprobs(steered, unsteered))
        for s, p, steered, unsteered in pairs
    )
    return _table(model, (len(plans), sum(sizes)), kls)


@torch.no_grad()
def next_token_kl(
    model: Any,
    prompts: Prompts,
    steerings: Sequence[RowSteering],
    *,
    batch_size: int = 32,
    bos: bool = False,
    progress: bool | None = None,
    prefixes: runtime.PrefixStore | None = None,
) -> Float[Tensor, "steerings prompts"]:
    """``KL(unsteered || steered)`` of the next-token distribution right after each prompt,
    under each steering (nats; 0 = untouched): `steerlens.evaluation.side_effect_kl` for many
    steerings at once, e.g. on neutral prompts.

    ``out[s, p]`` is what ``side_effect_kl(model, [prompts[p]], steerings[s], chat=False)``
    gives (up to float rounding). Each prompt's unsteered row runs once, as one more row of the
    shared batches. The direction is ``side_effect_kl``'s, the other way round from
    `rollout_kl`'s. Each row's tokens are its prompt for position rules.

    Args:
        model: a TransformerLens model.
        prompts: texts used as written (format chat prompts first, e.g. with
            `steerlens.runtime.format_prompts`) or token lists used as given.
        steerings: one entry per steering (a plan, a ``SteeringVector``, a list, or ``None``).
        batch_size: rows per forward pass.
        bos: put the model's BOS token in front of each text prompt.
        progress: a bar over the rows when there is more than one batch.
        prefixes: a `steerlens.runtime.PrefixStore` shared with other calls on the same
            prompts (as `next_token_logprobs`).

    Returns:
        ``[steerings, prompts]`` on the CPU, clamped at 0 against rounding; a steering that
        applies nothing (``None``) gets exact zeros without a forward pass. Take the mean over
        prompts for ``side_effect_kl``'s ``.mean``.

    Raises:
        InputError: no prompts, an empty prompt, or prompt token ids outside the vocabulary.
        SpecError: no steerings, or a bad ``batch_size``.

    Example:
        >>> import torch
        >>> from steerlens import Steering
        >>> from steerlens.evaluation import side_effect_kl
        >>> from steerlens.testing import tiny_model
        >>> model = tiny_model()
        >>> plans = [None, Steering(torch.ones(64), layer=1, strength=4.0)]
        >>> kl = next_token_kl(model, ["the cat", "a dog"], plans)
        >>> kl.shape, bool(kl[0].eq(0).all())
        (torch.Size([2, 2]), True)
        >>> alone = side_effect_kl(model, ["the cat", "a dog"], plans[1], chat=False)
        >>> abs(float(kl[1].mean()) - alone.mean) < 1e-6
        True
    """
    rows = prompt_rows(model, prompts, bos=bos)
    plans, applies = _steerings(model, steerings)
    runtime.check_batch_size(batch_size)
    scored = _ScoredRows(model, rows, [[] for _ in rows], plans, _compared(applies))
    pairs = _against_unsteered(scored, batch_size, prefixes, progress)
    kls = (
        (s, p, runtime.kl_of_logprobs(unsteered, steered)[0]) for s, p, steered, unsteered in pairs
    )
    return _table(model, (len(plans), len(rows)), kls)


@torch.no_grad()
def completion_logprobs_many(
    model: Any,
    prompts: Prompts,
    completions: Prompts,
    steerings: Sequence[RowSteering],
    *,
    batch_size: int = 32,
    bos: bool = False,
    progress: bool | None = None,
    prefixes: runtime.PrefixStore | None = None,
) -> Float[Tensor, "steerings prompts"]:
    """Total ``log p(completion | prompt)`` of ``completions[p]`` after ``prompts[p]`` under
    each steering (nats), every ``(steering, prompt)`` pair a row of shared batches:
    `steerlens.evaluation.completion_logprobs` for many steerings at once.

    ``out[s, p]`` is what ``with steer(model, steerings[s])`` and ``completion_logprobs(model,
    prompts[p], completions[p], chat=False).totals[0, 0]`` give (equal up to float rounding).
    Each prompt has one completion: to score several after one prompt, repeat the prompt. The
    prompt's tokens are "prompt" for position rules, the completion's "generated".

    Args:
        model: a TransformerLens model.
        prompts: texts used as written (format chat prompts first, e.g. with
            `steerlens.runtime.format_prompts`) or token lists used as given.
        completions: one per prompt: after text prompts, texts, each scored on the tokens that
            follow its prompt (`steerlens.runtime.completion_tokens`); after token lists,
            token lists used as given.
        steerings: one entry per steering (a plan, a ``SteeringVector``, a list, or ``None``).
        batch_size: ``(steering, prompt)`` rows per forward pass.
        bos: put the model's BOS token in front of each text prompt.
        progress: a bar over the rows when there is more than one batch.
        prefixes: a `steerlens.runtime.PrefixStore` shared with other calls on the same
            prompts (as `next_token_logprobs`).

    Returns:
        ``[steerings, prompts]`` total log-probabilities on the CPU (summed in float64).

    Raises:
        InputError: as `next_token_logprobs` for the prompts; not one completion per prompt, an
            empty completion, text completions after token-list prompts (or the other way
            round), completion token ids outside the vocabulary, or a prompt and completion
            longer than the context window.
        SpecError: no steerings, or a bad ``batch_size``.

    Example:
        >>> import torch
        >>> from steerlens import Steering, steer
        >>> from steerlens.evaluation import completion_logprobs
        >>> from steerlens.testing import tiny_model
        >>> model = tiny_model()
        >>> plan = Steering(torch.ones(64), layer=1, strength=4.0)
        >>> lp = completion_logprobs_many(model, ["the cat", "the cat"], [" sat", " ran"],
        ...                               [None, plan])
        >>> lp.shape
        torch.Size([2, 2])
        >>> with steer(model, plan):
        ...     alone = completion_logprobs(model, "the cat", [" sat", " ran"], chat=False)
        >>> torch.allclose(lp[1], alone.totals[0], atol=1e-5)
        True
    """
    rows = prompt_rows(model, prompts, bos=bos)
    targets = completion_rows(model, prompts, rows, completions)
    plans, _ = _steerings(model, steerings)
    runtime.check_batch_size(batch_size)
    scored = _ScoredRows(model, rows, [t[:-1] for t in targets], plans, list(range(len(plans))))
    store = prefixes if prefixes is not None else runtime.PrefixStore(model, max_bytes=0)
    totals = torch.zeros(len(plans), len(rows), dtype=torch.float64)
    dtype = _wide(runtime.dtype(model))
    for s, p, lp in scored.logprobs(batch_size, store, progress):
        ids = torch.tensor(targets[p], device=lp.device)
        totals[s, p] = lp.gather(-1, ids[:, None]).double().sum().cpu()
        dtype = lp.dtype
    return totals.to(dtype)


def _compared(applies: Sequence[bool]) -> list[int]:
    """The rows to score per prompt when steered rows are compared with unsteered ones: the
    unsteered row (-1) first, then each steering that applies something; none at all when no
    steering does (their values are exact zeros)."""
    active = [s for s, a in enumerate(applies) if a]
    return [-1, *active] if active else []


def _against_unsteered(
    scored: _ScoredRows,
    batch_size: int,
    prefixes: runtime.PrefixStore | None,
    progress: bool | None,
) -> Iterator[tuple[int, int, Tensor, Tensor]]:
    """``(steering, prompt, steered, unsteered log-probabilities)`` per steered row of
    ``scored``, whose rows come each prompt's unsteered one first (`_compared`)."""
    store = prefixes if prefixes is not None else runtime.PrefixStore(scored.model, max_bytes=0)
    reference: dict[int, Tensor] = {}
    for s, p, lp in scored.logprobs(batch_size, store, progress):
        if s < 0:
            reference = {p: lp}  # a prompt's rows come together: one reference at a time
        else:
            yield s, p, lp, reference[p]


def _table(
    model: Any, shape: tuple[int, int], kls: Iterable[tuple[int, Any, Tensor]]
) -> Float[Tensor, "steerings columns"]:
    """A ``shape`` table on the CPU holding each ``(steering, columns, KL)`` of ``kls``,
    clamped at 0 against rounding, in the KLs' dtype; exact zeros elsewhere (all of it, in
    the model's dtype widened to float32, when every steering applies nothing)."""
    out: Tensor | None = None
    for s, where, kl in kls:
        if out is None:
            out = torch.zeros(shape, dtype=kl.dtype)
        out[s, where] = kl.clamp_min(0.0).cpu()
    return out if out is not None else torch.zeros(shape, dtype=_wide(runtime.dtype(model)))


def _next_token_logprobs(
    model: Any,
    rows: list[list[int]],
    plans: list[RowSteering],
    ids: list[int],
    batch_size: int,
    progress: bool | None,
    prefixes: runtime.PrefixStore | None,
) -> Float[Tensor, "steerings prompts answers"]:
    """`next_token_logprobs` on checked token rows, plans and ids."""
    # Prompts are visited one after another, so a store of one entry serves this call.
    store = prefixes if prefixes is not None else runtime.PrefixStore(model, max_bytes=0)
    dev = runtime.device(model)
    index = torch.tensor(ids, device=dev)
    cuts = _prefix_cuts(model, rows, [resolve_steering(model, plan) for plan in plans])
    # A prompt whose every steering leaves its first tokens alone runs them once, unsteered,
    # and its steered rows reuse their KV cache (CAA-style A/B scoring steers only the last
    # few tokens); other prompts' rows are packed into batches as usual.
    shared = [p for p in _by_length(rows) if cuts[p] > 0]
    cells = [(s, p) for p in _by_length(rows) if cuts[p] == 0 for s in range(len(plans))]
    out = torch.zeros(len(plans), len(rows), len(ids), dtype=torch.float32)
    checked = False
    total = len(cells) + len(shared) * len(plans)
    bar = runtime.progress(total, "forward", progress if total > batch_size else False)
    for p in shared:
        row, cut = rows[p], cuts[p]
        for chunk in runtime.chunks(len(plans), batch_size):
            n = len(chunk)
            cache = store.cache(row[:cut], n, prompt_end=len(row))
            tokens = torch.tensor([row] * n, device=dev)
            ctx = _copies_context(n, len(row), cut, dev)
            with steer_rows(model, [plans[s] for s in chunk]):
                logits, _ = runtime.next_logits(
                    model, tokens, torch.ones_like(tokens), cache, cut, ctx
                )
            if not checked:
                check_in_vocab(ids, logits.shape[-1], "token_ids", SpecError)
                out = out.to(_wide(logits.dtype))
                checked = True
            out[list(chunk), p] = _log_softmax(logits)[:, index].cpu().to(out.dtype)
            bar.update(n)
    for chunk in runtime.chunks(len(cells), batch_size):
        batch = [cells[i] for i in chunk]
        tokens, mask = runtime.right_pad(model, [rows[p] for _, p in batch])
        ends = mask.sum(dim=1)
        with steer_rows(model, [plans[s] for s, _ in batch]):
            logits = runtime.logits_at(
                model,
                tokens,
                mask,
                torch.arange(len(batch), device=dev),
                ends - 1,
                runtime.TokenContext.prompts(ends),
            )
        if not checked:
            check_in_vocab(ids, logits.shape[-1], "token_ids", SpecError)
            out = out.to(_wide(logits.dtype))
            checked = True
        picked = _log_softmax(logits)[:, index].cpu()
        for b, (s, p) in enumerate(batch):
            out[s, p] = picked[b]
        bar.update(len(batch))
    bar.close()
    return out


class _ScoredRows:
    """``(steering, prompt)`` rows teacher-forced on ``prompt + continuation``, for
    ``steerings`` (indices into ``plans``; -1 is unsteered) in that order per prompt, each
    scored at the positions from the prompt's last token on (``len(continuation) + 1``: the
    next token after the prompt, then the one after each continuation token)."""

    def __init__(
        self,
        model: Any,
        rows: list[list[int]],
        continuations: list[list[int]],
        plans: list[RowSteering],
        steerings: list[int],
    ) -> None:
        self.model, self.rows, self.plans = model, rows, plans
        self.seqs = [r + g for r, g in zip(rows, continuations, strict=True)]
        self.sizes = [len(g) + 1 for g in continuations]
        applied = [resolve_steering(model, plans[s]) for s in steerings if s >= 0]
        cuts = _prefix_cuts(model, rows, applied)
        self.cuts = cuts if steerings else dict.fromkeys(cuts, 0)
        order = _by_length(self.seqs)
        self.shared = [(p, steerings) for p in order if cuts[p] > 0]
        self.cells = [(s, p) for p in order if cuts[p] == 0 for s in steerings]

    def logprobs(
        self, batch_size: int, store: runtime.PrefixStore, progress: bool | None
    ) -> Iterator[tuple[int, int, Tensor]]:
        """``(steering, prompt, log-probabilities [positions, vocab])`` per row."""
        total = len(self.cells) + sum(len(ss) for _, ss in self.shared)
        bar = runtime.progress(total, "score", progress if total > batch_size else False)
        dev = runtime.device(self.model)
        for p, steerings in self.shared:
            n_prompt, cut = len(self.rows[p]), self.cuts[p]
            for chunk in runtime.chunks(len(steerings), batch_size):
                batch = [steerings[i] for i in chunk]
                n = len(batch)
                cache = store.cache(self.rows[p][:cut], n, prompt_end=n_prompt)
                tokens = torch.tensor([self.seqs[p]] * n, device=dev)
                ctx = _copies_context(n, n_prompt, cut, dev)
                with steer_rows(self.model, [self._plan(s) for s in batch]):
                    logits, _ = runtime.continue_from(
                        self.model, tokens, torch.ones_like(tokens), cache, cut, ctx
                    )
                logp = _log_softmax(logits[:, n_prompt - 1 - cut :])
                yield from ((s, p, logp[b]) for b, s in enumerate(batch))
                bar.update(n)
        for chunk in runtime.chunks(len(self.cells), batch_size):
            cells = [self.cells[i] for i in chunk]
            tokens, mask = runtime.right_pad(self.model, [self.seqs[p] for _, p in cells])
            row_idx: list[int] = []
            col_idx: list[int] = []
            for b, (_, p) in enumerate(cells):
                n_prompt = len(self.rows[p])
                row_idx += [b] * self.sizes[p]
                col_idx += range(n_prompt - 1, n_prompt - 1 + self.sizes[p])
            ends = torch.tensor([len(self.rows[p]) for _, p in cells], device=dev)
            with steer_rows(self.model, [self._plan(s) for s, _ in cells]):
                logits = runtime.logits_at(
                    self.model,
                    tokens,
                    mask,
                    torch.tensor(row_idx, device=dev),
                    torch.tensor(col_idx, device=dev),
                    runtime.TokenContext.prompts(ends),
                )
            logp = _log_softmax(logits)
            pieces = logp.split([self.sizes[p] for _, p in cells])
            yield from ((s, p, lp) for (s, p), lp in zip(cells, pieces, strict=True))
            bar.update(len(cells))
        bar.close()

    def _plan(self, s: int) -> RowSteering:
        return None if s < 0 else self.plans[s]


def _prefix_cuts(
    model: Any, rows: Sequence[Sequence[int]], applied: Sequence[Sequence[Any]]
) -> dict[int, int]:
    """Per prompt, how many leading tokens its rows under ``applied`` can share, run once
    unsteered (`_unsteered_prefix`); none on a model without KV-cache support."""
    if not runtime.supports_kv_cache(model):
        return dict.fromkeys(range(len(rows)), 0)
    return {p: _unsteered_prefix(applied, len(r)) for p, r in enumerate(rows)}


def _copies_context(n: int, n_prompt: int, cut: int, dev: torch.device) -> runtime.TokenContext:
    """The token context of ``n`` copies of one ``n_prompt``-token prompt whose first ``cut``
    tokens are in the KV cache."""
    return runtime.TokenContext(
        torch.zeros(n, dtype=torch.long, device=dev),
        torch.full((n,), n_prompt, dtype=torch.long, device=dev),
        cut,
    )


def _unsteered_prefix(applied: Sequence[Sequence[Any]], length: int) -> int:
    """How many leading tokens of a ``length``-token prompt no steering touches (0 when a
    steering is conditional: its condition reads every prompt token as it runs)."""
    first = length - 1  # the last token always runs with the steered rows
    ctx = runtime.TokenContext.prompts(torch.tensor([length]))
    for plan in applied:
        for a in plan:
            if a.condition is not None:
                return 0
            mask = a.positions.mask(ctx, length)
            if mask is None:
                return 0
            steered = mask[0].nonzero()
            if len(steered):
                first = min(first, int(steered[0]))
    return first


def _rollouts(
    model: Any, rows: list[list[int]], n_tokens: int, batch_size: int, progress: bool | None
) -> list[list[int]]:
    """The unsteered greedy continuation of each prompt, ``batch_size`` prompts per decode."""
    out: list[list[int]] = []
    bar = runtime.progress(len(rows), "rollout", progress if len(rows) > batch_size else False)
    for chunk in runtime.chunks(len(rows), batch_size):
        out += runtime.decode_tokens(model, [rows[p] for p in chunk], max_new_tokens=n_tokens)
        bar.update(len(chunk))
    bar.close()
    return out


def _wide(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _log_softmax(logits: Tensor) -> Tensor:
    """Log-softmax in float32, or in the logits' dtype when it is wider."""
    return logits.to(_wide(logits.dtype)).log_softmax(-1)


def _by_length(rows: Sequence[Sequence[int]]) -> list[int]:
    """Prompt indices, shortest rows first (ties in prompt order): batches pad little."""
    return sorted(range(len(rows)), key=lambda p: len(rows[p]))


def _steerings(
    model: Any, steerings: Sequence[RowSteering]
) -> tuple[list[RowSteering], list[bool]]:
    """The steerings as a list, each checked against ``model`` before any forward pass, and
    whether each applies anything (``None`` or an empty list does not)."""
    plans = check_row_steerings(steerings)
    return plans, [bool(resolve_steering(model, plan)) for plan in plans]


__all__ = [
    "completion_logprobs_many",
    "next_token_kl",
    "next_token_logprobs",
    "propensities",
    "rollout_kl",
]
