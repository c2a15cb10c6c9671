"""Which SAE features a steering vector is made of: `decompose_with_sae`.

Works with any SAE object that has SAELens's attribute names: ``W_dec`` ``[d_sae, d_in]``,
``W_enc`` ``[d_in, d_sae]``, ``b_enc`` ``[d_sae]``, and ``cfg.hook_name`` (SAELens 5) or
``cfg.metadata.hook_name`` (SAELens 6); ``encode`` is used when present. SAELens itself is not
imported (``pip install 'steerlens[sae]'`` installs it to load SAEs).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal

import plotly.graph_objects as go
import torch
from torch import Tensor

from steerlens.analysis.plots import style_figure
from steerlens.errors import LayerError, NonFiniteError, SpecError, VectorShapeError
from steerlens.steering.vector import SteeringVector

__all__ = ["SaeDecomposition", "decompose_with_sae"]

Method = Literal["decoder", "encoder"]
_METHODS = ("decoder", "encoder")
_RESID = re.compile(r"blocks\.([0-9]+)\.hook_resid_(pre|post)")


@dataclass(frozen=True)
class SaeDecomposition:
    """The top SAE features of a steering vector.

    Attributes:
        features: SAE feature indices, best first.
        scores: their scores: the cosine of the vector with each feature's decoder direction
            (``method="decoder"``), or the feature's activation when the SAE encodes the
            vector as if it were a residual-stream activation (``method="encoder"``).
        method: ``"decoder"`` or ``"encoder"``.
        layer: the vector's layer (``blocks.{layer}.hook_resid_pre``).
        hook_name: the hook the SAE reads (the same residual stream).
        d_sae: the SAE's number of features.
        explained: the fraction of the vector's squared norm that lies in the span of the
            listed features' decoder directions (1: the vector is a combination of them).
        vector_norm: the vector's L2 norm at ``layer``.
    """

    features: tuple[int, ...]
    scores: tuple[float, ...]
    method: str
    layer: int
    hook_name: str
    d_sae: int
    explained: float
    vector_norm: float

    def to_rows(self) -> list[dict[str, Any]]:
        """One plain row per feature: ``rank``, ``feature``, ``score``."""
        return [
            {"rank": rank, "feature": feature, "score": score}
            for rank, (feature, score) in enumerate(
                zip(self.features, self.scores, strict=True), start=1
            )
        ]

    def plot(self) -> go.Figure:
        """A bar chart of the scores, best feature first."""
        unit = "cosine with decoder direction" if self.method == "decoder" else "SAE activation"
        fig = go.Figure(
            go.Bar(
                x=[f"#{f}" for f in self.features],
                y=list(self.scores),
                hovertemplate="feature %{x}<br>" + unit + " %{y:.4f}<extra></extra>",
            )
        )
        title = (
            f"Top SAE features of the vector at layer {self.layer} ({self.hook_name}); "
            f"{self.explained:.0%} of its squared norm in their span"
        )
        fig = style_figure(fig, title, "SAE feature", unit)
        fig.update_xaxes(type="category")
        return fig

    def __repr__(self) -> str:
        top = ", ".join(
            f"#{f}: {s:.3g}" for f, s in zip(self.features[:5], self.scores[:5], strict=True)
        )
        more = ", ..." if len(self.features) > 5 else ""
        return (
            f"SaeDecomposition(layer={self.layer}, hook={self.hook_name!r}, "
            f"method={self.method!r}, top=[{top}{more}], explained={self.explained:.3f})"
        )


def decompose_with_sae(
    vector: SteeringVector | Tensor,
    sae: Any,
    *,
    layer: int | None = None,
    k: int = 10,
    method: Method = "decoder",
) -> SaeDecomposition:
    """The ``k`` SAE features that best describe a steering vector.

    The SAE must read the residual stream where the vector is added: ``blocks.{layer}.
    hook_resid_pre``, or ``blocks.{layer - 1}.hook_resid_post`` (the same tensor). ``method=
    "decoder"`` ranks features by the cosine between the vector and their decoder directions
    (independent of the vector's scale); ``"encoder"`` ranks them by their activation when the
    SAE encodes the vector itself (``sae.encode``, else ``relu(v @ W_enc + b_enc)``), which
    depends on its scale: pass ``2 * vector`` to read it at strength 2. To find the features
    most opposed to the vector, decompose ``-vector``.

    Args:
        vector: A `SteeringVector`, or a ``[d_model]`` tensor with ``layer``.
        sae: An SAE with SAELens's attributes (see the module docstring).
        layer: The vector's layer to decompose; by default the one the SAE reads.
        k: How many features to list.
        method: ``"decoder"`` (default) or ``"encoder"``.

    Returns:
        A `SaeDecomposition`.

    Raises:
        SpecError: An SAE without the attributes, a hook outside the residual stream, or a
            bad ``k`` or ``method``.
        LayerError: The SAE reads another layer than the vector's.
        VectorShapeError: The SAE's ``d_in`` is not the vector's ``d_model``.
        NonFiniteError: A zero or non-finite vector.

    Example:
        >>> import torch
        >>> from types import SimpleNamespace
        >>> W_dec = torch.nn.functional.normalize(torch.randn(32, 64), dim=-1)
        >>> sae = SimpleNamespace(W_dec=W_dec, W_enc=W_dec.T, b_enc=torch.zeros(32),
        ...                       cfg=SimpleNamespace(hook_name="blocks.1.hook_resid_pre"))
        >>> v = SteeringVector.from_tensor(3 * W_dec[7], layer=1, model_id="steerlens/tiny-llama")
        >>> result = decompose_with_sae(v, sae, k=3)
        >>> result.features[0], round(result.scores[0], 4), round(result.explained, 4)
        (7, 1.0, 1.0)
    """
    if method not in _METHODS:
        raise SpecError(f"method must be one of {', '.join(map(repr, _METHODS))}; got {method!r}.")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise SpecError(f"k must be a positive integer, got {k!r}.")
    hook = _hook_name(sae)
    sae_layer = _residual_layer(hook)
    if layer is not None and layer != sae_layer:
        raise LayerError(
            f"the SAE reads {hook!r}, our layer {sae_layer} (blocks.{sae_layer}.hook_resid_pre), "
            f"but layer={layer} was asked for; use an SAE trained at "
            f"blocks.{layer}.hook_resid_pre (or blocks.{layer - 1}.hook_resid_post)."
        )
    direction = _direction(vector, sae_layer, hook, layer)

    W_dec = _matrix(sae, "W_dec")
    d_sae, d_in = W_dec.shape
    if direction.shape[-1] != d_in:
        raise VectorShapeError(
            f"the SAE's d_in is {d_in} (W_dec has shape {tuple(W_dec.shape)}) but the vector "
            f"has d_model {direction.shape[-1]}; is the SAE for another model?"
        )
    v = direction.detach().to(device=W_dec.device, dtype=torch.float32)
    norm = float(v.norm())
    if not math.isfinite(norm) or norm == 0.0:
        raise NonFiniteError(
            f"the vector at layer {sae_layer} has norm {norm}; an SAE decomposition needs a "
            "non-zero, finite vector."
        )
    with torch.no_grad():
        dec = W_dec.detach().float()
        if method == "decoder":
            scores = (dec @ v) / (dec.norm(dim=-1).clamp_min(1e-12) * norm)
        else:
            scores = _encode(sae, v)
        top = torch.topk(scores, min(k, d_sae))
        explained = _explained(dec[top.indices], v)
    return SaeDecomposition(
        features=tuple(int(i) for i in top.indices.tolist()),
        scores=tuple(float(s) for s in top.values.tolist()),
        method=method,
        layer=sae_layer,
        hook_name=hook,
        d_sae=int(d_sae),
        explained=explained,
        vector_norm=norm,
    )


def _hook_name(sae: Any) -> str:
    cfg = getattr(sae, "cfg", None)
    for holder in (cfg, getattr(cfg, "metadata", None)):
        hook = getattr(holder, "hook_name", None)
        if isinstance(hook, str) and hook:
            return hook
    raise SpecError(
        f"cannot find the SAE's hook: a {type(sae).__name__} has neither cfg.hook_name "
        "(SAELens 5) nor cfg.metadata.hook_name (SAELens 6). Pass a SAELens SAE, or an object "
        "with those attributes and W_dec [d_sae, d_in]."
    )


def _residual_layer(hook: str) -> int:
    match = _RESID.fullmatch(hook)
    if match is None:
        raise SpecError(
            f"the SAE reads {hook!r}, which is not the residual stream between blocks; "
            "steering vectors are added at blocks.{l}.hook_resid_pre, so use an SAE trained "
            "there (or at blocks.{l-1}.hook_resid_post, the same tensor)."
        )
    block = int(match.group(1))
    return block if match.group(2) == "pre" else block + 1


def _direction(vector: SteeringVector | Tensor, sae_layer: int, hook: str, layer: int | None):
    if isinstance(vector, SteeringVector):
        vector._check_hook_template()
        if sae_layer not in vector.directions:
            raise LayerError(
                f"the SAE reads {hook!r} (our layer {sae_layer}), but the vector has layers "
                f"{vector.layers}; use an SAE trained at blocks.{{l}}.hook_resid_pre for one "
                f"of them (l in {vector.layers})."
            )
        return vector.directions[sae_layer]
    if not isinstance(vector, Tensor) or vector.ndim != 1:
        raise VectorShapeError(
            f"vector must be a SteeringVector or a 1-D [d_model] tensor, got "
            f"{type(vector).__name__} {tuple(getattr(vector, 'shape', ()))}."
        )
    if layer is None:
        raise LayerError(
            f"a bare tensor does not say where it is added; pass layer={sae_layer} (the layer "
            f"the SAE reads, {hook!r}) if that is where the vector steers."
        )
    return vector


def _matrix(sae: Any, name: str) -> Tensor:
    value = getattr(sae, name, None)
    if not isinstance(value, Tensor) or value.ndim != 2:
        raise SpecError(
            f"the SAE's {name} must be a 2-D tensor (SAELens: W_dec [d_sae, d_in], W_enc "
            f"[d_in, d_sae]); got {type(value).__name__} {tuple(getattr(value, 'shape', ()))}."
        )
    return value


def _encode(sae: Any, v: Tensor) -> Tensor:
    """The SAE's feature activations for ``v`` as a residual-stream activation."""
    encode = getattr(sae, "encode", None)
    if callable(encode):
        W_enc = getattr(sae, "W_enc", None)
        like = W_enc if isinstance(W_enc, Tensor) else _matrix(sae, "W_dec")
        return encode(v.to(like.dtype)[None]).reshape(-1).float()
    W_enc = _matrix(sae, "W_enc").detach().float()
    b_enc = getattr(sae, "b_enc", None)
    bias = b_enc.detach().float() if isinstance(b_enc, Tensor) else 0.0
    return torch.relu(v @ W_enc + bias)


def _explained(rows: Tensor, v: Tensor) -> float:
    """The fraction of ``|v|^2`` in the span of ``rows`` (least squares, in float64)."""
    basis = rows.double().T  # [d_in, k]
    coeffs = torch.linalg.lstsq(basis.cpu(), v.double().cpu()[:, None]).solution
    projection = basis.cpu() @ coeffs
    return float(min(1.0, projection.square().sum() / v.double().square().sum()))
