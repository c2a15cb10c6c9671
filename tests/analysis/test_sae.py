"""SAE decomposition of a steering vector (steerlens.analysis.sae).

SAELens 6.x does not import under TransformerLens 4 (it imports transformer_lens.HookedTransformer;
SAELens issue #738), so these tests use small randomly initialised SAEs with SAELens's attribute
names: a SAELens-6-like module (``cfg.metadata.hook_name``, ``encode``) and a bare SAELens-5-like
object (``cfg.hook_name``, no ``encode``).

Tolerances (tests/tolerances.py): decoder scores are float32 cosines, within `cosine_bound` of
the exact ones whichever way they are grouped; encoder scores are the very formula the tests
repeat, so they are equal exactly.
"""

from __future__ import annotations

from types import SimpleNamespace

import plotly.graph_objects as go
import pytest
import torch
from tolerances import U32, U64, cosine_bound
from torch import nn

from steerlens import SteeringVector
from steerlens.analysis.sae import SaeDecomposition, decompose_with_sae
from steerlens.errors import LayerError, NonFiniteError, SpecError, VectorShapeError
from steerlens.testing import TINY_MODEL_ID

D_IN, D_SAE = 64, 48


class SaeLike(nn.Module):
    """A standard ReLU SAE laid out as SAELens 6's ``StandardSAE`` (parameters and cfg)."""

    def __init__(self, hook_name: str, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        w_dec = nn.functional.normalize(torch.randn(D_SAE, D_IN, generator=gen), dim=-1)
        self.W_dec = nn.Parameter(w_dec)
        self.W_enc = nn.Parameter(w_dec.T.clone())
        self.b_enc = nn.Parameter(torch.full((D_SAE,), -0.1))
        self.b_dec = nn.Parameter(torch.zeros(D_IN))
        self.cfg = SimpleNamespace(
            d_in=D_IN, d_sae=D_SAE, metadata=SimpleNamespace(hook_name=hook_name)
        )
        self.encode_calls = 0

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self.encode_calls += 1
        return torch.relu((x - self.b_dec) @ self.W_enc + self.b_enc)


def _planted(sae: SaeLike, layer: int = 1) -> SteeringVector:
    w = sae.W_dec.detach()
    return SteeringVector({layer: 2.0 * w[7] + 1.5 * w[42]}, model_id=TINY_MODEL_ID)


def test_decoder_cosine_finds_the_planted_features():
    sae = SaeLike("blocks.1.hook_resid_pre")
    result = decompose_with_sae(_planted(sae), sae, k=5)
    assert isinstance(result, SaeDecomposition)
    assert result.features[:2] == (7, 42)
    assert result.scores[0] > 0.7
    assert list(result.scores) == sorted(result.scores, reverse=True)
    # The float32 sum 2 w7 + 1.5 w42 leaves the span by u of its norm (u^2 of the squared
    # norm); the float64 least squares is backward stable (Householder QR: within m k u of the
    # basis, times its condition number), and the squared norm doubles that.
    basis = sae.W_dec.detach()[list(result.features)].double().T
    bound = U32**2 + 2 * D_IN * 5 * U64 * float(torch.linalg.cond(basis))
    assert 1.0 - bound <= result.explained <= 1.0
    assert result.layer == 1 and result.d_sae == D_SAE and result.method == "decoder"


def test_decoder_scores_are_cosines_and_scale_free():
    sae = SaeLike("blocks.1.hook_resid_pre")
    v = _planted(sae)
    a = decompose_with_sae(v, sae, k=D_SAE)
    b = decompose_with_sae(10 * v, sae, k=D_SAE)
    assert a.features == b.features
    # 10 v rounds each coordinate once (its exact cosines move by 2 u at most); each float32
    # cosine is within cosine_bound of the exact one.
    bound = 2 * cosine_bound(D_IN, U32) + 2 * U32
    assert a.scores == pytest.approx(b.scores, rel=0, abs=bound)
    expected = nn.functional.cosine_similarity(sae.W_dec.detach(), v.vector[None], dim=-1)
    got = dict(zip(a.features, a.scores, strict=True))
    bound = 2 * cosine_bound(D_IN, U32)  # two groupings of the same float32 cosine
    assert [got[i] for i in range(D_SAE)] == pytest.approx(expected.tolist(), rel=0, abs=bound)


def test_encoder_uses_the_saes_own_encode():
    sae = SaeLike("blocks.1.hook_resid_pre")
    v = _planted(sae)
    result = decompose_with_sae(v, sae, k=3, method="encoder")
    assert sae.encode_calls == 1
    assert result.features[0] == 7
    with torch.no_grad():
        expected = sae.encode(v.vector[None])[0]
    assert result.scores[0] == float(expected.max())  # the SAE's own encode, same input


def test_encoder_without_encode_uses_w_enc_and_b_enc_saelens5_layout():
    sae = SaeLike("blocks.0.hook_resid_post")
    bare = SimpleNamespace(
        W_dec=sae.W_dec.detach(),
        W_enc=sae.W_enc.detach(),
        b_enc=sae.b_enc.detach(),
        cfg=SimpleNamespace(hook_name="blocks.0.hook_resid_post"),  # SAELens 5: cfg.hook_name
    )
    v = _planted(sae)  # at layer 1: blocks.0.hook_resid_post is blocks.1.hook_resid_pre
    result = decompose_with_sae(v, bare, k=2, method="encoder")
    expected = torch.relu(v.vector @ bare.W_enc + bare.b_enc)
    assert result.features == (7, 42)
    # The documented formula on the same float32 inputs: exact.
    assert list(result.scores) == torch.topk(expected, 2).values.tolist()


def test_hook_must_match_the_vectors_layer():
    sae = SaeLike("blocks.2.hook_resid_pre")
    with pytest.raises(LayerError, match=r"our layer 2.*has layers \[1\]"):
        decompose_with_sae(_planted(sae, layer=1), sae)
    with pytest.raises(LayerError, match="layer=1 was asked for"):
        decompose_with_sae(_planted(sae, layer=2), sae, layer=1)
    mlp = SaeLike("blocks.1.hook_mlp_out")
    with pytest.raises(SpecError, match="not the residual stream"):
        decompose_with_sae(_planted(mlp), mlp)


def test_bare_tensor_needs_its_layer():
    sae = SaeLike("blocks.1.hook_resid_pre")
    t = sae.W_dec.detach()[3]
    with pytest.raises(LayerError, match="layer=1"):
        decompose_with_sae(t, sae)
    assert decompose_with_sae(t, sae, layer=1, k=1).features == (3,)


def test_bad_inputs_are_refused():
    sae = SaeLike("blocks.1.hook_resid_pre")
    v = _planted(sae)
    with pytest.raises(VectorShapeError, match="d_in is 64"):
        decompose_with_sae(SteeringVector({1: torch.ones(32)}, model_id="x"), sae)
    with pytest.raises(NonFiniteError, match="norm 0"):
        decompose_with_sae(SteeringVector({1: torch.zeros(64)}, model_id="x"), sae)
    with pytest.raises(SpecError, match="method must be one of"):
        decompose_with_sae(v, sae, method="pca")  # type: ignore[arg-type]
    with pytest.raises(SpecError, match="k must be"):
        decompose_with_sae(v, sae, k=0)
    with pytest.raises(SpecError, match=r"cfg\.metadata\.hook_name"):
        decompose_with_sae(v, SimpleNamespace(W_dec=sae.W_dec))


def test_result_rows_plot_and_repr():
    sae = SaeLike("blocks.1.hook_resid_pre")
    result = decompose_with_sae(_planted(sae), sae, k=6)
    rows = result.to_rows()
    assert rows[0] == {"rank": 1, "feature": 7, "score": result.scores[0]}
    assert len(rows) == 6
    fig = result.plot()
    assert isinstance(fig, go.Figure)
    assert list(fig.data[0].x) == [f"#{f}" for f in result.features]
    text = repr(result)
    assert text.startswith("SaeDecomposition(layer=1") and "#7:" in text and "..." in text
    with pytest.raises(AttributeError):
        result.k = 3  # type: ignore[attr-defined]  # frozen


def test_k_larger_than_d_sae_lists_every_feature():
    sae = SaeLike("blocks.1.hook_resid_pre")
    assert len(decompose_with_sae(_planted(sae), sae, k=1000).features) == D_SAE
