"""Vectors to and from repeng and steering-vectors (steerlens.interop.libraries).

The libraries are optional: tests that need them skip when they are missing. The main check is
that each library's own apply function steers the tiny model exactly as ``steerlens.steer``
does with the converted vector.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import steerlens
from steerlens import Steering, SteeringVector, runtime
from steerlens.errors import (
    LayerError,
    MissingPackageError,
    ModelMismatchError,
    SpecError,
    VectorShapeError,
)
from steerlens.interop import libraries as interop
from steerlens.interop.libraries import (
    from_repeng,
    from_steering_vectors,
    to_repeng,
    to_steering_vectors,
)
from steerlens.testing import TINY_MODEL_ID, tiny_model

TOKENS = torch.tensor([[5, 6, 7, 8, 9, 10]])


@pytest.fixture(scope="module")
def repeng():
    # steerlens's own import, which lends NumPy 2 the np.float_ repeng 0.4 names.
    try:
        return interop.import_repeng()
    except MissingPackageError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def steering_vectors():
    return pytest.importorskip("steering_vectors")


@pytest.fixture(scope="module")
def model3():
    return tiny_model(n_layers=3)


def _vector(model, layers=(1, 2), dtype=torch.float32):
    gen = torch.Generator().manual_seed(1)
    return SteeringVector(
        {la: torch.randn(64, generator=gen).to(dtype) for la in layers},
        model_id=steerlens.runtime.model_id(model),
    )


def _steered(model, vector, strength):
    with torch.no_grad(), steerlens.steer(model, Steering(vector, strength=strength)):
        return model(TOKENS)


# --- repeng ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_repeng_round_trip_is_exact(repeng, model3, dtype):
    v = _vector(model3, dtype=dtype)
    cv = to_repeng(v, model=model3)
    assert isinstance(cv, repeng.ControlVector)
    assert cv.model_type == "llama"
    assert sorted(cv.directions) == [0, 1]  # our layer l is repeng's l - 1
    back = from_repeng(cv, model3)
    assert back.layers == v.layers
    assert back.model_id == v.model_id
    for layer in v.layers:
        assert torch.equal(back.directions[layer], v.directions[layer])
    assert back.provenance["source"] == "repeng"
    assert to_repeng(back, model=model3) == cv  # repeng's __eq__: same keys, same arrays


def test_repeng_control_model_steers_like_steerlens(repeng, model3):
    v = _vector(model3)
    expected = _steered(model3, v, 2.5)
    other = tiny_model(n_layers=3)  # ControlModel rewrites the model it wraps
    control = repeng.ControlModel(other.original_model, [0, 1])
    try:
        control.set_control(to_repeng(v, model=model3), 2.5)
        with torch.no_grad():
            got = control(input_ids=TOKENS, attention_mask=torch.ones_like(TOKENS)).logits
    finally:
        control.unwrap()
    assert torch.equal(got, expected)
    with torch.no_grad():
        assert not torch.equal(model3(TOKENS), expected)  # the vector does steer


def test_repeng_gguf_matches_our_gguf_convention(repeng, model3, tmp_path):
    v = _vector(model3, layers=(2,))
    # repeng's file, read by steerlens
    to_repeng(v, model=model3).export_gguf(str(tmp_path / "repeng.gguf"))
    back = SteeringVector.from_gguf(tmp_path / "repeng.gguf", model3)
    assert back.layers == [2]
    assert torch.equal(back.directions[2], v.directions[2])
    # our file, read by repeng
    cv = repeng.ControlVector.import_gguf(str(v.to_gguf(tmp_path / "ours.gguf")))
    assert sorted(cv.directions) == [1]
    np.testing.assert_array_equal(cv.directions[1], v.directions[2].numpy())


def test_repeng_last_layer_is_refused_unless_left_out(model3):
    # repeng's default training includes the last decoder layer (n_layers - 1).
    cv = SimpleNamespace(
        model_type="llama", directions={k: np.full(64, k, np.float32) for k in (0, 1, 2)}
    )
    with pytest.raises(LayerError, match=r"blocks\.2\.hook_resid_post.*layers=\[1, 2\]"):
        from_repeng(cv, model3)
    assert from_repeng(cv, model3, layers=[1, 2]).layers == [1, 2]


def test_repeng_from_another_architecture_is_refused_unless_allowed(model3):
    cv = SimpleNamespace(model_type="gpt2", directions={0: np.ones(64, np.float32)})
    with pytest.raises(ModelMismatchError, match=r"'gpt2'.*'llama'.*allow_model_mismatch"):
        from_repeng(cv, model3)
    v = from_repeng(cv, model3, allow_model_mismatch=True)
    assert v.model_id == TINY_MODEL_ID
    assert v.provenance["model_type"] == "gpt2"


def test_repeng_other_d_model_is_refused(model3):
    cv = SimpleNamespace(model_type="llama", directions={0: np.ones(32, np.float32)})
    with pytest.raises(VectorShapeError, match="d_model 32"):
        from_repeng(cv, model3, allow_model_mismatch=True)


def test_repeng_negative_keys_and_non_vectors_are_refused(model3):
    with pytest.raises(SpecError, match="negative layer keys"):
        from_repeng(SimpleNamespace(model_type="llama", directions={-1: np.ones(64)}), model3)
    with pytest.raises(SpecError, match="expected a repeng ControlVector"):
        from_repeng({0: np.ones(64)}, model3)
    with pytest.raises(SpecError, match="1-D"):
        from_repeng(SimpleNamespace(model_type="llama", directions={0: np.ones((2, 64))}), model3)


def test_to_repeng_checks_the_model(repeng, model3):
    other = SteeringVector({1: torch.ones(64)}, model_id="someone/else")
    with pytest.raises(ModelMismatchError, match="allow_model_mismatch"):
        to_repeng(other, model=model3)
    assert sorted(to_repeng(other, model=model3, allow_model_mismatch=True).directions) == [0]
    with pytest.raises(SpecError, match="model_type"):
        to_repeng(other)
    assert to_repeng(other, model_type="llama").model_type == "llama"


# --- steering-vectors --------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_steering_vectors_round_trip_is_exact(steering_vectors, model3, dtype):
    v = _vector(model3, dtype=dtype)
    sv = to_steering_vectors(v, model=model3)
    assert isinstance(sv, steering_vectors.SteeringVector)
    assert sv.layer_type == "decoder_block"
    assert sorted(sv.layer_activations) == [0, 1]  # our layer l is block l - 1's output
    back = from_steering_vectors(sv, model3)
    assert back.layers == v.layers
    for layer in v.layers:
        assert back.directions[layer].dtype == dtype
        assert torch.equal(back.directions[layer], v.directions[layer])
    assert back.provenance["source"] == "steering-vectors"


def test_steering_vectors_apply_steers_like_steerlens(steering_vectors, model3):
    v = _vector(model3)
    expected = _steered(model3, v, -1.5)
    sv = to_steering_vectors(v, model=model3)
    with torch.no_grad(), sv.apply(model3.original_model, multiplier=-1.5):
        got = model3.original_model(TOKENS).logits
    assert torch.equal(got, expected)
    with torch.no_grad():
        assert torch.equal(model3(TOKENS), model3.original_model(TOKENS).logits)  # removed


def test_steering_vectors_negative_blocks_count_from_the_end(model3):
    sv = SimpleNamespace(layer_activations={-2: torch.ones(64)}, layer_type="decoder_block")
    assert from_steering_vectors(sv, model3).layers == [2]  # block 1 of 3
    last = SimpleNamespace(layer_activations={-1: torch.ones(64)}, layer_type="decoder_block")
    with pytest.raises(LayerError, match="last block"):
        from_steering_vectors(last, model3)
    far = SimpleNamespace(layer_activations={-4: torch.ones(64)}, layer_type="decoder_block")
    with pytest.raises(LayerError, match="does not exist"):
        from_steering_vectors(far, model3)
    both = SimpleNamespace(
        layer_activations={1: torch.ones(64), -2: torch.ones(64)}, layer_type="decoder_block"
    )
    with pytest.raises(SpecError, match="both name block 1"):
        from_steering_vectors(both, model3)


def test_steering_vectors_sublayer_types_are_refused(model3):
    sv = SimpleNamespace(layer_activations={0: torch.ones(64)}, layer_type="mlp")
    with pytest.raises(SpecError, match=r"'mlp'.*decoder_block"):
        from_steering_vectors(sv, model3)


# --- what neither tool can express ---------------------------------------------------------


@pytest.mark.parametrize("convert", [to_repeng, to_steering_vectors])
def test_layer_0_affine_and_clamp_are_refused(convert, repeng, steering_vectors, model3):
    with pytest.raises(SpecError, match=r"layer 0.*embeddings"):
        convert(_vector(model3, layers=(0, 1)), model=model3)
    affine = SteeringVector(
        {1: torch.ones(64)},
        model_id=TINY_MODEL_ID,
        affine={1: (torch.zeros(1, 64), torch.zeros(1, 64))},
    )
    with pytest.raises(SpecError, match="affine"):
        convert(affine, model=model3)
    clamp = SteeringVector(
        {1: torch.ones(64)}, model_id=TINY_MODEL_ID, provenance={"steering": "clamp"}
    )
    with pytest.raises(SpecError, match="additive_ok=True"):
        convert(clamp, model=model3)
    assert convert(clamp, model=model3, additive_ok=True) is not None


# --- missing packages ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("convert", "module", "fix"),
    [
        (to_repeng, "repeng", "--no-deps repeng"),
        (to_steering_vectors, "steering_vectors", "--no-deps steering-vectors"),
    ],
)
def test_missing_package_names_the_install(monkeypatch, model3, convert, module, fix):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(MissingPackageError, match=fix):
        convert(_vector(model3), model=model3)


def test_repeng_on_numpy_2_gets_a_clear_error(monkeypatch, model3):
    def fail(name):
        raise AttributeError("`np.float_` was removed in the NumPy 2.0 release.")

    monkeypatch.setattr(interop.importlib, "import_module", fail)
    with pytest.raises(MissingPackageError, match=r"numpy<2"):
        to_repeng(_vector(model3), model=model3)


def test_repeng_imports_under_numpy_2_and_leaves_numpy_as_it_was(repeng):
    assert np.__version__.startswith("2.")  # what steerlens installs
    assert "float_" not in vars(np)  # the alias was lent for the import only
    assert interop.import_repeng() is repeng


def test_hf_model_type_of_a_hooked_transformer_style_model():
    model = SimpleNamespace(cfg=SimpleNamespace(original_architecture="LlamaForCausalLM"))
    assert runtime.hf_model_type(model) == "llama"
    assert runtime.hf_model_type(SimpleNamespace(cfg=SimpleNamespace())) is None
