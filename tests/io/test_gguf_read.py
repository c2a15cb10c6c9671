"""Reading llama.cpp control-vector files back as SteeringVectors (steerlens.io.gguf_format)."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

import steerlens
from steerlens import SteeringVector
from steerlens.errors import LayerError, ModelMismatchError, VectorFileError, VectorShapeError
from steerlens.testing import TINY_MODEL_ID, tiny_model


@pytest.fixture(scope="module")
def deep():
    return tiny_model(n_layers=4)


def _write_other_tool(path: Path, hint: str | None, tensors: dict[int, np.ndarray]) -> None:
    """A file as repeng's export_gguf or llama.cpp's cvector-generator writes it (uint32 count)."""
    writer = gguf.GGUFWriter(path, "controlvector")
    if hint is not None:
        writer.add_string("controlvector.model_hint", hint)
    writer.add_uint32("controlvector.layer_count", len(tensors))
    for index, array in tensors.items():
        writer.add_tensor(f"direction.{index}", array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_steerlens_gguf_steerlens_round_trip_is_exact(tmp_path, deep):
    v = SteeringVector(
        {2: torch.randn(64), 3: torch.randn(64)}, model_id=steerlens.runtime.model_id(deep)
    )
    back = SteeringVector.from_gguf(v.to_gguf(tmp_path / "v.gguf", model=deep), deep)
    assert back.layers == v.layers == [2, 3]
    assert back.model_id == v.model_id
    for layer in v.layers:
        assert torch.equal(back.directions[layer], v.directions[layer])
    assert back.provenance["source"] == "llama.cpp control vector (GGUF)"
    assert back.provenance["model_hint"] == "tiny-llama"
    back.check_compatible(deep)


def test_imported_vector_steers_like_the_original(tmp_path, deep):
    v = SteeringVector.from_tensor(torch.randn(64), layer=2, model=deep)
    back = SteeringVector.from_gguf(v.to_gguf(tmp_path / "v.gguf"), deep)
    tokens = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        with steerlens.steer(deep, steerlens.Steering(v, strength=3.0)):
            a = deep(tokens)
        with steerlens.steer(deep, steerlens.Steering(back, strength=3.0)):
            b = deep(tokens)
    assert torch.equal(a, b)


def test_another_tools_file_maps_direction_k_to_layer_k_plus_1(tmp_path, deep):
    rng = np.random.default_rng(0)
    tensors = {k: rng.standard_normal(64).astype(np.float32) for k in (1, 2)}
    _write_other_tool(tmp_path / "repeng.gguf", "llama", tensors)
    v = SteeringVector.from_gguf(tmp_path / "repeng.gguf", deep)
    assert v.layers == [2, 3]
    np.testing.assert_array_equal(v.directions[2].numpy(), tensors[1])
    np.testing.assert_array_equal(v.directions[3].numpy(), tensors[2])
    assert v.model_id == TINY_MODEL_ID
    assert v.directions[2].dtype == torch.float32


def test_last_block_vector_is_refused_unless_left_out(tmp_path, deep):
    # cvector-generator and repeng write the last block's output too: direction.{N-1}.
    tensors = {k: np.full(64, k, np.float32) for k in (1, 2, 3)}
    _write_other_tool(tmp_path / "all.gguf", "llama", tensors)
    with pytest.raises(
        LayerError, match=r"last block.*blocks\.3\.hook_resid_post.*layers=\[2, 3\]"
    ):
        SteeringVector.from_gguf(tmp_path / "all.gguf", deep)
    v = SteeringVector.from_gguf(tmp_path / "all.gguf", deep, layers=[2, 3])
    assert v.layers == [2, 3]
    with pytest.raises(LayerError, match=r"no vector for layer\(s\) \[1\]"):
        SteeringVector.from_gguf(tmp_path / "all.gguf", deep, layers=[1])


def test_another_models_file_is_refused_unless_allowed(tmp_path, deep):
    _write_other_tool(tmp_path / "gpt2.gguf", "gpt2", {1: np.ones(64, np.float32)})
    with pytest.raises(ModelMismatchError, match=r"'gpt2'.*allow_model_mismatch=True"):
        SteeringVector.from_gguf(tmp_path / "gpt2.gguf", deep)
    v = SteeringVector.from_gguf(tmp_path / "gpt2.gguf", deep, allow_model_mismatch=True)
    assert v.layers == [2]
    assert v.provenance["model_hint"] == "gpt2"


def test_file_without_model_hint_is_refused_unless_allowed(tmp_path, deep):
    _write_other_tool(tmp_path / "bare.gguf", None, {1: np.ones(64, np.float32)})
    with pytest.raises(ModelMismatchError, match="is missing"):
        SteeringVector.from_gguf(tmp_path / "bare.gguf", deep)
    assert SteeringVector.from_gguf(tmp_path / "bare.gguf", deep, allow_model_mismatch=True)


def test_other_d_model_is_refused_even_when_allowed(tmp_path, deep):
    _write_other_tool(tmp_path / "wide.gguf", "llama", {1: np.ones(32, np.float32)})
    with pytest.raises(VectorShapeError, match="d_model 32"):
        SteeringVector.from_gguf(tmp_path / "wide.gguf", deep, allow_model_mismatch=True)


def test_layers_beyond_the_model_are_refused(tmp_path, deep):
    _write_other_tool(tmp_path / "big.gguf", "llama", {10: np.ones(64, np.float32)})
    with pytest.raises(LayerError, match="another model"):
        SteeringVector.from_gguf(tmp_path / "big.gguf", deep)


def test_not_a_control_vector_is_refused(tmp_path, deep):
    (tmp_path / "x.gguf").write_bytes(b"not gguf at all")
    with pytest.raises(VectorFileError):
        SteeringVector.from_gguf(tmp_path / "x.gguf", deep)
