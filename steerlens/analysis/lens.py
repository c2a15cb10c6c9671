"""The logit lens of a steering vector: the tokens it promotes and suppresses most when read
through the model's unembedding.

Views (rows of `LogitLensResult.scores`):

- ``"unembed"``: ``W_U^T v``, the vector read straight through the unembedding.
- ``"final_norm"``: ``W_U^T (g * v)`` (for a LayerNorm, ``v`` is centred first), the vector
  read through the final norm and then the unembedding. The final norm maps a residual ``x``
  to ``g * x / rms(x)``: for a *direction* the division by ``rms(x)`` is one positive number
  set by the residual it is added to, so it rescales every token's score alike and leaves
  their order unchanged; the elementwise weight ``g`` (and the LayerNorm's centring) do change
  the order, and are what this view applies. This is also the *direct path* through the
  blocks above the vector's hook: the residual connections carry ``v`` unchanged to the final
  norm, so what the blocks add on top is not a direct effect.
- ``"steered"`` (with ``prompts=``): what the blocks above the hook do with it, measured: the
  mean change in next-token log-probability (nats) over every position of the prompts when the
  vector is added at its layer (``position="last"``: at each prompt's last position only, the
  first token of a reply, where a behavior such as refusing is decided).

The difference of two vectors is a vector: ``logit_lens(model, a - b, label="a - b")``. When
their norms differ, that lens is mostly the bigger vector's; `logit_lens_difference` compares
their *directions* (each at unit norm), and works for vectors at different layers.
"""

from __future__ import annotations

import dataclasses
import html as _html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import plotly.graph_objects as go
import torch
from jaxtyping import Float, Int
from plotly.subplots import make_subplots
from torch import Tensor

from steerlens import runtime
from steerlens.analysis.plots import TABLE_STYLE, html_bar, style_figure
from steerlens.errors import InputError, LayerError, SpecError, SteerlensError
from steerlens.io.plain import table, to_plain
from steerlens.steering.interventions import check_vector
from steerlens.steering.steer import Steering, steer
from steerlens.steering.vector import SteeringVector

VectorLike = SteeringVector | Tensor
VIEWS = ("unembed", "final_norm", "steered")
LensPosition = Literal["all", "last"]
_POSITIONS = ("all", "last")
_TITLES = {
    "unembed": "through the unembedding",
    "final_norm": "through the final norm and unembedding (direct path)",
    "steered": "steered: mean change in next-token log-prob",
}


# -- shared inputs (also used by the per-token view, scale and card) ------------------------


def direction_at(
    model: Any, vector: VectorLike, layer: int | None, *, name: str = "vector"
) -> tuple[Float[Tensor, " d_model"], int | None]:
    """A checked ``[d_model]`` direction of ``vector`` and the layer it belongs to.

    A ``SteeringVector`` is checked against the model (`SteeringVector.check_compatible`);
    with one layer that layer is used, with several ``layer=`` picks one. ``layer=`` given
    for a vector without that layer uses its shared direction, as `steerlens.Steering` does.
    A bare tensor has the layer given (or ``None``).
    """
    if isinstance(vector, SteeringVector):
        vector.check_compatible(model)
        if layer is None:
            if len(vector.layers) > 1:
                raise LayerError(
                    f"{name} has directions at layers {vector.layers}; pass layer= to choose "
                    "the one to look at."
                )
            layer = vector.layers[0]
        layer = runtime.check_layer(model, layer)
        direction = vector.directions.get(layer)
        return (vector.vector if direction is None else direction), layer
    if not isinstance(vector, Tensor):
        raise SpecError(
            f"{name} is a {type(vector).__name__}; pass a SteeringVector or a [d_model] tensor."
        )
    check_vector(vector, name=name, d_model=runtime.d_model(model))
    return vector, (None if layer is None else runtime.check_layer(model, layer))


def check_nonzero(direction: Tensor, name: str) -> None:
    if float(direction.norm()) == 0.0:
        raise SteerlensError(
            f"{name} has norm 0, so it points nowhere and promotes no token; pass a non-zero "
            "vector."
        )


def prompt_tokens(
    model: Any, prompts: str | Sequence[str], *, chat: bool | None, bos: bool
) -> list[list[int]]:
    """Each prompt's tokens (chat rule and BOS rule as everywhere), refusing empty ones."""
    texts = runtime.format_prompts(model, runtime.check_prompts(prompts), chat=chat)
    rows = []
    for i, text in enumerate(texts):
        ids = runtime.encode(model, text, bos=bos)
        if not ids:
            raise InputError(f"prompt {i} ({text!r}) tokenises to nothing; pass a non-empty one.")
        runtime.check_fits(model, len(ids), f"prompt {i}", "use a shorter prompt")
        rows.append(ids)
    return rows


def _token_text(model: Any, token_id: int) -> str:
    """A token as text; a byte token that is part of a character shows as its raw token
    string (e.g. ``'Ã'``), not as a replacement character."""
    text = runtime.decode(model, [token_id], skip_special_tokens=False)
    if "\ufffd" in text:
        raw = runtime.tokenizer(model).convert_ids_to_tokens(int(token_id))
        if isinstance(raw, str) and raw:
            return raw
    return text


# -- result --------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogitLensResult:
    """The tokens a vector promotes and suppresses most, per view (see the module docs).

    Attributes:
        label: the vector's name in tables and figures.
        layer: the layer whose direction was read (``None``: a bare tensor, no layer).
        views: the views computed, in order: ``"unembed"``, ``"final_norm"`` (when the model
            has a final norm), ``"steered"`` (with ``prompts=``).
        units: one unit per view (``"logit"``: logit change per unit of the vector added
            right before the final norm's ``1/rms``; ``"nats"``: measured log-prob change).
        norm: the final norm's kind (``"RMS"``, ``"LN"``, ...; ``None``: none).
        scores: ``[views, vocab]`` every token's score in each view (float32, CPU).
        top_ids: ``[views, k]`` the most promoted tokens' ids, highest score first.
        bottom_ids: ``[views, k]`` the most suppressed tokens' ids, lowest score first.
        top_tokens: per view, the promoted tokens as text.
        bottom_tokens: per view, the suppressed tokens as text.
    """

    label: str
    layer: int | None
    views: tuple[str, ...]
    units: tuple[str, ...]
    norm: str | None
    scores: Float[Tensor, "views vocab"]
    top_ids: Int[Tensor, "views k"]
    bottom_ids: Int[Tensor, "views k"]
    top_tokens: tuple[tuple[str, ...], ...]
    bottom_tokens: tuple[tuple[str, ...], ...]

    @property
    def k(self) -> int:
        return int(self.top_ids.shape[1])

    def _index(self, view: str) -> int:
        if view not in self.views:
            raise SpecError(f"this lens has no view {view!r}; it has {list(self.views)}.")
        return self.views.index(view)

    @property
    def main_view(self) -> str:
        """``"final_norm"`` when computed, else ``"unembed"``: the view summaries show."""
        return "final_norm" if "final_norm" in self.views else "unembed"

    def promoted(self, view: str | None = None) -> list[tuple[str, float]]:
        """``(token, score)`` of the most promoted tokens in ``view`` (default `main_view`)."""
        i = self._index(view or self.main_view)
        ids = self.top_ids[i].tolist()
        return [(t, float(self.scores[i, j])) for t, j in zip(self.top_tokens[i], ids, strict=True)]

    def suppressed(self, view: str | None = None) -> list[tuple[str, float]]:
        """``(token, score)`` of the most suppressed tokens in ``view`` (lowest first)."""
        i = self._index(view or self.main_view)
        ids = self.bottom_ids[i].tolist()
        return [
            (t, float(self.scores[i, j])) for t, j in zip(self.bottom_tokens[i], ids, strict=True)
        ]

    def to_rows(self) -> list[dict[str, Any]]:
        """One row per view, direction (``"promoted"``/``"suppressed"``) and rank."""
        rows = []
        for i, view in enumerate(self.views):
            for direction, ids, tokens in (
                ("promoted", self.top_ids[i], self.top_tokens[i]),
                ("suppressed", self.bottom_ids[i], self.bottom_tokens[i]),
            ):
                for rank, (j, tok) in enumerate(zip(ids.tolist(), tokens, strict=True)):
                    rows.append(
                        {
                            "view": view,
                            "direction": direction,
                            "rank": rank + 1,
                            "token": tok,
                            "token_id": int(j),
                            "score": float(self.scores[i, j]),
                            "unit": self.units[i],
                        }
                    )
        return rows

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready), without the full ``scores``."""
        out: dict[str, Any] = to_plain(self)
        out.pop("scores")
        return out

    def __repr__(self) -> str:
        where = "" if self.layer is None else f" at layer {self.layer}"
        parts = [f"LogitLensResult({self.label!r}{where}, top {self.k} of {self.views})"]
        for i, view in enumerate(self.views):
            rows = [
                [
                    repr(a),
                    f"{float(self.scores[i, ja]):+.3g}",
                    repr(b),
                    f"{float(self.scores[i, jb]):+.3g}",
                ]
                for a, ja, b, jb in zip(
                    self.top_tokens[i],
                    self.top_ids[i].tolist(),
                    self.bottom_tokens[i],
                    self.bottom_ids[i].tolist(),
                    strict=True,
                )
            ]
            parts.append(f"{view} ({self.units[i]}):")
            parts.append(table(["promoted", "score", "suppressed", "score"], rows, max_rows=5))
        return "\n".join(parts)

    def html(self) -> str:
        """The promoted and suppressed tokens per view as HTML tables with inline bars (no
        scripts); a vector card and `steerlens.analysis.write_optimization_report` embed it.

        Example:
            >>> import torch
            >>> from steerlens.testing import tiny_model
            >>> lens = logit_lens(tiny_model(), torch.ones(64), k=3)
            >>> lens.html().count("<tr>") == 2 * (1 + 3)
            True
        """
        esc = _html.escape
        columns = []
        for i, view in enumerate(self.views):
            peak = float(self.scores[i].abs().max()) or 1.0
            rows = "".join(
                f"<tr><td><code>{esc(repr(a))}</code></td><td>{html_bar(sa, peak)} {sa:+.3g}</td>"
                f"<td><code>{esc(repr(b))}</code></td><td>{html_bar(sb, peak)} {sb:+.3g}</td></tr>"
                for (a, sa), (b, sb) in zip(self.promoted(view), self.suppressed(view), strict=True)
            )
            columns.append(
                f'<div style="display:inline-block;vertical-align:top;margin-right:2em">'
                f"<b>{esc(view)}</b> ({esc(self.units[i])})"
                f'<table style="{TABLE_STYLE}"><tr><th>promoted</th><th></th><th>suppressed</th>'
                f"<th></th></tr>{rows}</table></div>"
            )
        where = "" if self.layer is None else f" at layer {self.layer}"
        return (
            f'<div class="steerlens-logit-lens"><div style="color:#555">{esc(self.label)}{where}'
            f"</div>{''.join(columns)}</div>"
        )

    def plot(self) -> go.Figure:
        """Horizontal bars per view: the promoted tokens (right) and the suppressed (left).

        Example:
            >>> import torch
            >>> from steerlens.testing import tiny_model
            >>> lens = logit_lens(tiny_model(), torch.ones(64), k=3)
            >>> [t.name for t in lens.plot().data]
            ['promoted', 'suppressed', 'promoted', 'suppressed']
        """
        fig = make_subplots(
            rows=1,
            cols=len(self.views),
            subplot_titles=[
                f"{_TITLES[v]} ({u})" for v, u in zip(self.views, self.units, strict=True)
            ],
            horizontal_spacing=0.12,
        )
        for i in range(len(self.views)):
            for name, ids, tokens, colour in (
                ("promoted", self.top_ids[i], self.top_tokens[i], "#d6604d"),
                ("suppressed", self.bottom_ids[i], self.bottom_tokens[i], "#4393c3"),
            ):
                labels = _unique_labels(tokens, ids.tolist())
                fig.add_trace(
                    go.Bar(
                        x=[float(self.scores[i, j]) for j in ids.tolist()],
                        y=labels,
                        orientation="h",
                        name=name,
                        marker_color=colour,
                        showlegend=i == 0,
                        legendgroup=name,
                        hovertemplate="%{y}: %{x:.4g}<extra>" + name + "</extra>",
                    ),
                    row=1,
                    col=i + 1,
                )
            fig.update_yaxes(autorange="reversed", row=1, col=i + 1)
        where = "" if self.layer is None else f" (layer {self.layer})"
        fig = style_figure(
            fig, f"Logit lens of {self.label}{where}: top {self.k} tokens", "score", "token"
        )
        fig.update_layout(height=max(350, 40 + 36 * self.k), barmode="overlay")
        return fig


def _unique_labels(tokens: Sequence[str], ids: Sequence[int]) -> list[str]:
    """``repr(token)``, with the id appended where two tokens read alike."""
    labels = [repr(t) for t in tokens]
    return [
        f"{lab} #{j}" if labels.count(lab) > 1 else lab for lab, j in zip(labels, ids, strict=True)
    ]


# -- computation ---------------------------------------------------------------------------


def _normed(
    direction: Float[Tensor, " d_model"], kind: str | None, weight: Tensor | None
) -> Float[Tensor, " d_model"]:
    """What the final norm does to a direction, up to its positive ``1 / rms`` factor."""
    out = direction
    if kind is not None and kind.upper().startswith("LN"):
        out = out - out.mean()
    if weight is not None:
        out = out * weight.to(out)
    return out


@torch.no_grad()
def _steered_change(
    model: Any,
    rows: Sequence[Sequence[int]],
    direction: Tensor,
    layer: int,
    strength: float,
    n_vocab: int,
    batch_size: int,
    position: LensPosition = "all",
) -> Float[Tensor, " vocab"]:
    """Mean over the positions of ``rows`` (every one, or each row's last) of steered minus
    unsteered next-token log-probs."""
    total = torch.zeros(n_vocab, dtype=torch.float64)
    count = 0
    plan = Steering(direction, layer=layer, strength=strength)
    for batch in runtime.chunks(len(rows), batch_size):
        tokens, mask = runtime.right_pad(model, [rows[b] for b in batch])
        lengths = mask.sum(dim=1)
        if position == "last":
            r = torch.arange(len(batch), device=tokens.device)
            c = (lengths - 1).to(tokens.device)
        else:
            r, c = mask.nonzero(as_tuple=True)
        ctx = runtime.TokenContext.prompts(lengths)
        base = runtime.logits_at(model, tokens, mask, r, c, ctx)
        with steer(model, plan):
            steered = runtime.logits_at(model, tokens, mask, r, c, ctx)
        change = steered.float().log_softmax(-1) - base.float().log_softmax(-1)
        total += change[:, :n_vocab].sum(0).double().cpu()
        count += int(r.shape[0])
    return (total / count).float()


def logit_lens(
    model: Any,
    vector: VectorLike,
    *,
    layer: int | None = None,
    k: int = 10,
    label: str = "vector",
    prompts: str | Sequence[str] | None = None,
    strength: float = 1.0,
    position: LensPosition = "all",
    chat: bool | None = None,
    batch_size: int = 8,
) -> LogitLensResult:
    """The tokens ``vector`` promotes and suppresses most through the unembedding.

    Args:
        model: a TransformerLens model.
        vector: a ``SteeringVector`` (checked against the model) or a ``[d_model]`` tensor. For
            the difference of two vectors pass ``a - b``.
        layer: for a vector with several layers, the one to read; for a tensor, where to add
            it for the ``"steered"`` view.
        k: how many tokens to keep each way.
        label: the vector's name in tables and figures.
        prompts: also measure the ``"steered"`` view on these prompts (every position).
        strength: the vector's multiplier in the ``"steered"`` view.
        position: where the ``"steered"`` view measures: ``"all"`` positions of each prompt,
            or its ``"last"`` (the next token after the prompt: a reply's first token).
        chat: format ``prompts`` with the chat template (default:
            when the model has one; ``False``: as written).
        batch_size: prompts per forward pass.

    Raises:
        LayerError: a layer out of range, or a multi-layer vector without ``layer=``.
        ModelMismatchError, VectorShapeError: a vector made on another model.
        SteerlensError: a zero vector.
        InputError: an empty prompt.

    Example:
        >>> import torch
        >>> from steerlens.testing import tiny_model
        >>> model = tiny_model()
        >>> lens = logit_lens(model, torch.ones(64), k=3)
        >>> lens.views, len(lens.promoted())
        (('unembed', 'final_norm'), 3)
        >>> w_u = model.W_U.detach()
        >>> lens.top_ids[0].tolist() == (torch.ones(64) @ w_u).topk(3).indices.tolist()
        True
    """
    direction, layer = direction_at(model, vector, layer)
    check_nonzero(direction, label)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise SpecError(f"k must be an int >= 1, got {k!r}.")
    _check_position(position)
    w_u = runtime.unembed_matrix(model).detach()
    n_vocab = min(int(w_u.shape[1]), len(runtime.tokenizer(model)))
    w_u = w_u[:, :n_vocab].float()
    v = direction.detach().to(device=w_u.device, dtype=torch.float32)
    views, units, scores = ["unembed"], ["logit"], [v @ w_u]
    kind, weight = runtime.final_norm(model)
    if kind is not None or weight is not None:
        views.append("final_norm")
        units.append("logit")
        scores.append(_normed(v, kind, None if weight is None else weight.detach()) @ w_u)
    if prompts is not None:
        if layer is None:
            raise LayerError(
                "the steered view adds the vector at a layer; pass layer= with a bare tensor."
            )
        rows = prompt_tokens(model, prompts, chat=chat, bos=False)
        change = _steered_change(
            model, rows, direction, layer, strength, n_vocab, batch_size, position
        )
        views.append("steered")
        units.append("nats")
        scores.append(change.to(w_u.device))
    return _from_scores(
        model, label, layer, tuple(views), tuple(units), kind, torch.stack(scores), min(k, n_vocab)
    )


def logit_lens_difference(
    model: Any,
    a: VectorLike,
    b: VectorLike,
    *,
    normalize: bool = True,
    labels: tuple[str, str] = ("a", "b"),
    layer: int | None = None,
    k: int = 10,
    prompts: str | Sequence[str] | None = None,
    strength: float = 1.0,
    position: LensPosition = "all",
    chat: bool | None = None,
    batch_size: int = 8,
) -> LogitLensResult:
    """The tokens ``a`` promotes more than ``b`` (top) and ``b`` more than ``a`` (bottom).

    The logit views read ``a / |a| - b / |b|`` (``normalize=True``: the directions compared,
    whatever their norms) or ``a - b``; the lens is linear, so this is the difference of the
    two lenses. The ``"steered"`` view (with ``prompts=``) is the difference of the two
    measured effects, each vector added at its own layer and norm times ``strength``.

    Args:
        model: a TransformerLens model.
        a, b: ``SteeringVector``s or ``[d_model]`` tensors; they may be at different layers.
        normalize: compare unit directions (default) or the raw vectors.
        labels: the two names; the result is labelled ``"a - b"``.
        layer: for multi-layer vectors, the layer to read in both; for tensors, where to add
            them in the ``"steered"`` view.
        k, prompts, strength, position, chat, batch_size: as in `logit_lens`.

    Raises:
        SteerlensError: a zero vector.
        LayerError, ModelMismatchError, VectorShapeError: as in `logit_lens`.

    Example:
        >>> import torch
        >>> from steerlens.testing import tiny_model
        >>> model = tiny_model()
        >>> w_u = model.W_U.detach()
        >>> common = torch.randn(64) * 5
        >>> a, b = common + w_u[:, 7] * 3, 2 * (common + w_u[:, 9] * 3)
        >>> diff = logit_lens_difference(model, a, b, labels=("a", "b"), k=1)
        >>> diff.label, diff.top_ids[0].tolist(), diff.bottom_ids[0].tolist()
        ('a - b', [7], [9])
    """
    if not (isinstance(labels, tuple) and len(labels) == 2):
        raise SpecError(f"labels must be a pair of names, got {labels!r}.")
    _check_position(position)
    da, la = direction_at(model, a, layer, name=f"vector {labels[0]!r}")
    db, lb = direction_at(model, b, layer, name=f"vector {labels[1]!r}")
    check_nonzero(da, f"vector {labels[0]!r}")
    check_nonzero(db, f"vector {labels[1]!r}")
    ua = da.detach().float().cpu()
    ub = db.detach().float().cpu()
    if normalize:
        ua, ub = ua / ua.norm(), ub / ub.norm()
    label = f"{labels[0]} - {labels[1]}"
    diff = ua - ub
    # Rounding leaves a few ulps where the two are equal (v against 3v at unit norm).
    if float(diff.norm()) <= 1e-6 * max(float(ua.norm()), float(ub.norm())):
        raise SteerlensError(
            f"{labels[0]} and {labels[1]} are equal{' at unit norm' if normalize else ''}, so "
            "their difference promotes no token."
        )
    lens = logit_lens(model, diff, k=k, label=label)
    if prompts is None:
        return _with_layer(lens, la if la == lb else None)
    if la is None or lb is None:
        raise LayerError(
            "the steered view adds each vector at its layer; pass layer= with bare tensors."
        )
    rows = prompt_tokens(model, prompts, chat=chat, bos=False)
    n_vocab = int(lens.scores.shape[1])
    change = _steered_change(model, rows, da, la, strength, n_vocab, batch_size, position)
    change -= _steered_change(model, rows, db, lb, strength, n_vocab, batch_size, position)
    scores = torch.cat([lens.scores, change[None].to(lens.scores)])
    return _from_scores(
        model,
        label,
        la if la == lb else None,
        (*lens.views, "steered"),
        (*lens.units, "nats"),
        lens.norm,
        scores,
        lens.k,
    )


def _check_position(position: object) -> None:
    if position not in _POSITIONS:
        raise SpecError(
            f"position must be 'all' (every position of each prompt) or 'last' (each prompt's "
            f"last), got {position!r}."
        )


def _with_layer(lens: LogitLensResult, layer: int | None) -> LogitLensResult:
    return dataclasses.replace(lens, layer=layer)


def _from_scores(
    model: Any,
    label: str,
    layer: int | None,
    views: tuple[str, ...],
    units: tuple[str, ...],
    norm: str | None,
    scores: Tensor,
    k: int,
) -> LogitLensResult:
    matrix = scores.float().cpu()
    top = matrix.topk(k, dim=1).indices
    bottom = (-matrix).topk(k, dim=1).indices
    return LogitLensResult(
        label=label,
        layer=layer,
        views=views,
        units=units,
        norm=norm,
        scores=matrix,
        top_ids=top,
        bottom_ids=bottom,
        top_tokens=tuple(tuple(_token_text(model, j) for j in row.tolist()) for row in top),
        bottom_tokens=tuple(tuple(_token_text(model, j) for j in row.tolist()) for row in bottom),
    )


__all__ = ["LogitLensResult", "logit_lens", "logit_lens_difference"]
