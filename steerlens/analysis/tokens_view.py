"""Per-token views of steering vectors over a text: where a vector "fires" and what steering
with it does to each token.

For a prompt (and optionally a reply after it), `token_view` measures, for each vector:

- ``"projection"``: each token's residual stream at ``blocks.{layer}.hook_resid_pre``
  (unsteered) projected onto the vector's unit direction, in residual-stream units;
- ``"logprob_change"``: each token's log-probability given the tokens before it, steered minus
  unsteered, teacher-forced on the same text (nats; the first token has no prediction).

The result renders as an HTML heatmap over the text (`TokenView.html`, shown by Jupyter; a
page of its own with `TokenView.save_html`, or a section of a vector card or an optimization
report) and as a plotly heatmap (`TokenView.plot`).
"""

from __future__ import annotations

import html as _html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import plotly.graph_objects as go
import torch
from jaxtyping import Float

from steerlens import runtime
from steerlens.analysis.lens import VectorLike, check_nonzero, direction_at, prompt_tokens
from steerlens.analysis.plots import style_figure, write_page
from steerlens.errors import InputError, LayerError, SpecError
from steerlens.io.plain import short, table, to_plain
from steerlens.steering.steer import Steering, steer

Measure = Literal["projection", "logprob_change"]
MEASURES: tuple[Measure, ...] = ("projection", "logprob_change")
_LABELS = {
    "projection": ("projection onto the vector", "residual-stream units"),
    "logprob_change": ("change in log-prob when steered", "nats"),
}


@dataclass(frozen=True)
class TokenView:
    """Per-token measurements of one or more vectors over one text.

    Attributes:
        tokens: each token as text (the text is their concatenation).
        token_ids: the token ids.
        n_prompt: how many of the tokens are the prompt (the rest are the reply).
        labels: one label per vector.
        layers: the layer each vector was read and applied at.
        strength: the strength each vector was applied with for ``logprob_change``.
        projection: ``[vectors, tokens]`` each token's unsteered residual at the vector's layer
            dotted with the vector's unit direction (residual-stream units).
        logprob_change: ``[vectors, tokens]`` steered minus unsteered log-probability of each
            token given the tokens before it (nats); ``NaN`` for the first token.
    """

    tokens: tuple[str, ...]
    token_ids: tuple[int, ...]
    n_prompt: int
    labels: tuple[str, ...]
    layers: tuple[int, ...]
    strength: float
    projection: Float[np.ndarray, "vectors tokens"]
    logprob_change: Float[np.ndarray, "vectors tokens"]

    def values(self, measure: Measure) -> Float[np.ndarray, "vectors tokens"]:
        """The ``[vectors, tokens]`` array of ``"projection"`` or ``"logprob_change"``."""
        if measure not in MEASURES:
            raise SpecError(f"unknown measure {measure!r}; use one of {list(MEASURES)}.")
        return self.projection if measure == "projection" else self.logprob_change

    def to_rows(self) -> list[dict[str, Any]]:
        """One row per vector and token."""
        return [
            {
                "vector": label,
                "layer": layer,
                "position": j,
                "token": tok,
                "token_id": tid,
                "part": "prompt" if j < self.n_prompt else "reply",
                "projection": float(self.projection[i, j]),
                "logprob_change": _finite_or_none(self.logprob_change[i, j]),
            }
            for i, (label, layer) in enumerate(zip(self.labels, self.layers, strict=True))
            for j, (tok, tid) in enumerate(zip(self.tokens, self.token_ids, strict=True))
        ]

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready; the first token's ``logprob_change`` is ``None``)."""
        out: dict[str, Any] = to_plain(self)
        out["logprob_change"] = [[_finite_or_none(x) for x in row] for row in self.logprob_change]
        return out

    def __repr__(self) -> str:
        head = (
            f"TokenView({len(self.tokens)} tokens ({self.n_prompt} prompt), vectors "
            f"{list(self.labels)} at layers {list(self.layers)}, strength {self.strength:g})\n"
        )
        rows = []
        for i, label in enumerate(self.labels):
            for measure in MEASURES:
                vals = self.values(measure)[i]
                j = _peak(vals, skip_first=measure == "projection")
                rows.append([label, measure, short(self.tokens[j], 20), str(j), f"{vals[j]:+.4g}"])
        return head + table(["vector", "measure", "peak token", "at", "value"], rows)

    # -- views ------------------------------------------------------------------------------
    def html(self, measures: Sequence[Measure] = MEASURES) -> str:
        """A self-contained HTML heatmap over the text: one block per vector and measure,
        tokens coloured by value (red positive, blue negative) and the value on hover. Reply
        tokens are underlined. The colour range leaves out the first token's projection (an
        attention sink with a huge norm on many models); its value still shows on hover.

        Example:
            >>> import torch
            >>> from steerlens.testing import tiny_model
            >>> view = token_view(tiny_model(), torch.ones(64), "the cat", layer=1)
            >>> page = view.html()
            >>> page.count("<span title=") == 2 * len(view.tokens)
            True
        """
        blocks = []
        for i, (label, layer) in enumerate(zip(self.labels, self.layers, strict=True)):
            for measure in measures:
                vals = self.values(measure)[i]
                name, unit = _LABELS[measure]
                vmax = _colour_range(vals, skip_first=measure == "projection")
                spans = "".join(
                    _span(tok, float(v), vmax, unit, reply=j >= self.n_prompt)
                    for j, (tok, v) in enumerate(zip(self.tokens, vals, strict=True))
                )
                extra = f", strength {self.strength:g}" if measure == "logprob_change" else ""
                blocks.append(
                    f'<div style="margin:0.6em 0"><div style="font-size:0.85em;color:#555">'
                    f"{_html.escape(label)}: {name} at layer {layer}{extra} ({unit}; colour "
                    f"range ±{vmax:.3g})</div>"
                    f'<div style="white-space:pre-wrap;font-family:monospace;line-height:1.7">'
                    f"{spans}</div></div>"
                )
        return '<div class="steerlens-token-view">' + "".join(blocks) + "</div>"

    def _repr_html_(self) -> str:
        return self.html()

    def save_html(
        self, path: str | Path, *, measures: Sequence[Measure] = MEASURES, title: str | None = None
    ) -> Path:
        """Write the heatmap (`html`) as one self-contained page (no scripts), atomically.
        Returns the path written.

        Example:
            >>> import pathlib, tempfile, torch
            >>> from steerlens.testing import tiny_model
            >>> view = token_view(tiny_model(), torch.ones(64), "the cat", layer=1)
            >>> path = view.save_html(pathlib.Path(tempfile.mkdtemp()) / "view.html")
            >>> "steerlens-token-view" in path.read_text(encoding="utf-8")
            True
        """
        heading = title or f"Per-token view: {', '.join(self.labels)}"
        body = f"<h2>{_html.escape(heading)}</h2>{self.html(measures)}"
        return write_page(path, heading, body, example_name="view.html")

    def plot(self, measure: Measure = "projection") -> go.Figure:
        """A heatmap: one row per vector, one column per token (hover: token and value).

        Example:
            >>> import torch
            >>> from steerlens.testing import tiny_model
            >>> view = token_view(tiny_model(), {"a": torch.ones(64), "b": -torch.ones(64)},
            ...                   "the cat", layer=1)
            >>> fig = view.plot("logprob_change")
            >>> list(fig.data[0].y)
            ['a', 'b']
        """
        vals = self.values(measure)
        name, unit = _LABELS[measure]
        vmax = max(_colour_range(row, skip_first=measure == "projection") for row in vals)
        columns = [f"{j}: {tok!r}" for j, tok in enumerate(self.tokens)]
        fig = go.Figure(
            go.Heatmap(
                z=np.where(np.isfinite(vals), vals, np.nan).tolist(),
                x=columns,
                y=list(self.labels),
                zmid=0.0,
                zmin=-vmax,
                zmax=vmax,
                colorscale="RdBu",
                reversescale=True,
                hovertemplate="%{y} · token %{x}: %{z:.4g}<extra></extra>",
                colorbar={"title": {"text": unit}},
            )
        )
        fig = style_figure(fig, f"Per-token {name}", "token", "vector")
        fig.update_xaxes(tickangle=-60)
        if self.n_prompt < len(self.tokens):
            fig.add_vline(x=self.n_prompt - 0.5, line_dash="dash", annotation_text="reply")
        return fig


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(float(x)) else None


def _peak(vals: np.ndarray, *, skip_first: bool) -> int:
    """The index of the largest finite absolute value (past the first token if asked)."""
    start = 1 if skip_first and vals.shape[0] > 1 else 0
    mag = np.where(np.isfinite(vals), np.abs(vals), -1.0)
    return start + int(np.argmax(mag[start:]))


def _colour_range(vals: np.ndarray, *, skip_first: bool) -> float:
    start = 1 if skip_first and vals.shape[0] > 1 else 0
    finite = vals[start:][np.isfinite(vals[start:])]
    peak = float(np.abs(finite).max()) if finite.size else 0.0
    return peak if peak > 0 else 1.0


def _span(token: str, value: float, vmax: float, unit: str, *, reply: bool) -> str:
    shown = token.replace("\n", "↵\n") if token else "·"
    if math.isfinite(value):
        t = max(-1.0, min(1.0, value / vmax))
        rgb = "214,96,77" if t >= 0 else "67,147,195"
        background = f"background:rgba({rgb},{abs(t):.3f});"
        tip = f"{token!r}: {value:+.4g} {unit}"
    else:
        background, tip = "", f"{token!r}: no value (first token)"
    underline = "border-bottom:2px solid #888;" if reply else ""
    return (
        f'<span title="{_html.escape(tip, quote=True)}" style="{background}{underline}'
        f'border-radius:2px">{_html.escape(shown)}</span>'
    )


def _token_pieces(model: Any, ids: Sequence[int]) -> tuple[str, ...]:
    """Each token's share of the decoded text, so that the pieces join to the text. A
    character split over several byte tokens belongs to the token that completes it (the
    tokens before it get ``""``)."""
    pieces: list[str] = []
    done = ""
    text = ""
    for j in range(len(ids)):
        text = runtime.decode(model, ids[: j + 1], skip_special_tokens=False)
        stable = text.rstrip("\ufffd")  # drop a character that is not complete yet
        if stable.startswith(done):
            pieces.append(stable[len(done) :])
        else:  # pragma: no cover - a tokenizer whose decoding of a prefix is not a prefix
            pieces.append(runtime.decode(model, [ids[j]], skip_special_tokens=False))
        done = stable
    if text.startswith(done) and len(text) > len(done):
        pieces[-1] += text[len(done) :]
    return tuple(pieces)


def _labelled(vectors: Any) -> list[tuple[str, VectorLike]]:
    if isinstance(vectors, Mapping):
        items = [(str(k), v) for k, v in vectors.items()]
    elif isinstance(vectors, (list, tuple)):
        items = [(f"v{i}", v) for i, v in enumerate(vectors)]
    else:
        items = [("vector", vectors)]
    if not items:
        raise SpecError("no vectors given; pass a vector, a list or a dict of vectors.")
    return items


@torch.no_grad()
def token_view(
    model: Any,
    vectors: VectorLike | Mapping[str, VectorLike] | Sequence[VectorLike],
    prompt: str,
    *,
    reply: str | None = None,
    layer: int | None = None,
    strength: float = 1.0,
    chat: bool | None = None,
    bos: bool = False,
) -> TokenView:
    """Each token's projection onto each vector, and its change in log-prob when steered.

    Args:
        model: a TransformerLens model.
        vectors: a ``SteeringVector`` or ``[d_model]`` tensor, a list of them (labelled
            ``v0, v1, ...``) or a dict label -> vector.
        prompt: the text (with ``chat=True``, the user message).
        reply: text after the prompt, e.g. a generated reply (teacher-forced).
        layer: the layer to read and steer at (default: each vector's own; required for
            tensors and multi-layer vectors).
        strength: the multiplier for the steered pass (``x + strength * v``, every token).
        chat: format ``prompt`` with the chat template (default:
            when the model has one; ``False``: as written).
        bos: put the BOS token in front (see `steerlens.runtime.encode`).

    Raises:
        InputError: an empty prompt or reply, or a text of one token only.
        LayerError: a layer out of range, or none for a tensor.
        ModelMismatchError, VectorShapeError: a vector made on another model.

    Example:
        >>> import torch
        >>> from steerlens.testing import tiny_model
        >>> view = token_view(tiny_model(), torch.ones(64), "the cat", reply=" sat", layer=1,
        ...                   chat=False)
        >>> "".join(view.tokens), view.n_prompt, view.projection.shape
        ('the cat sat', 6, (1, 10))
        >>> bool(np.isnan(view.logprob_change[0, 0]))
        True
    """
    if not isinstance(prompt, str):
        raise InputError(f"prompt must be one string, got {type(prompt).__name__}.")
    (prompt_ids,) = prompt_tokens(model, [prompt], chat=chat, bos=bos)
    text = runtime.format_prompts(model, [prompt], chat=chat)[0]
    ids = list(prompt_ids)
    if reply is not None:
        if not isinstance(reply, str) or not reply:
            raise InputError(f"reply is {reply!r}; pass a non-empty string or None.")
        reply_ids, _ = runtime.completion_tokens(model, prompt_ids, text, reply, label="reply")
        ids += reply_ids
    if len(ids) < 2:
        raise InputError(
            f"the text {text!r} is one token; a per-token view needs two or more (the first "
            "token has no log-prob to change)."
        )
    runtime.check_fits(model, len(ids), "the prompt and reply", "use a shorter text")
    items = _labelled(vectors)
    resolved = []
    for label, vector in items:
        direction, la = direction_at(model, vector, layer, name=f"vector {label!r}")
        if la is None:
            raise LayerError(f"vector {label!r} is a bare tensor; pass layer= to read it.")
        check_nonzero(direction, f"vector {label!r}")
        resolved.append((label, vector, direction, la))
    layers = sorted({la for *_, la in resolved})
    names = [runtime.hook_name(la) for la in layers]
    tokens = torch.tensor([ids], device=runtime.device(model))
    _, cache = model.run_with_cache(tokens, names_filter=names)
    resid = {la: cache[name][0].float() for la, name in zip(layers, names, strict=True)}
    del cache
    base = runtime.score_rows(model, [(ids, 1)])[0]
    projection, change = [], []
    for _, vector, direction, la in resolved:
        unit = direction.detach().to(resid[la]).div(direction.detach().float().norm())
        projection.append((resid[la] @ unit).cpu().numpy())
        with steer(model, Steering(vector, layer=la, strength=strength)):
            steered = runtime.score_rows(model, [(ids, 1)])[0]
        change.append(np.concatenate([[np.nan], (steered - base).numpy()]))
    return TokenView(
        tokens=_token_pieces(model, ids),
        token_ids=tuple(ids),
        n_prompt=len(prompt_ids),
        labels=tuple(label for label, *_ in resolved),
        layers=tuple(la for *_, la in resolved),
        strength=float(strength),
        projection=np.stack(projection).astype(np.float64),
        logprob_change=np.stack(change).astype(np.float64),
    )


__all__ = ["TokenView", "token_view"]
