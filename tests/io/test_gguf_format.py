"""Tests of steerlens.io.gguf_format: llama.cpp control-vector files."""

from __future__ import annotations

import doctest
import re
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from steerlens.errors import (
    LayerError,
    NonFiniteError,
    SpecError,
    SteerlensError,
    VectorFileError,
    VectorShapeError,
)
from steerlens.io import gguf_format
from steerlens.io.gguf_format import (
    gguf_index_to_tl_layer,
    read_control_vector,
    tl_layer_to_gguf_index,
    write_control_vector,
)

D_MODEL = 16


def _vectors(layers: list[int], seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {layer: rng.standard_normal(D_MODEL).astype(np.float32) for layer in layers}


def _write_raw(path: Path, arch: str, tensors: dict[str, np.ndarray]) -> None:
    """Write a GGUF file directly, to build files our writer refuses to make."""
    writer = gguf.GGUFWriter(path, arch)
    for name, array in tensors.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# --- the layer mapping ------------------------------------------------------------------


@pytest.mark.parametrize(("layer", "index"), [(2, 1), (3, 2), (12, 11), (31, 30)])
def test_mapping_both_ways(layer: int, index: int) -> None:
    assert tl_layer_to_gguf_index(layer) == index
    assert gguf_index_to_tl_layer(index) == layer


def test_mapping_round_trips_over_a_range() -> None:
    for layer in range(2, 100):
        assert gguf_index_to_tl_layer(tl_layer_to_gguf_index(layer)) == layer


@pytest.mark.parametrize("layer", [0, 1])
def test_inexpressible_layers_are_refused(layer: int) -> None:
    with pytest.raises(SpecError) as info:
        tl_layer_to_gguf_index(layer)
    message = str(info.value)
    assert f"layer {layer}" in message
    assert "llama.cpp" in message
    assert "layer 2 or later" in message


def test_negative_layer_is_a_layer_error() -> None:
    with pytest.raises(LayerError, match="layer -1"):
        tl_layer_to_gguf_index(-1)


@pytest.mark.parametrize("index", [0, -3])
def test_invalid_direction_index_is_refused(index: int) -> None:
    with pytest.raises(SpecError, match=re.escape(f"direction.{index}")):
        gguf_index_to_tl_layer(index)


# --- writing and reading ------------------------------------------------------------------


def test_round_trip_is_bit_identical(tmp_path: Path) -> None:
    directions = _vectors([2, 5, 9])
    # awkward float32 values must survive bit for bit
    directions[5][:4] = [np.float32(-0.0), np.float32(1e-45), np.finfo(np.float32).max, 1 / 3]
    path = tmp_path / "vec.gguf"
    write_control_vector(path, directions, model_hint="llama", n_layers=12)

    read, metadata = read_control_vector(path)

    assert sorted(read) == [2, 5, 9]
    for layer, vector in directions.items():
        assert read[layer].dtype == np.float32
        assert read[layer].shape == (D_MODEL,)
        np.testing.assert_array_equal(read[layer].view(np.uint32), vector.view(np.uint32))
    assert metadata == {
        "general.architecture": "controlvector",
        "controlvector.model_hint": "llama",
        "controlvector.layer_count": 3,
    }


def test_torch_tensors_are_accepted(tmp_path: Path) -> None:
    vector = torch.linspace(-1, 1, D_MODEL)
    path = tmp_path / "vec.gguf"
    write_control_vector(path, {4: vector, 6: vector.to(torch.bfloat16)}, model_hint="gpt2")
    read, _ = read_control_vector(path)
    np.testing.assert_array_equal(read[4], vector.numpy())
    np.testing.assert_array_equal(read[6], vector.to(torch.bfloat16).float().numpy())


def test_file_is_as_llama_cpp_reads_it(tmp_path: Path) -> None:
    path = tmp_path / "vec.gguf"
    write_control_vector(path, _vectors([7, 3]), model_hint="qwen2")

    reader = gguf.GGUFReader(path)
    arch = reader.fields["general.architecture"]
    assert arch.types == [gguf.GGUFValueType.STRING]
    assert arch.contents() == "controlvector"
    assert reader.fields["controlvector.model_hint"].contents() == "qwen2"
    count = reader.fields["controlvector.layer_count"]
    assert count.types == [gguf.GGUFValueType.INT32]
    assert count.contents() == 2
    # our layers 3 and 7 are the outputs of blocks 2 and 6: direction.2 and direction.6
    assert [t.name for t in reader.tensors] == ["direction.2", "direction.6"]
    for tensor in reader.tensors:
        assert tensor.tensor_type == gguf.GGMLQuantizationType.F32
        assert [int(d) for d in tensor.shape] == [D_MODEL]
        assert tensor.n_elements == D_MODEL


@pytest.mark.parametrize("layer", [0, 1])
def test_write_refuses_inexpressible_layer(tmp_path: Path, layer: int) -> None:
    path = tmp_path / "vec.gguf"
    with pytest.raises(SpecError, match=f"layer {layer}"):
        write_control_vector(path, _vectors([layer, 4]), model_hint="llama")
    assert not path.exists()


def test_write_refuses_layer_beyond_model(tmp_path: Path) -> None:
    with pytest.raises(LayerError, match="layer 12"):
        write_control_vector(
            tmp_path / "vec.gguf", _vectors([4, 12]), model_hint="llama", n_layers=12
        )


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_write_refuses_non_finite_and_keeps_old_file(tmp_path: Path, bad: float) -> None:
    path = tmp_path / "vec.gguf"
    write_control_vector(path, _vectors([3]), model_hint="llama")
    before = path.read_bytes()
    directions = _vectors([3, 4])
    directions[4][7] = bad
    with pytest.raises(NonFiniteError, match="layer 4"):
        write_control_vector(path, directions, model_hint="llama")
    assert path.read_bytes() == before
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_write_refuses_overflow_to_inf(tmp_path: Path) -> None:
    vector = np.full(D_MODEL, 1e300)  # finite in float64, inf in float32
    with pytest.raises(NonFiniteError):
        write_control_vector(tmp_path / "vec.gguf", {3: vector}, model_hint="llama")


def test_write_refuses_mismatched_sizes(tmp_path: Path) -> None:
    directions = {3: np.zeros(D_MODEL, np.float32), 5: np.zeros(D_MODEL + 1, np.float32)}
    with pytest.raises(VectorShapeError, match="layer 5"):
        write_control_vector(tmp_path / "vec.gguf", directions, model_hint="llama")


def test_write_refuses_non_vector(tmp_path: Path) -> None:
    with pytest.raises(VectorShapeError):
        write_control_vector(
            tmp_path / "vec.gguf", {3: np.zeros((2, D_MODEL), np.float32)}, model_hint="llama"
        )


@pytest.mark.parametrize("directions", [{}, {"3": np.zeros(D_MODEL)}, {2.0: np.zeros(D_MODEL)}])
def test_write_refuses_bad_arguments(tmp_path: Path, directions: dict) -> None:
    with pytest.raises(SpecError):
        write_control_vector(tmp_path / "vec.gguf", directions, model_hint="llama")


def test_errors_are_steerlens_errors() -> None:
    for error in (SpecError, LayerError, NonFiniteError, VectorShapeError, VectorFileError):
        assert issubclass(error, SteerlensError)


# --- reading bad files ------------------------------------------------------------------


def test_random_bytes_are_not_a_control_vector(tmp_path: Path) -> None:
    path = tmp_path / "noise.gguf"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, np.uint8).tobytes())
    with pytest.raises(VectorFileError, match=re.escape("noise.gguf")):
        read_control_vector(path)


def test_empty_file_is_not_a_control_vector(tmp_path: Path) -> None:
    path = tmp_path / "empty.gguf"
    path.write_bytes(b"")
    with pytest.raises(VectorFileError, match=re.escape("empty.gguf")):
        read_control_vector(path)


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, 0.99])
def test_truncated_file_is_refused(tmp_path: Path, keep: float) -> None:
    path = tmp_path / "vec.gguf"
    write_control_vector(path, _vectors([2, 3, 4]), model_hint="llama")
    data = path.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(VectorFileError, match=re.escape("cut.gguf")):
        read_control_vector(cut)


def test_missing_file_is_a_vector_file_error(tmp_path: Path) -> None:
    with pytest.raises(VectorFileError, match=r"no control-vector file at .*absent\.gguf"):
        read_control_vector(tmp_path / "absent.gguf")


def test_other_architecture_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    _write_raw(path, "llama", {"token_embd.weight": np.zeros((4, D_MODEL), np.float32)})
    with pytest.raises(VectorFileError, match="'llama'") as info:
        read_control_vector(path)
    assert "model.gguf" in str(info.value)


@pytest.mark.parametrize(
    ("name", "array", "problem"),
    [
        ("direction.0", np.zeros(D_MODEL, np.float32), "index 0"),
        ("bias.3", np.zeros(D_MODEL, np.float32), "not named"),
        ("direction.x", np.zeros(D_MODEL, np.float32), "not named"),
        ("direction.3", np.zeros(D_MODEL, np.float16), "not F32"),
        ("direction.3", np.zeros((2, D_MODEL), np.float32), "not a 1-D"),
        ("direction.3", np.zeros(D_MODEL + 1, np.float32), "previous direction"),
    ],
)
def test_malformed_direction_tensors_are_refused(
    tmp_path: Path, name: str, array: np.ndarray, problem: str
) -> None:
    path = tmp_path / "bad.gguf"
    _write_raw(path, "controlvector", {"direction.2": np.zeros(D_MODEL, np.float32), name: array})
    with pytest.raises(VectorFileError, match=problem) as info:
        read_control_vector(path)
    assert "bad.gguf" in str(info.value)


def test_file_without_directions_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "hollow.gguf"
    _write_raw(path, "controlvector", {})
    with pytest.raises(VectorFileError, match="without direction tensors"):
        read_control_vector(path)


def test_reads_files_of_other_tools(tmp_path: Path) -> None:
    # as repeng writes them: uint32 layer_count, direction indices as llama.cpp reads them
    path = tmp_path / "repeng.gguf"
    writer = gguf.GGUFWriter(path, "controlvector")
    writer.add_string("controlvector.model_hint", "mistral")
    writer.add_uint32("controlvector.layer_count", 2)
    writer.add_tensor("direction.1", np.ones(D_MODEL, np.float32))
    writer.add_tensor("direction.31", np.full(D_MODEL, 2.0, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    directions, metadata = read_control_vector(path)
    assert sorted(directions) == [2, 32]
    assert metadata["controlvector.layer_count"] == 2
    assert metadata["controlvector.model_hint"] == "mistral"


def test_docstring_examples_run() -> None:
    result = doctest.testmod(gguf_format, raise_on_error=False, verbose=False)
    assert result.attempted > 0
    assert result.failed == 0
