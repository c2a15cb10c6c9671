"""How big a vector is next to the residual stream it is added to.

`residual_norms` measures the L2 norm of ``blocks.{layer}.hook_resid_pre`` per layer and per
position class on given prompts: the first token (on SmolLM2 and many other models an
attention sink whose norm is many times the others') and the other prompt tokens, summarised
by their median, the *typical* norm. A vector's norm is then read as a fraction of that
typical norm at its layer (`ResidualNorms.fraction`, `ResidualNorms.describe`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch
from jaxtyping import Float
from torch import Tensor

from steerlens import runtime
from steerlens.analysis.lens import VectorLike, prompt_tokens
from steerlens.analysis.plots import style_figure
from steerlens.errors import (
    InputError,
    LayerError,
    ModelMismatchError,
    NonFiniteError,
    VectorShapeError,
)
from steerlens.io.plain import table, to_plain
from steerlens.steering.interventions import check_vector
from steerlens.steering.vector import SteeringVector


@dataclass(frozen=True)
class ResidualNorms:
    """Residual-stream norms at ``blocks.{layer}.hook_resid_pre``, per layer.

    Attributes:
        model_id: the model measured.
        d_model: its residual width.
        layers: the layers measured, in order.
        first_token: ``[layers]`` mean norm of each prompt's first token.
        typical: ``[layers]`` median norm of the other prompt tokens (the scale a vector is
            compared with).
        other_mean: ``[layers]`` mean norm of the other prompt tokens.
        n_prompts: prompts measured.
        n_other_tokens: tokens counted in ``typical`` (all but each prompt's first).
    """

    model_id: str
    d_model: int
    layers: tuple[int, ...]
    first_token: Float[np.ndarray, " layers"]
    typical: Float[np.ndarray, " layers"]
    other_mean: Float[np.ndarray, " layers"]
    n_prompts: int
    n_other_tokens: int

    def _row(self, layer: int) -> int:
        if layer not in self.layers:
            raise LayerError(
                f"residual norms were measured at layers {list(self.layers)}, not {layer}; "
                f"measure it with residual_norms(model, prompts, layers=[{layer}])."
            )
        return self.layers.index(layer)

    def at(self, layer: int) -> float:
        """The typical (median, non-first-token) residual norm at ``layer``."""
        return float(self.typical[self._row(layer)])

    def _vector_norm(self, vector: VectorLike, layer: int | None) -> tuple[float, int]:
        if isinstance(vector, SteeringVector):
            if vector.model_id != self.model_id:
                raise ModelMismatchError(
                    f"this vector was made on {vector.model_id!r} but these norms were measured "
                    f"on {self.model_id!r}; measure the vector's own model."
                )
            if layer is None:
                if len(vector.layers) > 1:
                    raise LayerError(
                        f"the vector has layers {vector.layers}; pass layer= to choose one."
                    )
                layer = vector.layers[0]
            direction = vector.directions.get(layer)
            direction = vector.vector if direction is None else direction
        else:
            if layer is None:
                raise LayerError("a bare tensor has no layer; pass layer=.")
            direction = check_vector(vector, d_model=self.d_model)
        if int(direction.shape[-1]) != self.d_model:
            raise VectorShapeError(
                f"the vector has d_model {int(direction.shape[-1])} but these norms are of a "
                f"model with d_model {self.d_model}."
            )
        return float(direction.detach().float().norm()), layer

    def fraction(self, vector: VectorLike, layer: int | None = None) -> float:
        """``vector``'s norm divided by the typical residual norm at its layer.

        Example:
            >>> import torch
            >>> from steerlens.testing import tiny_model
            >>> norms = residual_norms(tiny_model(), ["the cat sat"])
            >>> v = torch.zeros(64)
            >>> v[0] = norms.at(1)
            >>> round(norms.fraction(v, layer=1), 6)
            1.0
        """
        norm, layer = self._vector_norm(vector, layer)
        return norm / self.at(layer)

    def describe(self, vector: VectorLike, layer: int | None = None) -> str:
        """One line: the vector's norm, as a fraction of the typical norm at its layer."""
        norm, layer = self._vector_norm(vector, layer)
        i = self._row(layer)
        return (
            f"norm {norm:.3g} = {norm / self.at(layer):.2f}x the typical residual norm at layer "
            f"{layer} ({self.typical[i]:.3g}; first token {self.first_token[i]:.3g})"
        )

    def to_rows(self) -> list[dict[str, Any]]:
        """One row per layer."""
        return [
            {
                "layer": la,
                "first_token": float(self.first_token[i]),
                "typical": float(self.typical[i]),
                "other_mean": float(self.other_mean[i]),
            }
            for i, la in enumerate(self.layers)
        ]

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready)."""
        return to_plain(self)

    def __repr__(self) -> str:
        rows = [
            [str(r["layer"]), f"{r['first_token']:.4g}", f"{r['typical']:.4g}"]
            for r in self.to_rows()
        ]
        head = (
            f"ResidualNorms({self.model_id!r}, {self.n_prompts} prompts, "
            f"{self.n_other_tokens} non-first tokens)\n"
        )
        return head + table(["layer", "first token", "typical (median)"], rows, max_rows=40)

    def plot(self, vector: VectorLike | None = None, *, layer: int | None = None) -> go.Figure:
        """The first token's and the typical norm against the layer (log scale); with
        ``vector``, its norm as a marker at its layer.

        Example:
            >>> from steerlens.testing import tiny_model
            >>> norms = residual_norms(tiny_model(), ["the cat sat"])
            >>> [t.name for t in norms.plot().data]
            ['first token', 'other tokens (median)']
        """
        x = list(self.layers)
        fig = go.Figure()
        fig.add_trace(
            go.Scatter(x=x, y=self.first_token.tolist(), mode="lines+markers", name="first token")
        )
        fig.add_trace(
            go.Scatter(
                x=x, y=self.typical.tolist(), mode="lines+markers", name="other tokens (median)"
            )
        )
        if vector is not None:
            norm, la = self._vector_norm(vector, layer)
            fig.add_trace(
                go.Scatter(
                    x=[la],
                    y=[norm],
                    mode="markers",
                    name="vector",
                    marker={"symbol": "star", "size": 14},
                )
            )
        fig = style_figure(
            fig,
            f"Residual-stream norm at {_where(self.layers)} "
            f"({self.n_prompts} prompt{'' if self.n_prompts == 1 else 's'})",
            "layer",
            "L2 norm (residual-stream units, log scale)",
        )
        fig.update_yaxes(type="log")
        return fig


@torch.no_grad()
def residual_norms(
    model: Any,
    prompts: str | Sequence[str],
    *,
    layers: int | Sequence[int] | None = None,
    chat: bool | None = None,
    bos: bool = False,
    batch_size: int = 8,
) -> ResidualNorms:
    """Residual-stream norms at ``blocks.{layer}.hook_resid_pre`` on ``prompts``, per layer,
    for the first token and for the others.

    Args:
        model: a TransformerLens model.
        prompts: one prompt or a list; each needs two tokens or more for the typical norm.
        layers: the layers to measure (default: all).
        chat: format each prompt with the chat template (its first token is then the
            template's).
        bos: put the BOS token in front of each prompt (see `steerlens.runtime.encode`).
        batch_size: prompts per forward pass.

    Raises:
        InputError: no prompts, an empty prompt, or no prompt of two tokens or more.
        LayerError: a layer out of range.

    Example:
        >>> from steerlens.testing import tiny_model
        >>> norms = residual_norms(tiny_model(), ["the cat sat", "a dog"], chat=False)
        >>> norms.layers, norms.n_prompts, norms.n_other_tokens
        ((0, 1), 2, 13)
    """
    la = (
        list(range(runtime.n_layers(model)))
        if layers is None
        else sorted(set(runtime.check_layers(model, layers)))
    )
    rows = prompt_tokens(model, prompts, chat=chat, bos=bos)
    if all(len(r) < 2 for r in rows):
        raise InputError(
            "every prompt is one token long, so only the first token's norm can be measured; "
            "pass prompts of two tokens or more."
        )
    names = [runtime.hook_name(layer) for layer in la]
    first: dict[int, list[Tensor]] = {layer: [] for layer in la}
    other: dict[int, list[Tensor]] = {layer: [] for layer in la}
    for batch in runtime.chunks(len(rows), batch_size):
        tokens, mask = runtime.right_pad(model, [rows[b] for b in batch])
        with runtime.finite_scores(model):  # float64: pads stay finite under a sliding window
            _, cache = model.run_with_cache(tokens, attention_mask=mask, names_filter=names)
        real = mask.bool()
        for layer, name in zip(la, names, strict=True):
            norms = cache[name].float().norm(dim=-1)  # [b, pos]
            if not bool(torch.isfinite(norms[real]).all()):
                raise NonFiniteError(f"activations at {name} are NaN/inf; check the model.")
            first[layer].append(norms[:, 0].cpu())
            rest = real.clone()
            rest[:, 0] = False
            other[layer].append(norms[rest].cpu())
        del cache
    first_mean = np.array([float(torch.cat(first[layer]).mean()) for layer in la])
    others = [torch.cat(other[layer]).double().numpy() for layer in la]
    return ResidualNorms(
        model_id=runtime.model_id(model),
        d_model=runtime.d_model(model),
        layers=tuple(la),
        first_token=first_mean,
        typical=np.array([float(np.median(o)) for o in others]),
        other_mean=np.array([float(o.mean()) for o in others]),
        n_prompts=len(rows),
        n_other_tokens=int(others[0].size),
    )


def _where(layers: tuple[int, ...]) -> str:
    """The hook points measured, named as TransformerLens names them."""
    if len(layers) == 1:
        return f"blocks.{layers[0]}.hook_resid_pre"
    if list(layers) == list(range(layers[0], layers[-1] + 1)):
        return f"blocks.L.hook_resid_pre, L = {layers[0]}..{layers[-1]}"
    return f"blocks.L.hook_resid_pre, L in {list(layers)}"


__all__ = ["ResidualNorms", "residual_norms"]
