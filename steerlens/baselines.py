"""Contrastive baselines: CAA (difference of means) and the first principal component of paired
differences (RepE-style), from two prompt sets.

Activations are read at ``blocks.{layer}.hook_resid_pre`` and reduced to one vector per prompt:

- ``"last"``: the prompt's last token;
- ``"mean"``: the mean over the prompt's tokens;
- ``"completion"``: the mean over a completion's tokens, run after its prompt (items are
  ``(prompt, completion)`` pairs, or prompts plus ``completions=``).

Collection is batched and right-padded: the real tokens keep the positions they have when run
alone, the causal mask keeps padding out of their activations, and the reduction only ever reads
real tokens, so padding never enters a mean. Only the needed hooks are cached (``names_filter``),
the forward stops after the last needed layer when the model supports ``stop_at_layer``, no
gradients are kept, and `mean_activations` keeps running sums, so memory is bounded by one
batch however many prompts there are.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from steerlens import runtime
from steerlens.errors import InputError, NonFiniteError, SpecError, check_keywords
from steerlens.steering.vector import SteeringVector

Position = Literal["last", "mean", "completion"]
PromptItem = str | tuple[str, str]
POSITIONS = ("last", "mean", "completion")
_N_EXAMPLES = 3


@dataclass(frozen=True)
class _Row:
    """One tokenised item and the token span ``[start, stop)`` its activation is averaged over."""

    tokens: list[int]
    start: int
    stop: int


# -- inputs --------------------------------------------------------------------------------


def _check_position(position: str) -> None:
    if position not in POSITIONS:
        raise SpecError(f"unknown position {position!r}; use one of {', '.join(POSITIONS)}.")


def _pairs(
    prompts: Sequence[PromptItem], completions: Sequence[str] | None, what: str
) -> list[tuple[str, str]]:
    if completions is not None:
        if len(completions) != len(prompts):
            raise InputError(
                f"{what}: {len(prompts)} prompts but {len(completions)} completions; give one "
                "completion per prompt."
            )
        return [(str(p), str(c)) for p, c in zip(prompts, completions, strict=True)]
    out = []
    for i, item in enumerate(prompts):
        if not (isinstance(item, tuple) and len(item) == 2):
            raise InputError(
                f"{what}: item {i} is {item!r}, but position='completion' needs (prompt, "
                "completion) pairs; pass pairs or completions=[...]."
            )
        out.append((item[0], item[1]))
    return out


def _rows(
    model: Any,
    prompts: Sequence[PromptItem],
    *,
    position: str,
    chat: bool | None,
    completions: Sequence[str] | None,
    bos: bool = False,
    what: str = "prompts",
) -> list[_Row]:
    """Tokenise every item (BOS in front with ``bos``) and find the span each is averaged
    over."""
    _check_position(position)
    if isinstance(prompts, str):
        raise InputError(f"{what} must be a list of prompts, got one str; wrap it: [prompt].")
    if len(prompts) == 0:
        raise InputError(f"the {what} set is empty; pass at least one prompt.")
    if position != "completion":
        if completions is not None:
            raise SpecError(
                f"completions= was given with position={position!r}; pass "
                "position='completion' to average over the completions' tokens."
            )
        bad = next((i for i, p in enumerate(prompts) if not isinstance(p, str)), None)
        if bad is not None:
            raise InputError(
                f"{what}: item {bad} is {prompts[bad]!r}, not a str; (prompt, completion) "
                "pairs need position='completion'."
            )
    items = (
        _pairs(prompts, completions, what)
        if position == "completion"
        else [(p, "") for p in prompts]  # type: ignore[misc]
    )
    rows = []
    use_chat = runtime.uses_chat(model, chat)
    for i, (prompt, completion) in enumerate(items):
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError(f"{what}: prompt {i} is empty ({prompt!r}); pass some text.")
        text = runtime.chat_prompt(model, prompt) if use_chat else prompt
        ids = runtime.encode(model, text, bos=bos)
        if not ids:
            raise InputError(f"{what}: prompt {i} ({prompt!r}) tokenises to nothing.")
        if position == "last":
            rows.append(_Row(ids, len(ids) - 1, len(ids)))
        elif position == "mean":
            rows.append(_Row(ids, 0, len(ids)))
        else:
            rows.append(_completion_row(model, ids, text, completion, what, i))
    return rows


def _completion_row(
    model: Any, ids: list[int], text: str, completion: str, what: str, i: int
) -> _Row:
    if not isinstance(completion, str) or completion == "":
        raise InputError(f"{what}: completion {i} is empty ({completion!r}); pass some text.")
    comp, _ = runtime.completion_tokens(
        model, ids, text, completion, label=f"{what}: completion {i}"
    )
    return _Row(ids + comp, len(ids), len(ids) + len(comp))


# -- collection ----------------------------------------------------------------------------


def supports_stop_at_layer(model: Any) -> bool:
    for fn in (getattr(model, "run_with_cache", None), getattr(model, "forward", None)):
        try:
            if fn is not None and "stop_at_layer" in inspect.signature(fn).parameters:
                return True
        except (TypeError, ValueError):  # pragma: no cover - builtins without signatures
            continue
    return False


def _right_pad(model: Any, rows: Sequence[_Row]) -> tuple[Tensor, Tensor, Tensor]:
    """Tokens ``[b, pos]``, attention mask, and the span mask (True where a row is averaged)."""
    tokens, attention = runtime.right_pad(model, [r.tokens for r in rows])
    span = torch.zeros_like(attention, dtype=torch.bool)
    for i, r in enumerate(rows):
        span[i, r.start : r.stop] = True
    return tokens, attention, span


def reduce_span(acts: Float[Tensor, "b pos d"], span: Tensor) -> Float[Tensor, "b d"]:
    """Mean over each row's span; other positions (padding included) are never read."""
    acts = torch.where(span[..., None], acts.float(), torch.zeros((), device=acts.device))
    return acts.sum(dim=1) / span.sum(dim=1, keepdim=True).float()


def _batches(
    model: Any,
    rows: Sequence[_Row],
    layers: Sequence[int],
    batch_size: int,
    progress: bool | None = None,
) -> Iterator[dict[int, Float[Tensor, "b d_model"]]]:
    """Per batch, layer -> the reduced activations ``[b, d_model]`` (float32); a bar over the
    prompts when there is more than one batch."""
    runtime.check_batch_size(batch_size)
    several = len(rows) > batch_size
    bar = runtime.progress(len(rows), "activations", progress if several else False)
    names = [runtime.hook_name(la) for la in layers]
    kwargs: dict[str, Any] = {}
    stop = max(layers) + 1
    if stop < runtime.n_layers(model) and supports_stop_at_layer(model):
        kwargs["stop_at_layer"] = stop
    for begin in range(0, len(rows), batch_size):
        tokens, attention, span = _right_pad(model, rows[begin : begin + batch_size])
        with torch.no_grad(), runtime.finite_scores(model):  # float64: pads stay finite
            _, cache = model.run_with_cache(
                tokens, attention_mask=attention, names_filter=names, **kwargs
            )
        out = {}
        for la, name in zip(layers, names, strict=True):
            reduced = reduce_span(cache[name], span)
            if not bool(torch.isfinite(reduced).all()):
                raise NonFiniteError(
                    f"activations at {name} are NaN/inf for prompts {begin}-"
                    f"{begin + len(reduced) - 1}; check the model's weights and dtype."
                )
            out[la] = reduced
        del cache
        bar.update(len(tokens))
        yield out
    bar.close()


# How activations are read: the keywords of collect_activations after the layer.
READING_OPTIONS = ("position", "batch_size", "chat", "completions", "bos", "progress")


def collect_activations(
    model: Any,
    prompts: Sequence[PromptItem],
    layer: int | Sequence[int],
    *,
    position: Position = "last",
    batch_size: int = 16,
    chat: bool | None = None,
    completions: Sequence[str] | None = None,
    bos: bool = False,
    progress: bool | None = None,
) -> dict[int, Float[Tensor, "n d_model"]]:
    """One activation vector per prompt at ``blocks.{layer}.hook_resid_pre``, for each layer.

    Args:
        model: a TransformerLens model.
        prompts: prompt texts, or ``(prompt, completion)`` pairs for ``position="completion"``.
        layer: a layer or a list of layers.
        position: ``"last"`` (last token), ``"mean"`` (mean over the prompt's tokens) or
            ``"completion"`` (mean over the completion's tokens, run after its prompt).
        batch_size: prompts per forward pass.
        chat: format each prompt as a user message with the model's chat template (default:
            when the model has one; ``False``: as written).
        completions: one completion per prompt (instead of pairs) for ``"completion"``.
        bos: put the model's BOS token in front of each prompt (the tokenizer's default, as
            steering-vectors and repeng tokenise; see :func:`steerlens.runtime.encode`).
        progress: a bar over the prompts when there is more than one batch (default: in a
            terminal or a notebook).

    Returns:
        layer -> ``[n_prompts, d_model]`` float32 tensor on the model's device, in prompt order.

    Example:
        >>> from steerlens.testing import tiny_model
        >>> acts = collect_activations(tiny_model(), ["the cat", "a"], [0, 1], position="mean")
        >>> sorted(acts), tuple(acts[1].shape)
        ([0, 1], (2, 64))
    """
    la = sorted(set(runtime.check_layers(model, layer)))
    rows = _rows(model, prompts, position=position, chat=chat, completions=completions, bos=bos)
    parts: dict[int, list[Tensor]] = {layer: [] for layer in la}
    for batch in _batches(model, rows, la, batch_size, progress):
        for layer, acts in batch.items():
            parts[layer].append(acts)
    return {layer: torch.cat(chunks) for layer, chunks in parts.items()}


def mean_activations(
    model: Any, prompts: Sequence[PromptItem], layer: int | Sequence[int], **reading: Any
) -> dict[int, Float[Tensor, " d_model"]]:
    """The mean of `collect_activations` over prompts, streamed with running sums
    (float64), so memory does not grow with the number of prompts. ``reading`` takes the
    keywords of `collect_activations` (``position``, ``batch_size``, ``chat``,
    ``completions``, ``bos``, ``progress``).

    Example:
        >>> from steerlens.testing import tiny_model
        >>> means = mean_activations(tiny_model(), ["the cat", "a", "in"], 1, batch_size=2)
        >>> tuple(means[1].shape)
        (64,)
    """
    check_keywords(reading, READING_OPTIONS, where="mean_activations")
    la = sorted(set(runtime.check_layers(model, layer)))
    position = reading.get("position", "last")
    chat, completions = reading.get("chat"), reading.get("completions")
    bos = reading.get("bos", False)
    rows = _rows(model, prompts, position=position, chat=chat, completions=completions, bos=bos)
    sums: dict[int, Tensor] = {}
    batch_size, progress = reading.get("batch_size", 16), reading.get("progress")
    for batch in _batches(model, rows, la, batch_size, progress):
        for layer, acts in batch.items():
            part = acts.double().sum(dim=0)
            sums[layer] = sums[layer] + part if layer in sums else part
    return {layer: (s / len(rows)).float() for layer, s in sums.items()}


# -- the baselines -------------------------------------------------------------------------


def _example_texts(items: Sequence[PromptItem]) -> list[Any]:
    return [list(i) if isinstance(i, tuple) else i for i in list(items)[:_N_EXAMPLES]]


def _vector(
    model: Any,
    directions: dict[int, Tensor],
    method: str,
    positive: Sequence[PromptItem],
    negative: Sequence[PromptItem],
    reading: dict[str, Any],
    *,
    paired: bool,
    **extra: Any,
) -> SteeringVector:
    """The baseline's vector, with its provenance: the method, how activations were read
    (``reading``: `_read_sets`'s), the prompt counts and a few examples (``extra``: the
    method's own settings)."""
    provenance = {
        "method": method,
        "position": reading["position"],
        "paired": paired,
        "chat": runtime.uses_chat(model, reading["chat"]),
        "n_positive": len(positive),
        "n_negative": len(negative),
        "hook_template": runtime.HOOK_TEMPLATE,
        "examples": {"positive": _example_texts(positive), "negative": _example_texts(negative)},
        **extra,
        "bos": reading["bos"],
    }
    return SteeringVector(directions, model_id=runtime.model_id(model), provenance=provenance)


def _split_completions(
    completions: tuple[Sequence[str], Sequence[str]] | None,
) -> tuple[Sequence[str] | None, Sequence[str] | None]:
    if completions is None:
        return None, None
    if not (isinstance(completions, (tuple, list)) and len(completions) == 2):
        raise SpecError(
            "completions= must be a pair of lists: (positive completions, negative completions)."
        )
    return completions[0], completions[1]


def _check_sets(
    model: Any,
    positive: Sequence[PromptItem],
    negative: Sequence[PromptItem],
    *,
    completions: tuple[Sequence[str] | None, Sequence[str] | None],
    position: str,
    chat: bool | None,
    bos: bool,
    batch_size: int,
) -> None:
    """Check both sets up front (cheap: tokenisation only), before any forward pass."""
    for what, items, comps in zip(
        ("positive", "negative"), (positive, negative), completions, strict=True
    ):
        _rows(model, items, position=position, chat=chat, completions=comps, bos=bos, what=what)


def _check_paired(positive: Sequence[Any], negative: Sequence[Any]) -> None:
    if len(positive) != len(negative):
        raise InputError(
            f"paired prompt sets must have the same length; got {len(positive)} positive and "
            f"{len(negative)} negative prompts. Pair each positive with one negative (or pass "
            "paired=False to diff_of_means)."
        )


def _read_sets(
    read: Callable[..., dict[int, Tensor]],
    model: Any,
    positive: Sequence[PromptItem],
    negative: Sequence[PromptItem],
    layer: int | Sequence[int],
    completions: tuple[Sequence[str], Sequence[str]] | None,
    progress: bool | None,
    reading: dict[str, Any],
) -> tuple[list[int], dict[int, Tensor], dict[int, Tensor]]:
    """The layers, and ``read``'s activations of the positive set and of the negative set at
    them (``reading``: the keywords ``position``, ``batch_size``, ``chat`` and ``bos``); both
    sets are checked before any forward pass."""
    pos_c, neg_c = _split_completions(completions)
    la = sorted(set(runtime.check_layers(model, layer)))
    _check_sets(model, positive, negative, completions=(pos_c, neg_c), **reading)
    pos = read(model, positive, la, completions=pos_c, progress=progress, **reading)
    neg = read(model, negative, la, completions=neg_c, progress=progress, **reading)
    return la, pos, neg


def diff_of_means(
    model: Any,
    positive: Sequence[PromptItem],
    negative: Sequence[PromptItem],
    layer: int | Sequence[int],
    *,
    position: Position = "last",
    paired: bool = False,
    batch_size: int = 16,
    chat: bool | None = None,
    completions: tuple[Sequence[str], Sequence[str]] | None = None,
    bos: bool = False,
    progress: bool | None = None,
) -> SteeringVector:
    """Contrastive activation addition (CAA): mean activation over the positive prompts minus
    the mean over the negative prompts, at ``blocks.{layer}.hook_resid_pre`` of each layer.

    Args:
        model: a TransformerLens model.
        positive: prompts with the behavior (or ``(prompt, completion)`` pairs).
        negative: prompts without it.
        layer: a layer or a list of layers; the vector has one direction per layer.
        position: ``"last"``, ``"mean"`` or ``"completion"`` (see `collect_activations`).
        paired: the sets are pairs (``positive[i]`` contrasts with ``negative[i]``); their
            lengths must match. The mean difference is the same either way.
        batch_size: prompts per forward pass.
        chat: format each prompt as a user message with the model's chat template (default:
            when the model has one; ``False``: as written).
        completions: ``(positive_completions, negative_completions)`` for ``"completion"``.
        bos: put the model's BOS token in front of each prompt, as ``tokenizer(text)`` does by
            default and as steering-vectors and repeng tokenise (see
            `steerlens.runtime.encode`); recorded in the provenance.
        progress: a bar over each prompt set when it takes more than one batch (default: in a
            terminal or a notebook).

    Returns:
        A ``SteeringVector`` with provenance: method ``"diff_of_means"``, the prompt counts,
        the position, the BOS rule, and a few example prompts.

    Example:
        >>> from steerlens.testing import tiny_model
        >>> v = diff_of_means(tiny_model(), ["the cat", "the dog"], ["a cat", "a dog"], [0, 1])
        >>> v.layers, v.provenance["method"], v.provenance["n_positive"]
        ([0, 1], 'diff_of_means', 2)
    """
    if paired:
        _check_paired(positive, negative)
    kw: dict[str, Any] = {"position": position, "batch_size": batch_size, "chat": chat, "bos": bos}
    la, mean_pos, mean_neg = _read_sets(
        mean_activations, model, positive, negative, layer, completions, progress, kw
    )
    directions = {layer: mean_pos[layer] - mean_neg[layer] for layer in la}
    return _vector(model, directions, "diff_of_means", positive, negative, kw, paired=paired)


def principal_direction(
    differences: Float[Tensor, "n d_model"], *, center: bool = False
) -> Float[Tensor, " d_model"]:
    """The unit first principal component of the rows of ``differences``, signed so that the
    rows project positively on average.

    Args:
        differences: one row per pair, ``positive_i - negative_i``.
        center: subtract the mean row first (classic PCA, as in RepE); the default keeps the
            mean, so the component also captures the consistent shift between the two sets.

    Example:
        >>> d = torch.tensor([[-2.0, 0.0], [-3.0, 0.0], [-1.0, 0.0]])
        >>> principal_direction(d).abs().tolist(), float(principal_direction(d)[0])
        ([1.0, 0.0], -1.0)
    """
    if differences.ndim != 2 or differences.shape[0] == 0:
        raise InputError(
            f"differences must be a non-empty [n, d_model] matrix, got shape "
            f"{tuple(differences.shape)}."
        )
    if center and differences.shape[0] < 2:
        raise InputError("center=True needs at least two pairs; pass center=False for one.")
    x = differences.float()
    if center:
        x = x - x.mean(dim=0, keepdim=True)
    if not bool(torch.isfinite(x).all()):
        raise NonFiniteError("differences contain NaN/inf; check the activations.")
    if float(x.abs().max()) == 0.0:
        raise InputError(
            "all differences are zero, so they have no principal component; the positive and "
            "negative prompts give identical activations at this layer."
        )
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    u = vh[0]
    return -u if float((differences.float() @ u).mean()) < 0 else u


def pca_direction(
    model: Any,
    positive: Sequence[PromptItem],
    negative: Sequence[PromptItem],
    layer: int | Sequence[int],
    *,
    position: Position = "last",
    batch_size: int = 16,
    chat: bool | None = None,
    completions: tuple[Sequence[str], Sequence[str]] | None = None,
    center: bool = False,
    bos: bool = False,
    progress: bool | None = None,
) -> SteeringVector:
    """RepE-style direction: the first principal component of the paired differences
    ``positive_i - negative_i`` at each layer (see `principal_direction`).

    The sign makes positives project higher than negatives on average. The direction is
    scaled by the mean projection of the differences onto it (the mean difference's
    component along it), so its norm is comparable with `diff_of_means`. The keywords are
    those of `diff_of_means` (``progress``: a bar over each prompt set).

    Example:
        >>> from steerlens.testing import tiny_model
        >>> v = pca_direction(tiny_model(), ["the cat", "the dog"], ["a cat", "a dog"], 1)
        >>> v.provenance["method"], v.layers
        ('pca_of_differences', [1])
    """
    _check_paired(positive, negative)
    kw: dict[str, Any] = {"position": position, "batch_size": batch_size, "chat": chat, "bos": bos}
    la, acts_pos, acts_neg = _read_sets(
        collect_activations, model, positive, negative, layer, completions, progress, kw
    )
    directions = {}
    for layer in la:
        diffs = acts_pos[layer] - acts_neg[layer]
        u = principal_direction(diffs, center=center)
        directions[layer] = u * (diffs @ u).mean()
    return _vector(
        model,
        directions,
        "pca_of_differences",
        positive,
        negative,
        kw,
        paired=True,
        centered=center,
    )


__all__ = [
    "collect_activations",
    "diff_of_means",
    "mean_activations",
    "pca_direction",
    "principal_direction",
]
