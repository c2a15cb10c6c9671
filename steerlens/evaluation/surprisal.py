"""Base-model surprisal (METHOD.md section 2.2) and the information complexity of a context.

With a base model ``B`` and a context ``C`` of example texts of the desired behavior, a sample
``x`` (e.g. a steered generation) scores ``-log B(x | C) / |x|``: its surprisal per token when
it follows ``C``. `mean_surprisal` averages this over samples, each cut to its first
``max_tokens`` tokens (the paper uses 100) so that repetition loops, which a model finds ever
more predictable, do not flatter a sample. Low surprisal means the samples look like what the
context leads the base model to expect. `compare_samples` scores two sample sets under one
context, `compare_contexts` one sample set under two contexts, and
`information_complexity` gives ``-log B(C)``, a bound on the information needed to
specify the behavior.

How text is joined: a sample is tokenised on its own and its tokens follow the context's tokens
(so that the context is computed once for all samples); put any separator, such as ``"\\n\\n"``,
at the end of the context. On a ``TransformerBridge`` the context runs once with a KV cache,
which is then copied to every batch of samples; other models recompute the context with each
batch (``context_passes`` on the result says which happened).

The first token and BOS: with ``bos=True`` the context is preceded by the tokenizer's BOS
token (unless it already starts with it), so every context token has a prefix. With
``bos=False`` nothing is added and the context's first token, which has no prefix, is not
scored by `information_complexity`. ``bos=None`` (default) adds BOS when the model itself
prepends one (TransformerLens's ``cfg.default_prepend_bos``) and the tokenizer has one; the
embedded SmolLM2 does not (its BOS, ``<|im_start|>``, opens a chat turn), so there the first
token is skipped.

Too long: a sample that, after truncation to ``max_tokens``, does not fit in the model's
context window together with the context is refused with `ContextWindowError`
(cutting the context would change the condition; cutting the sample further would change the
metric); lower ``max_tokens`` or shorten the context.

Base model: on this machine the embedded SmolLM2-135M-Instruct, used without its chat
template, stands in for a base model.
"""

from __future__ import annotations

import copy
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from steerlens import runtime
from steerlens.errors import InputError, SpecError
from steerlens.io.plain import short, table, to_plain
from steerlens.runtime import token_logprobs
from steerlens.runtime.logprobs import convert_loss


@dataclass(frozen=True)
class SurprisalResult:
    """Mean per-token surprisal of samples under a base model given a context.

    Attributes:
        mean: the mean over samples of ``-log B(x | C) / |x|`` (per token, in ``unit``).
        per_sample: each sample's per-token surprisal.
        n_tokens: each sample's scored token count (after truncation).
        n_truncated: how many samples were cut to ``max_tokens``.
        unit: ``"bits"``, ``"nats"`` or ``"hartleys"``.
        max_tokens: the truncation length (``None``: none).
        context_tokens: tokens of the context (with BOS, if added).
        bos: whether a BOS token was put before the context.
        context_passes: forward passes over the context tokens (1 with the KV cache).
    """

    mean: float
    per_sample: tuple[float, ...]
    n_tokens: tuple[int, ...]
    n_truncated: int
    unit: str
    max_tokens: int | None
    context_tokens: int
    bos: bool
    context_passes: int

    @property
    def sem(self) -> float:
        """Standard error of `mean` (0 for a single sample)."""
        n = len(self.per_sample)
        return statistics.stdev(self.per_sample) / math.sqrt(n) if n > 1 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, floats, strings) for saving as JSON."""
        return to_plain(self)

    def summary(self) -> str:
        return (
            f"{self.mean:.4f} ± {self.sem:.4f} {self.unit}/token over {len(self.per_sample)} "
            f"samples"
        )

    def __repr__(self) -> str:
        head = (
            f"SurprisalResult: {self.summary()} (context {self.context_tokens} tokens, "
            f"{self.context_passes} context pass(es); max_tokens {self.max_tokens}, "
            f"{self.n_truncated} truncated)\n"
        )
        rows = [
            [str(i), str(n), f"{s:.4f}"]
            for i, (n, s) in enumerate(zip(self.n_tokens, self.per_sample, strict=True))
        ]
        return head + table(["sample", "tokens", f"surprisal ({self.unit}/token)"], rows)


@dataclass(frozen=True)
class SurprisalComparison:
    """Two `SurprisalResult`\\ s side by side; ``difference = first - second``."""

    labels: tuple[str, str]
    first: SurprisalResult
    second: SurprisalResult

    @property
    def difference(self) -> float:
        """``first.mean - second.mean``: positive when the first is more surprising."""
        return self.first.mean - self.second.mean

    def to_dict(self) -> dict[str, Any]:
        """Plain data, with the difference included."""
        return to_plain(self) | {"difference": self.difference}

    def __repr__(self) -> str:
        unit = self.first.unit
        rows = [
            [label, str(len(r.per_sample)), f"{r.mean:.4f}", f"{r.sem:.4f}"]
            for label, r in zip(self.labels, (self.first, self.second), strict=True)
        ]
        head = f"SurprisalComparison: difference {self.difference:+.4f} {unit}/token\n"
        return head + table(["", "samples", f"mean ({unit}/token)", "sem"], rows)


@dataclass(frozen=True)
class InformationComplexity:
    """``-log B(C)``: the surprisal of a context, summed over its tokens.

    Attributes:
        value: the total, in ``unit``.
        n_tokens: the tokens scored.
        context_tokens: the context's tokens (without an added BOS).
        first_token: how the first token was treated (conditioned on BOS, or skipped).
        unit: ``"bits"``, ``"nats"`` or ``"hartleys"``.
    """

    value: float
    n_tokens: int
    context_tokens: int
    first_token: str
    unit: str

    @property
    def per_token(self) -> float:
        return self.value / self.n_tokens

    def to_dict(self) -> dict[str, Any]:
        """Plain data for saving as JSON."""
        return to_plain(self)

    def __repr__(self) -> str:
        return (
            f"InformationComplexity: {self.value:.4f} {self.unit} over {self.n_tokens} tokens "
            f"({self.per_token:.4f} {self.unit}/token; first token {self.first_token})"
        )


# -- tokens ---------------------------------------------------------------------------------


def context_tokens(model: Any, context: str, bos: bool | None) -> tuple[list[int], bool]:
    """The context's tokens, with BOS in front when ``bos`` says so (see module docstring)."""
    if not isinstance(context, str) or not context.strip():
        raise InputError(
            f"the context is empty ({context!r}); pass example texts of the behavior to "
            "condition the base model on."
        )
    if bos is None:
        has_bos = runtime.tokenizer(model).bos_token_id is not None
        bos = has_bos and bool(getattr(model.cfg, "default_prepend_bos", False))
    return runtime.encode(model, context, bos=bos), bool(bos)


def sample_tokens(
    model: Any, samples: str | Sequence[str], max_tokens: int | None
) -> tuple[list[list[int]], int]:
    """Each sample's tokens cut to ``max_tokens``, and how many were cut."""
    items = [samples] if isinstance(samples, str) else list(samples)
    if not items:
        raise InputError("the sample list is empty; pass at least one text to score.")
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        raise SpecError(f"max_tokens must be an int >= 1 or None, got {max_tokens!r}.")
    out, n_cut = [], 0
    for i, text in enumerate(items):
        if not isinstance(text, str):
            raise InputError(f"sample {i} is a {type(text).__name__}, not a str.")
        tokens = runtime.encode(model, text)
        if not tokens:
            raise InputError(
                f"sample {i} ({text!r}) has no tokens; surprisal per token needs at least one."
            )
        if max_tokens is not None and len(tokens) > max_tokens:
            tokens, n_cut = tokens[:max_tokens], n_cut + 1
        out.append(tokens)
    return out, n_cut


def _check_lengths(
    model: Any, prefix: list[int], samples: list[list[int]], max_tokens: int | None
) -> None:
    runtime.check_fits(
        model, len(prefix) + 1, "the context plus one sample token", "use a shorter context"
    )
    longest = max(range(len(samples)), key=lambda i: len(samples[i]))
    room = (getattr(model.cfg, "n_ctx", 0) or 0) - len(prefix)
    runtime.check_fits(
        model,
        len(prefix) + len(samples[longest]),
        f"the {len(prefix)}-token context followed by sample {longest} "
        f"({len(samples[longest])} tokens with max_tokens={max_tokens})",
        f"pass max_tokens <= {room} or use a shorter context",
    )


# -- scoring --------------------------------------------------------------------------------


def _gather(
    logits: Float[Tensor, "batch pos vocab"], rows: list[list[int]], start: int
) -> list[Tensor]:
    """Log-probs of ``rows[i][1:]`` read from ``logits[i, start:]`` (token t from t - 1)."""
    dev = logits.device
    row_idx = [i for i, r in enumerate(rows) for _ in r[1:]]
    pos_idx = [start + t for r in rows for t in range(len(r) - 1)]
    targets = [t for r in rows for t in r[1:]]
    if not targets:
        return [torch.zeros(0) for _ in rows]
    picked = logits[torch.tensor(row_idx, device=dev), torch.tensor(pos_idx, device=dev)]
    lp = token_logprobs(picked, torch.tensor(targets, device=dev), 1.0).cpu()
    return list(lp.split([len(r) - 1 for r in rows]))


def _cached_logprobs(
    model: Any, prefix: list[int], samples: list[list[int]], batch_size: int
) -> list[Tensor] | None:
    """The KV-cached path: the context runs once; ``None`` if the model gives no cache."""
    dev = runtime.device(model)
    ctx = torch.tensor([prefix], device=dev)
    logits, cache = model(ctx, return_type="logits_and_cache")
    if cache is None or not hasattr(cache, "batch_repeat_interleave"):
        return None
    first = logits[0, -1].float().log_softmax(-1).cpu()  # predicts each sample's first token
    out: list[Tensor] = []
    for batch in runtime.chunks(len(samples), batch_size):
        rows = [samples[i] for i in batch]
        rest: list[Tensor] = [torch.zeros(0) for _ in rows]
        if max(len(r) for r in rows) > 1:
            tokens, mask = runtime.right_pad(model, rows)
            full_mask = torch.cat([torch.ones_like(mask[:, :1]).expand(-1, len(prefix)), mask], 1)
            batch_cache = copy.deepcopy(cache)  # the forward pass extends the cache it is given
            batch_cache.batch_repeat_interleave(len(rows))
            with runtime.finite_scores(model):  # float64: pads stay finite under a window
                sample_logits = model(tokens, attention_mask=full_mask, past_key_values=batch_cache)
            rest = _gather(sample_logits, rows, 0)
        out += [torch.cat([first[r[:1]], lp]) for r, lp in zip(rows, rest, strict=True)]
    return out


def _recomputed_logprobs(
    model: Any, prefix: list[int], samples: list[list[int]], batch_size: int
) -> tuple[list[Tensor], int]:
    """Without a cache: ``context + sample`` rows, the context recomputed in every batch."""
    rows = [(prefix + sample, len(prefix)) for sample in samples]
    out = runtime.score_rows(model, rows, batch_size=batch_size)
    return out, len(range(0, len(samples), batch_size))


@torch.no_grad()
def sample_logprobs(
    model: Any, prefix: list[int], samples: list[list[int]], batch_size: int
) -> tuple[list[Float[Tensor, " tokens"]], int]:
    """``log B(x_t | prefix, x_<t)`` (nats) for every token of every sample, and the number
    of forward passes over the prefix."""
    if runtime.supports_kv_cache(model):
        cached = _cached_logprobs(model, prefix, samples, batch_size)
        if cached is not None:
            return cached, 1
    return _recomputed_logprobs(model, prefix, samples, batch_size)


def _surprisal_result(
    logprobs: Sequence[Tensor],
    *,
    unit: str,
    max_tokens: int | None,
    n_truncated: int,
    prefix: list[int],
    bos: bool,
    passes: int,
) -> SurprisalResult:
    per_sample = [float(convert_loss(-float(lp.double().sum()) / len(lp), unit)) for lp in logprobs]
    return SurprisalResult(
        mean=statistics.fmean(per_sample),
        per_sample=tuple(per_sample),
        n_tokens=tuple(len(lp) for lp in logprobs),
        n_truncated=n_truncated,
        unit=unit,
        max_tokens=max_tokens,
        context_tokens=len(prefix),
        bos=bos,
        context_passes=passes,
    )


def _score_sets(
    model: Any,
    sample_sets: Sequence[str | Sequence[str]],
    context: str,
    *,
    max_tokens: int | None,
    unit: str,
    bos: bool | None,
    batch_size: int,
) -> list[SurprisalResult]:
    """Score several sample sets under one context, computing the context once for all."""
    convert_loss(0.0, unit)
    runtime.check_batch_size(batch_size)
    prefix, used_bos = context_tokens(model, context, bos)
    tokenized = [sample_tokens(model, s, max_tokens) for s in sample_sets]
    everything = [t for tokens, _ in tokenized for t in tokens]
    _check_lengths(model, prefix, everything, max_tokens)
    logprobs, passes = sample_logprobs(model, prefix, everything, batch_size)
    results, start = [], 0
    for tokens, n_cut in tokenized:
        part = logprobs[start : start + len(tokens)]
        start += len(tokens)
        results.append(
            _surprisal_result(
                part,
                unit=unit,
                max_tokens=max_tokens,
                n_truncated=n_cut,
                prefix=prefix,
                bos=used_bos,
                passes=passes,
            )
        )
    return results


def mean_surprisal(
    base_model: Any,
    samples: str | Sequence[str],
    context: str,
    *,
    max_tokens: int | None = 100,
    unit: str = "bits",
    bos: bool | None = None,
    batch_size: int = 16,
) -> SurprisalResult:
    """Mean per-token surprisal of samples under a base model given a context.

    ``mean = (1/N) sum_x -log B(x | C) / |x|``, with each ``x`` cut to ``max_tokens`` tokens.
    The context is computed once (KV cache) and shared by all samples on a
    ``TransformerBridge``. On this machine the embedded SmolLM2, without its chat template,
    stands in for a base model.

    Args:
        base_model: the base model ``B`` (run unsteered).
        samples: a text or a list of texts (e.g. steered generations); each is tokenised on its
            own and follows the context's tokens.
        context: ``C``, example texts of the behavior; end it with a separator if the samples
            need one.
        max_tokens: score only each sample's first ``max_tokens`` tokens (``None``: all).
        unit: ``"bits"`` (default), ``"nats"`` or ``"hartleys"``.
        bos: put the tokenizer's BOS before the context (``None``: as the model does by
            default; see the module docstring).
        batch_size: samples per forward pass.

    Returns:
        A `SurprisalResult`.

    Raises:
        ContextWindowError: context plus a (truncated) sample longer than ``cfg.n_ctx``.

    Example:
        >>> from steerlens.testing import tiny_model
        >>> res = mean_surprisal(tiny_model(), ["the cat sat", "a dog"], "Examples:\\n")
        >>> res.unit, res.n_tokens, res.context_passes
        ('bits', (10, 5), 1)
    """
    return _score_sets(
        base_model,
        [samples],
        context,
        max_tokens=max_tokens,
        unit=unit,
        bos=bos,
        batch_size=batch_size,
    )[0]


def compare_samples(
    base_model: Any,
    samples_x: str | Sequence[str],
    samples_y: str | Sequence[str],
    context: str,
    *,
    labels: tuple[str, str] = ("X", "Y"),
    max_tokens: int | None = 100,
    unit: str = "bits",
    bos: bool | None = None,
    batch_size: int = 16,
) -> SurprisalComparison:
    """Mean surprisal of two sample sets under one context (e.g. steered vs reference texts).

    The context is computed once for both sets. ``difference`` is ``X - Y``.

    Example:
        >>> from steerlens.testing import tiny_model
        >>> cmp = compare_samples(tiny_model(), ["the cat"], ["zq xv"], "Examples:\\n")
        >>> cmp.first.context_passes, isinstance(cmp.difference, float)
        (1, True)
    """
    first, second = _score_sets(
        base_model,
        [samples_x, samples_y],
        context,
        max_tokens=max_tokens,
        unit=unit,
        bos=bos,
        batch_size=batch_size,
    )
    return SurprisalComparison(labels, first, second)


def compare_contexts(
    base_model: Any,
    samples: str | Sequence[str],
    context_1: str,
    context_2: str,
    *,
    labels: tuple[str, str] = ("C1", "C2"),
    max_tokens: int | None = 100,
    unit: str = "bits",
    bos: bool | None = None,
    batch_size: int = 16,
) -> SurprisalComparison:
    """Mean surprisal of one sample set under two contexts. ``difference`` is ``C1 - C2``.

    Example:
        >>> from steerlens.testing import tiny_model
        >>> cmp = compare_contexts(tiny_model(), ["the cat"], "cats:\\n", "dogs:\\n")
        >>> cmp.labels
        ('C1', 'C2')
    """
    kwargs: dict[str, Any] = {
        "max_tokens": max_tokens,
        "unit": unit,
        "bos": bos,
        "batch_size": batch_size,
    }
    first = _score_sets(base_model, [samples], context_1, **kwargs)[0]
    second = _score_sets(base_model, [samples], context_2, **kwargs)[0]
    return SurprisalComparison(labels, first, second)


@torch.no_grad()
def information_complexity(
    base_model: Any, context: str, *, unit: str = "bits", bos: bool | None = None
) -> InformationComplexity:
    """``-log B(C)``: the context's surprisal, summed over its tokens (each from its prefix).

    The first token has no prefix: with a BOS (``bos=True``, or ``None`` on a model that
    prepends one) it is predicted from BOS; otherwise it is skipped and the result says so
    (``first_token``). A context that starts with the BOS token already scores from the token
    after it.

    Example:
        >>> from steerlens.testing import tiny_model
        >>> ic = information_complexity(tiny_model(), "the cat sat")
        >>> ic.unit, ic.n_tokens, ic.first_token
        ('bits', 9, 'skipped (no BOS before the context)')
    """
    convert_loss(0.0, unit)
    tokens, _ = context_tokens(base_model, context, bos)
    if len(tokens) < 2:
        raise InputError(
            f"the context {short(context)} is one token and has no BOS before it, so no token "
            "has a prefix to be predicted from; pass bos=True or a longer context."
        )
    runtime.check_fits(base_model, len(tokens), "the context", "use a shorter context")
    lp = runtime.score_rows(base_model, [(tokens, 1)])[0]
    starts_with_bos = tokens[0] == runtime.tokenizer(base_model).bos_token_id
    first = (
        f"conditioned on BOS {runtime.decode(base_model, tokens[:1], skip_special_tokens=False)!r}"
        if starts_with_bos
        else "skipped (no BOS before the context)"
    )
    return InformationComplexity(
        value=float(convert_loss(-float(lp.double().sum()), unit)),
        n_tokens=len(lp),
        context_tokens=len(tokens) - int(starts_with_bos),
        first_token=first,
        unit=unit,
    )
