"""A vector card: one call that summarises a ``SteeringVector`` (where it came from, how big it
is next to the residual stream, the tokens it promotes, how it lines up with other vectors,
and its effect per layer when known), shown in notebooks and saved as one HTML page that opens
with what was run and what it shows, in words."""

from __future__ import annotations

import html as _html
import math
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor

from steerlens import runtime
from steerlens.analysis.layer_sweep import LayerSweepResult
from steerlens.analysis.lens import LogitLensResult, VectorLike, direction_at, logit_lens
from steerlens.analysis.plots import TABLE_STYLE, html_bar, write_page
from steerlens.analysis.scale import ResidualNorms, residual_norms
from steerlens.analysis.tokens_view import TokenView
from steerlens.errors import SpecError
from steerlens.io.plain import short, table, to_plain
from steerlens.steering.vector import SteeringVector

# Neutral text for the residual-norm measurement when a vector records no prompts of its own.
DEFAULT_PROMPTS = (
    "The weather today is mild, with a light breeze from the west.",
    "Please summarise the main points of the meeting in a few sentences.",
    "In 1969, the first crewed mission landed on the Moon.",
    "Here is a simple recipe for tomato soup that takes twenty minutes.",
)


@dataclass(frozen=True)
class VectorCard:
    """A summary of one steering vector (made by `vector_card`).

    Attributes:
        title: the card's heading.
        model_id: the model the vector was made on.
        layer: the layer summarised.
        norms: layer -> the vector's L2 norm there (all its layers).
        provenance: ``(field, value)`` rows: method, data, steps, final losses, ...
        scale: residual-stream norms measured on the card's prompts.
        scale_summary: one line: the vector's norm as a fraction of the typical residual norm.
        lens: the vector's logit lens at ``layer``.
        cosines: ``(label, cosine, note)`` with each vector compared (``caa`` as ``"CAA"``).
        layer_effect: layer -> effect, from ``sweep=`` or ``provenance["layer_effect"]``.
        layer_effect_label: what ``layer_effect`` measures (``""`` when there is none).
        prompts: the prompts the scale was measured on.
        token_views: per-token views shown on the card (`token_view`), in order.
        what_was_run: in words: the model, layer, hook, norm, what the vector was built from
            and how the card measures it (strength 1; the scale's prompts).
        what_it_shows: in words: its size next to the residual stream, the tokens it promotes
            and suppresses most, and the cosines and layer effect when there are any.
    """

    title: str
    model_id: str
    layer: int
    norms: dict[int, float]
    provenance: tuple[tuple[str, str], ...]
    scale: ResidualNorms
    scale_summary: str
    lens: LogitLensResult
    cosines: tuple[tuple[str, float, str], ...]
    layer_effect: dict[int, float] = field(default_factory=dict)
    layer_effect_label: str = ""
    prompts: tuple[str, ...] = ()
    token_views: tuple[TokenView, ...] = ()
    what_was_run: str = ""
    what_it_shows: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready); the lens without its full score table."""
        out: dict[str, Any] = to_plain(self)
        out["lens"] = self.lens.to_dict()
        out["token_views"] = [view.to_dict() for view in self.token_views]
        return out

    def __repr__(self) -> str:
        lines = [f"VectorCard({self.title!r}, model {self.model_id!r}, layer {self.layer})"]
        for text in (self.what_was_run, self.what_it_shows):
            if text:
                lines.append(_wrap(text))
        lines += [f"  {k}: {v}" for k, v in self.provenance]
        lines.append(f"  scale: {self.scale_summary}")
        promoted = ", ".join(repr(t) for t, _ in self.lens.promoted()[:5])
        suppressed = ", ".join(repr(t) for t, _ in self.lens.suppressed()[:5])
        lines.append(f"  promotes: {promoted}")
        lines.append(f"  suppresses: {suppressed}")
        if self.cosines:
            rows = [[label, f"{c:+.3f}", note] for label, c, note in self.cosines]
            lines.append(table(["cosine with", "cosine", "note"], rows))
        if self.layer_effect:
            effect = ", ".join(f"{la}: {v:.3g}" for la, v in self.layer_effect.items())
            lines.append(f"  layer effect ({self.layer_effect_label}): {effect}")
        for view in self.token_views:
            shown = f"{len(view.tokens)} tokens, vectors {list(view.labels)}"
            lines.append(f"  per-token view: {shown}")
        return "\n".join(lines)

    # -- HTML -------------------------------------------------------------------------------
    def html(self) -> str:
        """The card as an HTML fragment (inline styles, no scripts)."""
        esc = _html.escape
        prov = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in self.provenance)
        parts = [
            f'<div class="steerlens-card" style="{_CARD_STYLE}">',
            f'<h2 style="margin:0 0 0.3em 0">{esc(self.title)}</h2>',
            f"<h3>What was run</h3><p>{esc(self.what_was_run)}</p>",
            f"<h3>What it shows</h3><p>{esc(self.what_it_shows)}</p>",
            "<h3>Provenance</h3>",
            f'<table style="{TABLE_STYLE}">{prov}</table>',
            "<h3>Scale</h3>",
            f"<p>{esc(self.scale_summary)}; measured on {_count(len(self.prompts), 'prompt')} at "
            f"{runtime.HOOK_TEMPLATE.format(layer=self.layer)} (typical: median over all but "
            "the first token).</p>",
            "<h3>Logit lens</h3>",
            self.lens.html(),
        ]
        if self.cosines:
            rows = "".join(
                f"<tr><td>{esc(label)}</td><td>{html_bar(c, 1.0)} {c:+.3f}</td><td>{esc(note)}</td>"
                "</tr>"
                for label, c, note in self.cosines
            )
            parts += [
                "<h3>Cosine similarity</h3>",
                f'<table style="{TABLE_STYLE}"><tr><th>vector</th><th>cosine</th><th></th>'
                f"</tr>{rows}</table>",
            ]
        if self.layer_effect:
            peak = max(abs(v) for v in self.layer_effect.values()) or 1.0
            rows = "".join(
                f"<tr><td>{la}{' (this vector)' if la == self.layer else ''}</td>"
                f"<td>{html_bar(v, peak)} {v:.4g}</td></tr>"
                for la, v in self.layer_effect.items()
            )
            parts += [
                f"<h3>Layer effect: {esc(self.layer_effect_label)}</h3>",
                f'<table style="{TABLE_STYLE}"><tr><th>layer</th><th>effect</th></tr>'
                f"{rows}</table>",
            ]
        if self.token_views:
            parts.append("<h3>Per-token view</h3>")
            parts += [view.html() for view in self.token_views]
        parts.append("</div>")
        return "".join(parts)

    def _repr_html_(self) -> str:
        return self.html()

    def save_html(self, path: str | Path, *, figures: bool = False) -> Path:
        """Write the card as one self-contained HTML page, atomically. With ``figures=True``
        the logit-lens and residual-norm figures are added (plotly.js inlined, so the page
        works offline; about 4 MB). Returns the path written.

        Example:
            >>> import pathlib, tempfile, torch
            >>> from steerlens.testing import tiny_model
            >>> model = tiny_model()
            >>> v = SteeringVector.from_tensor(torch.ones(64), 1, model=model)
            >>> card = vector_card(model, v, prompts=["the cat sat"])
            >>> path = card.save_html(pathlib.Path(tempfile.mkdtemp()) / "card.html")
            >>> "Logit lens" in path.read_text(encoding="utf-8")
            True
        """
        body = self.html()
        if figures:
            lens_fig = self.lens.plot().to_html(include_plotlyjs=True, full_html=False)
            vector_norm = self.norms[self.layer]
            scale_fig = self.scale.plot()
            scale_fig.add_scatter(
                x=[self.layer],
                y=[vector_norm],
                mode="markers",
                name="vector",
                marker={"symbol": "star", "size": 14},
            )
            body += lens_fig + scale_fig.to_html(include_plotlyjs=False, full_html=False)
        return write_page(path, self.title, body, example_name="card.html")


_CARD_STYLE = "font-family:sans-serif;font-size:14px;line-height:1.4"


def _wrap(text: str) -> str:
    # Whole words only: a model id such as "org/tiny-llama" stays on one line.
    return textwrap.fill(
        text, 100, initial_indent="  ", subsequent_indent="  ", break_on_hyphens=False
    )


# -- building -----------------------------------------------------------------------------


def _provenance_rows(model: Any, vector: SteeringVector) -> tuple[tuple[str, str], ...]:
    p = vector.provenance
    rows: list[tuple[str, str]] = [("method", str(p.get("method", "unknown")))]
    if "operation" in p:
        rows.append(("operation", str(p["operation"])))
    if "steering" in p:
        rows.append(("steering", str(p["steering"])))
    data = p.get("datapoints")
    if isinstance(data, list) and data:
        first = data[0] if isinstance(data[0], Mapping) else {}
        what = "; ".join(
            f"{key} " + ", ".join(short(str(c), 24) for c in first.get(key, []))
            for key in ("promote", "suppress")
            if first.get(key)
        )
        prompt = str(first.get("prompt", ""))
        # A chat prompt opens with the template's system prompt; the user's message is the point.
        shown = runtime.chat_message(model, prompt) or prompt
        rows.append(("datapoints", f"{len(data)}; first {short(shown, 60)}: {what}"))
    for key, name in (("n_positive", "positive prompts"), ("n_negative", "negative prompts")):
        if key in p:
            rows.append((name, str(p[key])))
    if "position" in p:
        rows.append(("read at", str(p["position"])))
    if "steps" in p:
        stop = f" (stop: {p['stop_reason']})" if "stop_reason" in p else ""
        rows.append(("steps", f"{p['steps']}{stop}"))
    losses = p.get("final_losses")
    if isinstance(losses, Mapping) and losses:
        unit = p.get("loss_unit", "")
        shown = "; ".join(
            f"{_clip(str(k), 40)}: {float(v):.4g}" for k, v in list(losses.items())[:6]
        )
        more = f"; ... ({len(losses) - 6} more)" if len(losses) > 6 else ""
        rows.append((f"final losses ({unit})" if unit else "final losses", shown + more))
    if vector.affine:
        rank = next(iter(vector.affine.values()))[0].shape[0]
        rows.append(("affine", f"rank {rank} (the card reads the additive direction)"))
    rows.append(("layers", str(vector.layers)))
    rows.append(("created", f"{vector.created_at} with steerlens {vector.steerlens_version}"))
    return tuple(rows)


def _source(model: Any, vector: SteeringVector) -> str:
    """What ``vector`` was built from, in words, from its provenance."""
    p = vector.provenance
    data = p.get("datapoints")
    if isinstance(data, list) and data and isinstance(data[0], Mapping):
        first = data[0]
        prompt = str(first.get("prompt", ""))
        # The user's message, not the template's system prompt around it.
        shown = short(runtime.chat_message(model, prompt) or prompt, 80)
        goals = "; ".join(
            f"{verb} " + ", ".join(short(str(c), 60) for c in first.get(key, []))
            for key, verb in (("promote", "promoting"), ("suppress", "suppressing"))
            if first.get(key)
        )
        which = (
            f"1 datapoint, the prompt {shown}"
            if len(data) == 1
            else f"{len(data)} datapoints, the first the prompt {shown}"
        )
        return f"trained on {which}" + (f", {goals}" if goals else "")
    examples = p.get("examples")
    if isinstance(examples, Mapping) and "n_positive" in p and "n_negative" in p:
        firsts = []
        for side in ("positive", "negative"):
            items = examples.get(side) or ["?"]
            # A (prompt, completion) pair is shown by its prompt.
            text = items[0][0] if isinstance(items[0], (list, tuple)) and items[0] else items[0]
            firsts.append(short(str(text), 60))
        return (
            f"built from {p['n_positive']} positive and {p['n_negative']} negative prompts "
            f"(first: {firsts[0]} vs {firsts[1]})"
        )
    if "operation" in p:
        return f"from other vectors ({p['operation']})"
    return "with no record of the prompts it was built from"


def _what_was_run(
    model: Any,
    vector: SteeringVector,
    layer: int,
    norms: Mapping[int, float],
    prompts_note: str,
    views: Sequence[TokenView],
) -> str:
    method = vector.provenance.get("method")
    made = f"made by {method}" if method else "made by an unrecorded method"
    others = [la for la in norms if la != layer]
    also = (
        " (its other layers: " + ", ".join(f"{la}, norm {norms[la]:.3g}" for la in others) + ")"
        if others
        else ""
    )
    strengths = sorted({view.strength for view in views} - {1.0})
    at = (
        " The per-token views apply it at strength " + ", ".join(f"{s:g}" for s in strengths) + "."
        if strengths
        else ""
    )
    kind = vector.provenance.get("steering")
    trained = f" (it was trained for {kind} steering)" if kind not in (None, "add") else ""
    return (
        f"Model {vector.model_id}, layer {layer} (hook "
        f"{vector.hook_template.format(layer=layer)}): a vector {made}, norm "
        f"{norms[layer]:.3g}{also}, {_source(model, vector)}. The card reads its direction "
        f"as added once (strength 1: x + v){trained}, with the residual stream's scale "
        f"measured on {prompts_note}.{at}"
    )


def _what_it_shows(
    scale: ResidualNorms,
    layer: int,
    norm: float,
    lens: LogitLensResult,
    cosines: Sequence[tuple[str, float, str]],
    effect: Mapping[int, float],
    effect_label: str,
) -> str:
    typical = scale.at(layer)
    size = (
        f"Its norm is {norm / typical:.2f}x the typical residual norm at layer {layer} "
        f"({typical:.3g})."
        if typical > 0
        else f"The typical residual norm at layer {layer} is 0, so its size cannot be compared."
    )
    view = "with the final norm" if lens.main_view == "final_norm" else "directly"
    up = ", ".join(repr(t) for t, _ in lens.promoted()[:3])
    down = ", ".join(repr(t) for t, _ in lens.suppressed()[:3])
    parts = [
        size,
        f"Read through the unembedding ({view}), it most promotes {up} and most suppresses {down}.",
    ]
    if cosines:
        parts.append(
            "Cosine with "
            + "; with ".join(
                f"{label}: {'undefined' if math.isnan(c) else format(c, '+.2f')}"
                for label, c, _ in cosines
            )
            + "."
        )
    if effect:
        peak = max(effect, key=lambda la: abs(effect[la]))
        here = f"; at layer {layer}: {effect[layer]:.3g}" if layer in effect else ""
        parts.append(
            f"Layer effect ({effect_label}): largest in size at layer {peak} "
            f"({effect[peak]:.3g}){here}."
        )
    return " ".join(parts)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _card_prompts(vector: SteeringVector) -> list[str]:
    """The vector's own prompts from its provenance, else `DEFAULT_PROMPTS`."""
    p = vector.provenance
    found: list[str] = []
    for dp in p.get("datapoints") or []:
        if isinstance(dp, Mapping) and isinstance(dp.get("prompt"), str) and dp["prompt"]:
            found.append(dp["prompt"])
    examples = p.get("examples")
    if isinstance(examples, Mapping):
        for side in ("positive", "negative"):
            for ex in examples.get(side) or []:
                text = ex[0] if isinstance(ex, (list, tuple)) and ex else ex
                if isinstance(text, str) and text:
                    found.append(text)
    return list(dict.fromkeys(found)) or list(DEFAULT_PROMPTS)


def _cosine(
    model: Any, direction: Tensor, layer: int, other: VectorLike, label: str
) -> tuple[str, float, str]:
    note = ""
    if isinstance(other, SteeringVector):
        other.check_compatible(model)
        if layer in other.directions:
            d = other.directions[layer]
        elif len(other.layers) == 1:
            d = other.directions[other.layers[0]]
            note = f"its direction at layer {other.layers[0]}"
        else:
            d, _ = direction_at(model, other, layer, name=f"vector {label!r}")
    else:
        d, _ = direction_at(model, other, None, name=f"vector {label!r}")
    a = direction.detach().to(device="cpu", dtype=torch.float64)
    b = d.detach().to(device="cpu", dtype=torch.float64)
    denom = float(a.norm() * b.norm())
    if denom == 0.0:
        return label, math.nan, "norm 0: cosine undefined"
    return label, float(a @ b) / denom, note


def _layer_effect(
    vector: SteeringVector, sweep: LayerSweepResult | None
) -> tuple[dict[int, float], str]:
    if sweep is not None:
        if not isinstance(sweep, LayerSweepResult):
            raise SpecError(
                f"sweep must be a LayerSweepResult (from layer_sweep), got {type(sweep).__name__}."
            )
        metric = "logprob_change" if "logprob_change" in sweep.metrics else sweep.metrics[0]
        means = sweep.mean(metric)
        label = f"mean {metric} ({sweep.units[metric]}) from layer_sweep"
        return {la: float(m) for la, m in zip(sweep.layers, means, strict=True)}, label
    recorded = vector.provenance.get("layer_effect")
    if isinstance(recorded, Mapping) and recorded:
        try:
            effect = {int(k): float(v) for k, v in recorded.items()}
        except (TypeError, ValueError):
            return {}, ""
        return dict(sorted(effect.items())), "recorded in the vector's provenance"
    return {}, ""


def vector_card(
    model: Any,
    vector: SteeringVector,
    *,
    prompts: str | Sequence[str] | None = None,
    compare_to: Mapping[str, VectorLike] | None = None,
    caa: VectorLike | None = None,
    sweep: LayerSweepResult | None = None,
    layer: int | None = None,
    k: int = 10,
    title: str | None = None,
    token_views: TokenView | Sequence[TokenView] = (),
) -> VectorCard:
    """Summarise ``vector``: provenance, norms and scale, logit lens, cosines, layer effect.

    Args:
        model: the TransformerLens model the vector was made on.
        vector: the ``SteeringVector`` (checked against the model).
        prompts: prompts to measure the residual-stream scale on, used as written (default:
            the vector's own prompts from its provenance, else a few neutral sentences,
            `DEFAULT_PROMPTS`).
        compare_to: label -> other vectors to report the cosine with (at the card's layer; a
            single-layer vector made at another layer is compared as it is, with a note).
        caa: a CAA vector (e.g. from `steerlens.diff_of_means`), reported as ``"CAA"``.
        sweep: a `LayerSweepResult` of this vector, shown as the layer effect; without it,
            ``provenance["layer_effect"]`` (layer -> number) is shown when recorded.
        layer: the layer to summarise, for a vector with several.
        k: tokens each way in the logit lens.
        title: the heading (default: the method and layer).
        token_views: per-token views (`token_view`) to show on the card, e.g. the vector on
            a prompt and its steered reply.

    Raises:
        ModelMismatchError, VectorShapeError, LayerError: a vector (or compared vector) made on
            another model, or a layer out of range.
        InputError: an empty prompt.

    Example:
        >>> import torch
        >>> from steerlens.testing import tiny_model
        >>> model = tiny_model()
        >>> v = SteeringVector.from_tensor(torch.ones(64), 1, model=model)
        >>> card = vector_card(model, v, prompts=["the cat sat"], caa=-torch.ones(64))
        >>> card.cosines
        (('CAA', -1.0, ''),)
        >>> "steerlens-card" in card._repr_html_()
        True
    """
    if not isinstance(vector, SteeringVector):
        raise SpecError(
            f"vector_card summarises a SteeringVector, got {type(vector).__name__}; wrap a "
            "tensor with SteeringVector.from_tensor(t, layer, model=model)."
        )
    direction, found = direction_at(model, vector, layer)
    la = cast(int, found)  # a SteeringVector always has a layer
    used = list(runtime.check_prompts(prompts)) if prompts is not None else _card_prompts(vector)
    # As written: a vector's own prompts are recorded as the model saw them.
    scale = residual_norms(model, used, layers=sorted({la, *vector.layers}), chat=False)
    lens = logit_lens(model, direction, layer=la, k=k, label=title or "vector")
    others: dict[str, VectorLike] = dict(compare_to or {})
    if caa is not None:
        others["CAA"] = caa
    cosines = tuple(_cosine(model, direction, la, v, str(name)) for name, v in others.items())
    effect, effect_label = _layer_effect(vector, sweep)
    views = (token_views,) if isinstance(token_views, TokenView) else tuple(token_views)
    for view in views:
        if not isinstance(view, TokenView):
            raise SpecError(
                f"token_views must be TokenView results of token_view, got {type(view).__name__}."
            )
    method = str(vector.provenance.get("method", "steering"))
    norms = {layer_: float(d.detach().float().norm()) for layer_, d in vector.directions.items()}
    if prompts is not None:
        prompts_note = f"the {_count(len(used), 'prompt')} given"
    elif used == list(DEFAULT_PROMPTS):
        prompts_note = f"{len(used)} neutral sentences (the vector records no prompts)"
    else:
        prompts_note = f"the vector's own {_count(len(used), 'prompt')}"
    return VectorCard(
        title=title or f"{method} vector at layer {la}",
        model_id=vector.model_id,
        layer=la,
        norms=norms,
        provenance=_provenance_rows(model, vector),
        scale=scale,
        scale_summary=scale.describe(vector, la),
        lens=lens,
        cosines=cosines,
        layer_effect=effect,
        layer_effect_label=effect_label,
        prompts=tuple(used),
        token_views=views,
        what_was_run=_what_was_run(model, vector, la, norms, prompts_note, views),
        what_it_shows=_what_it_shows(scale, la, norms[la], lens, cosines, effect, effect_label),
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


__all__ = ["DEFAULT_PROMPTS", "VectorCard", "vector_card"]
