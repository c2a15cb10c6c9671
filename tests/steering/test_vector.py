import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import steerlens
from steerlens import SteeringVector
from steerlens.errors import (
    ModelMismatchError,
    OutputPathError,
    SteerlensError,
    VectorFileError,
    VectorShapeError,
)
from steerlens.io.gguf_format import read_control_vector
from steerlens.steering.steer import Steering


def _vec(tiny, layers=(1,), seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    return SteeringVector(
        {la: torch.randn(64, generator=g) for la in layers},
        model_id=tiny.cfg.model_name,
        provenance={"method": "test", "prompts": ["a"], "final_loss": 1.5, "loss_unit": "nats"},
        **kw,
    )


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), layers=st.sets(st.integers(0, 1), min_size=1))
def test_save_load_round_trip_is_bit_exact(tmp_path_factory, tiny, seed, layers):
    v = _vec(tiny, sorted(layers), seed)
    path = tmp_path_factory.mktemp("v") / "v.safetensors"
    v.save(path)
    w = SteeringVector.load(path)
    assert w.layers == v.layers
    for la in v.layers:
        assert torch.equal(w.directions[la], v.directions[la])
    assert w.metadata() == v.metadata()


def test_affine_round_trip(tmp_path, tiny):
    g = torch.Generator().manual_seed(1)
    affine = {1: (torch.randn(2, 64, generator=g), torch.randn(2, 64, generator=g))}
    v = _vec(tiny, affine=affine)
    v.save(tmp_path / "a.safetensors")
    w = SteeringVector.load(tmp_path / "a.safetensors")
    assert torch.equal(w.affine[1][0], affine[1][0]) and torch.equal(w.affine[1][1], affine[1][1])
    assert w.metadata()["affine_rank"] == 2


def test_metadata_records_provenance(tiny):
    meta = _vec(tiny).metadata()
    assert meta["model_id"] == "steerlens/tiny-llama"
    assert meta["d_model"] == 64
    assert meta["hook_template"] == "blocks.{layer}.hook_resid_pre"
    assert meta["provenance"]["loss_unit"] == "nats"
    assert meta["steerlens_version"] == steerlens.__version__
    assert meta["created_at"]


def test_not_our_file_truncated_file_and_missing_file(tmp_path, tiny):
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"w": torch.ones(3)}, str(other))
    with pytest.raises(VectorFileError, match="not a steerlens vector"):
        SteeringVector.load(other)
    good = tmp_path / "good.safetensors"
    _vec(tiny).save(good)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-10])
    with pytest.raises(VectorFileError, match="truncated"):
        SteeringVector.load(truncated)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"hello world, not tensors")
    with pytest.raises(VectorFileError):
        SteeringVector.load(junk)
    with pytest.raises(VectorFileError, match="no vector file"):
        SteeringVector.load(tmp_path / "missing.safetensors")


def test_failed_save_keeps_the_old_file(tmp_path, tiny, monkeypatch):
    path = tmp_path / "v.safetensors"
    v = _vec(tiny)
    v.save(path)
    before = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", broken)
    with pytest.raises(OutputPathError, match=r"v.safetensors' failed after \d+ bytes: disk full"):
        _vec(tiny, seed=5).save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.safetensors"]


def test_model_mismatch_is_refused_unless_overridden(tiny):
    v = SteeringVector({1: torch.randn(64)}, model_id="someone/else")
    with pytest.raises(ModelMismatchError, match="allow_model_mismatch=True"):
        with steerlens.steer(tiny, v):
            pass
    with steerlens.steer(tiny, Steering(v, allow_model_mismatch=True)):
        pass
    small = SteeringVector({1: torch.randn(32)}, model_id=tiny.cfg.model_name)
    with pytest.raises(VectorShapeError, match="d_model 32"), steerlens.steer(tiny, small):
        pass


def test_arithmetic(tiny):
    a, b = _vec(tiny, seed=1), _vec(tiny, seed=2)
    assert torch.allclose((2 * a - b).vector, 2 * a.vector - b.vector)
    assert torch.allclose((-a).vector, -a.vector)
    assert torch.allclose((a / 2).vector, a.vector / 2)
    assert torch.equal((a - a).vector, torch.zeros(64))
    assert (a + b).provenance["method"] == "arithmetic"
    with pytest.raises(ModelMismatchError):
        a + SteeringVector({1: torch.randn(64)}, model_id="other")


def test_vector_is_applied_at_its_own_layers(tiny):
    v = _vec(tiny, layers=(0,))
    tokens = torch.tensor([[5, 6, 7]])
    with steerlens.steer(tiny, Steering(v, strength=2.0)):
        a = tiny(tokens)
    with steerlens.steer(tiny, Steering(v.vector, layer=0, strength=2.0)):
        b = tiny(tokens)
    assert torch.equal(a, b)


def test_to_gguf_maps_layers_for_llama_cpp(tmp_path, tiny):
    from steerlens.testing import tiny_model

    deep = tiny_model(n_layers=4)
    v = SteeringVector.from_tensor(torch.randn(64), layer=[2, 3], model=deep)
    v.to_gguf(tmp_path / "v.gguf")
    directions, _meta = read_control_vector(tmp_path / "v.gguf")
    assert sorted(directions) == [2, 3]
    np.testing.assert_array_equal(directions[2], v.directions[2].numpy())
    with pytest.raises(SteerlensError, match="layer 1"):
        SteeringVector.from_tensor(torch.randn(64), layer=1, model=deep).to_gguf(
            tmp_path / "x.gguf"
        )


def test_empty_vector_refused():
    with pytest.raises(SteerlensError, match="at least one layer"):
        SteeringVector({}, model_id="x")


def test_metadata_is_json(tiny):
    json.dumps(_vec(tiny).metadata())


def test_saved_files_get_ordinary_permissions(tmp_path, tiny):
    import os
    import stat

    path = _vec(tiny).save(tmp_path / "v.safetensors")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
