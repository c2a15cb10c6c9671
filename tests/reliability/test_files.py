"""Vector files and vector values: bad inputs are handled correctly or refused clearly.

Each test pins one case of "nothing silent, nothing lost": saving and loading steering vectors,
exporting them to llama.cpp, and the values a vector may hold.
"""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import steerlens
from steerlens import Datapoint, SteeringVector, optimize_vector
from steerlens.errors import (
    LayerError,
    NonFiniteError,
    OutputPathError,
    SpecError,
    VectorFileError,
    VectorShapeError,
)
from steerlens.io.gguf_format import read_control_vector
from steerlens.steering.interventions import check_vector
from steerlens.steering.steer import Steering
from steerlens.testing import tiny_model
from steerlens.training.kinds import AffineSteering, ClampSteering

MODEL_ID = "steerlens/tiny-llama"
RESID_POST = "blocks.{layer}.hook_resid_post"


@pytest.fixture(scope="module")
def deep():
    """A tiny model with 4 layers, so that layers 2 and 3 can be exported to llama.cpp."""
    return tiny_model(n_layers=4)


def _vec(layers=(1,), seed=0, **kw) -> SteeringVector:
    g = torch.Generator().manual_seed(seed)
    return SteeringVector({la: torch.randn(64, generator=g) for la in layers}, MODEL_ID, **kw)


def _assert_equal_vectors(a: SteeringVector, b: SteeringVector) -> None:
    assert a.layers == b.layers
    for la in a.layers:
        assert torch.equal(a.directions[la], b.directions[la])
    assert a.metadata() == b.metadata()


def _rewrite(src, dst, *, tensors=None, meta=None, header=None) -> None:
    """Copy the vector file ``src`` to ``dst`` with tensors/metadata/header entries replaced
    (``None`` values delete), to make the damaged files ``save`` never writes."""
    with safe_open(str(src), framework="pt") as f:
        old_header = dict(f.metadata())
        old_tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open API
    new_meta = json.loads(old_header["steerlens"])
    for updates, target in ((tensors, old_tensors), (meta, new_meta), (header, old_header)):
        for key, value in (updates or {}).items():
            if value is None:
                target.pop(key, None)
            else:
                target[key] = value
    if "steerlens" in old_header and not (header and "steerlens" in header):
        old_header["steerlens"] = json.dumps(new_meta)
    save_file(old_tensors, str(dst), metadata=old_header)


# --- 1. a vector at several layers ---------------------------------------------------------


def test_vector_at_several_layers_round_trips(tmp_path):
    v = SteeringVector.from_tensor(torch.randn(64), layer=[0, 1], model_id=MODEL_ID)
    assert v.directions[0] is v.directions[1]  # one tensor object at both layers
    _assert_equal_vectors(SteeringVector.load(v.save(tmp_path / "v.safetensors")), v)


def test_optimized_vector_at_several_layers_round_trips(tmp_path, tiny):
    res = optimize_vector(
        tiny, Datapoint("the cat", promote=[" in"], chat=False), [0, 1], max_steps=2
    )
    path = res.vector.save(tmp_path / "v.safetensors")
    _assert_equal_vectors(SteeringVector.load(path), res.vector)


def test_directions_that_are_views_of_one_tensor_round_trip(tmp_path):
    rows = torch.randn(2, 64)
    v = SteeringVector({0: rows[0], 1: rows[1]}, MODEL_ID)
    _assert_equal_vectors(SteeringVector.load(v.save(tmp_path / "v.safetensors")), v)


def test_numpy_integer_layers_round_trip(tmp_path):
    v = SteeringVector({np.int64(1): torch.randn(64)}, MODEL_ID)
    assert v.layers == [1] and type(v.layers[0]) is int
    assert SteeringVector.from_tensor(torch.ones(64), np.int64(1), model_id=MODEL_ID).layers == [1]
    _assert_equal_vectors(SteeringVector.load(v.save(tmp_path / "v.safetensors")), v)


@pytest.mark.parametrize("layer", [True, "1", 1.0, -1])
def test_bad_layer_keys_are_refused(layer):
    with pytest.raises(LayerError, match="layer"):
        SteeringVector({layer: torch.randn(64)}, MODEL_ID)


# --- 2. output paths ------------------------------------------------------------------------


def test_save_to_a_folder_is_refused_before_writing(tmp_path):
    with pytest.raises(OutputPathError, match="is a folder") as err:
        _vec().save(tmp_path)
    assert str(tmp_path) in str(err.value) and "vector.safetensors" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_to_gguf_to_a_folder_is_refused_before_writing(tmp_path):
    with pytest.raises(OutputPathError, match="is a folder") as err:
        _vec(layers=(2,)).to_gguf(tmp_path)
    assert str(tmp_path) in str(err.value) and "vector.gguf" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_path_ending_in_a_separator_is_refused(tmp_path):
    with pytest.raises(OutputPathError, match="is a folder"):
        _vec().save(f"{tmp_path}/new/")
    assert list(tmp_path.iterdir()) == []


def test_missing_parent_folders_are_created(tmp_path):
    path = _vec().save(tmp_path / "a" / "b" / "v.safetensors")
    assert path == tmp_path / "a" / "b" / "v.safetensors"
    _assert_equal_vectors(SteeringVector.load(path), _vec())
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask


def test_path_under_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputPathError, match="is a file, not a folder"):
        _vec().save(tmp_path / "file" / "v.safetensors")
    with pytest.raises(OutputPathError, match="is a file, not a folder"):
        _vec(layers=(2,)).to_gguf(tmp_path / "file" / "sub" / "v.gguf")


def test_unwritable_folder_is_refused(tmp_path, monkeypatch):
    # Simulated: the tests may run as root, who can write anywhere.
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("tempfile.mkstemp", denied)
    with pytest.raises(OutputPathError, match=r"cannot write.*Permission denied"):
        _vec().save(tmp_path / "v.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_resaving_keeps_the_file_mode(tmp_path):
    path = _vec().save(tmp_path / "v.safetensors")
    path.chmod(0o640)
    _vec(seed=3).save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


# --- 3. ~ in paths --------------------------------------------------------------------------


def test_tilde_is_expanded(tmp_path, monkeypatch):
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    v = _vec(layers=(2,))
    assert v.save("~/v.safetensors") == home / "v.safetensors"
    _assert_equal_vectors(SteeringVector.load("~/v.safetensors"), v)
    assert v.to_gguf("~/v.gguf") == home / "v.gguf"
    directions, _ = read_control_vector("~/v.gguf")
    np.testing.assert_array_equal(directions[2], v.directions[2].numpy())
    assert sorted(p.name for p in home.iterdir()) == ["v.gguf", "v.safetensors"]
    assert list(cwd.iterdir()) == []


# --- 4. hook_template -----------------------------------------------------------------------


def test_other_hook_template_loads_but_is_not_applied(tmp_path, tiny):
    path = _vec(hook_template=RESID_POST).save(tmp_path / "v.safetensors")
    w = SteeringVector.load(path)
    assert w.hook_template == RESID_POST
    with pytest.raises(SpecError, match=r"hook_resid_post.*hook_resid_pre"):
        w.check_compatible(tiny)
    with pytest.raises(SpecError, match="hook_template"), steerlens.steer(tiny, w):
        pass


def test_other_hook_template_is_not_exported_to_llama_cpp(tmp_path):
    with pytest.raises(SpecError, match="hook_template"):
        _vec(layers=(2,), hook_template=RESID_POST).to_gguf(tmp_path / "v.gguf")
    assert list(tmp_path.iterdir()) == []


def test_vectors_at_different_hooks_are_not_combined():
    with pytest.raises(SpecError, match="different points"):
        _vec() + _vec(hook_template=RESID_POST)


# --- 5. dtypes ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.complex64, torch.int64, torch.bool])
def test_non_floating_vectors_are_refused(dtype, tiny):
    t = torch.ones(64, dtype=dtype)
    with pytest.raises(VectorShapeError, match=rf"{dtype}.*\.float\(\)"):
        check_vector(t)
    with pytest.raises(VectorShapeError, match=str(dtype)):
        SteeringVector.from_tensor(t, layer=1, model_id=MODEL_ID)
    with (
        pytest.raises(VectorShapeError, match=str(dtype)),
        steerlens.steer(tiny, Steering(t, layer=1)),
    ):
        pass


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_floating_vectors_round_trip(tmp_path, dtype):
    v = SteeringVector.from_tensor(torch.randn(64).to(dtype), layer=1, model_id=MODEL_ID)
    w = SteeringVector.load(v.save(tmp_path / "v.safetensors"))
    assert w.directions[1].dtype == dtype
    _assert_equal_vectors(w, v)


# --- 6. scaling -----------------------------------------------------------------------------


@pytest.mark.parametrize("scalar", [float("nan"), float("inf"), -float("inf"), np.float32("nan")])
def test_scaling_by_a_non_finite_number_is_refused(scalar):
    v = _vec()
    with pytest.raises(NonFiniteError, match="finite"):
        v * scalar
    with pytest.raises(NonFiniteError, match="finite"):
        scalar * v


def test_dividing_by_zero_is_refused():
    with pytest.raises(NonFiniteError, match="by 0"):
        _vec() / 0


def test_scaling_by_a_non_number_is_a_type_error():
    v = _vec()
    with pytest.raises(TypeError):
        v * "2"
    with pytest.raises(TypeError):
        v / "2"
    assert torch.equal((v * np.float32(2)).vector, v.vector * 2)


# --- 7. non-additive vectors to llama.cpp ---------------------------------------------------


def test_clamp_vector_is_not_exported_as_additive_without_opt_in(tmp_path, deep):
    dp = Datapoint("the cat", promote=[" in"], chat=False)
    v = optimize_vector(deep, dp, 2, max_steps=2, kind=ClampSteering(strength=2.0)).vector
    assert v.provenance["steering"] == "clamp"
    with pytest.raises(SpecError, match=r"clamp.*only added.*additive_ok=True"):
        v.to_gguf(tmp_path / "v.gguf")
    with pytest.raises(SpecError, match="clamp"):  # arithmetic keeps the record
        (2 * v).to_gguf(tmp_path / "v.gguf")
    with pytest.raises(SpecError, match="clamp"):
        (_vec(layers=(2,)) + v).to_gguf(tmp_path / "v.gguf")
    assert list(tmp_path.iterdir()) == []
    path = v.to_gguf(tmp_path / "v.gguf", additive_ok=True)
    directions, _ = read_control_vector(path)
    np.testing.assert_array_equal(directions[2], v.directions[2].numpy())


def test_ablate_vector_is_not_exported_without_opt_in(tmp_path):
    v = _vec(layers=(2,), provenance={"steering": "ablate"})
    with pytest.raises(SpecError, match="ablate"):
        v.to_gguf(tmp_path / "v.gguf")
    v.to_gguf(tmp_path / "v.gguf", additive_ok=True)


def test_affine_vector_is_never_exported(tmp_path, deep):
    dp = Datapoint("the cat", promote=[" in"], chat=False)
    v = optimize_vector(deep, dp, 2, max_steps=2, kind=AffineSteering(rank=1)).vector
    for ok in (False, True):
        with pytest.raises(SpecError, match="affine"):
            v.to_gguf(tmp_path / "v.gguf", additive_ok=ok)
    assert list(tmp_path.iterdir()) == []


# --- 8. layers for llama.cpp ----------------------------------------------------------------


@pytest.mark.parametrize("layers", [(0,), (1,), (1, 2)])
def test_layers_llama_cpp_cannot_steer_are_refused(tmp_path, layers):
    with pytest.raises(SpecError, match=rf"layer {layers[0]} cannot be written.*llama\.cpp"):
        _vec(layers=layers).to_gguf(tmp_path / "v.gguf")
    assert list(tmp_path.iterdir()) == []


def test_to_gguf_checks_layers_against_the_model(tmp_path, tiny, deep):
    v = SteeringVector.from_tensor(torch.randn(64), layer=[2, 3], model=deep)
    with pytest.raises(LayerError, match="layer 2 is out of range"):
        v.to_gguf(tmp_path / "v.gguf", model=tiny)
    assert list(tmp_path.iterdir()) == []
    directions, meta = read_control_vector(v.to_gguf(tmp_path / "v.gguf", model=deep))
    assert sorted(directions) == [2, 3] and meta["controlvector.layer_count"] == 2


def test_to_gguf_checks_d_model_against_the_model(tmp_path, deep):
    small = SteeringVector({2: torch.randn(32)}, MODEL_ID)
    with pytest.raises(VectorShapeError, match="d_model 32"):
        small.to_gguf(tmp_path / "v.gguf", model=deep)


# --- 9. damaged and foreign files -----------------------------------------------------------


@pytest.fixture
def good(tmp_path):
    return _vec(layers=(0, 1), provenance={"steering": "add"}).save(tmp_path / "good.safetensors")


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(VectorFileError, match="no vector file"):
        SteeringVector.load(tmp_path / "missing.safetensors")
    with pytest.raises(VectorFileError, match="is a folder"):
        SteeringVector.load(tmp_path)
    with pytest.raises(VectorFileError, match="is a folder"):
        read_control_vector(tmp_path)


@pytest.mark.parametrize("cut", [1, 10, 100])
def test_truncated_file(tmp_path, good, cut):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(good.read_bytes()[:-cut])
    with pytest.raises(VectorFileError, match="truncated"):
        SteeringVector.load(bad)


@pytest.mark.parametrize("content", [b"", b"hello world, not tensors", b"\xff" * 64])
def test_file_that_is_not_safetensors(tmp_path, content):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(content)
    with pytest.raises(VectorFileError, match="not a readable safetensors file"):
        SteeringVector.load(bad)


def test_safetensors_file_that_is_not_a_vector(tmp_path):
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.ones(3)}, str(other))
    with pytest.raises(VectorFileError, match="not a steerlens vector"):
        SteeringVector.load(other)


def test_newer_format_version(tmp_path, good):
    bad = tmp_path / "bad.safetensors"
    _rewrite(good, bad, header={"format_version": "2"})
    with pytest.raises(VectorFileError, match="Upgrade steerlens"):
        SteeringVector.load(bad)


@pytest.mark.parametrize(
    "key", ["model_id", "d_model", "layers", "hook_template", "provenance", "created_at"]
)
def test_metadata_missing_a_key(tmp_path, good, key):
    bad = tmp_path / "bad.safetensors"
    _rewrite(good, bad, meta={key: None})
    with pytest.raises(VectorFileError, match=rf"lacks the key\(s\) '{key}'.*Re-save"):
        SteeringVector.load(bad)


def test_metadata_that_is_not_json(tmp_path, good):
    bad = tmp_path / "bad.safetensors"
    _rewrite(good, bad, header={"steerlens": "{not json"})
    with pytest.raises(VectorFileError, match="not JSON"):
        SteeringVector.load(bad)
    _rewrite(good, bad, header={"steerlens": None})
    with pytest.raises(VectorFileError, match="damaged"):
        SteeringVector.load(bad)


def test_metadata_with_wrong_types(tmp_path, good):
    bad = tmp_path / "bad.safetensors"
    _rewrite(good, bad, meta={"model_id": 3})
    with pytest.raises(VectorFileError, match="'model_id' is 3, not a str"):
        SteeringVector.load(bad)


def test_metadata_disagreeing_with_the_tensors(tmp_path, good):
    bad = tmp_path / "bad.safetensors"
    _rewrite(good, bad, meta={"layers": [0, 1, 2]})
    with pytest.raises(VectorFileError, match=r"layers \[0, 1\] but its metadata lists"):
        SteeringVector.load(bad)
    _rewrite(good, bad, meta={"d_model": 32})
    with pytest.raises(VectorFileError, match="metadata says d_model 32"):
        SteeringVector.load(bad)
    _rewrite(good, bad, meta={"affine_rank": 2})
    with pytest.raises(VectorFileError, match="affine_rank 2"):
        SteeringVector.load(bad)


def test_unknown_or_unpaired_tensors(tmp_path, good):
    bad = tmp_path / "bad.safetensors"
    _rewrite(good, bad, tensors={"extra": torch.ones(64)})
    with pytest.raises(VectorFileError, match="'extra'"):
        SteeringVector.load(bad)
    _rewrite(good, bad, tensors={"affine_left.1": torch.ones(1, 64)})
    with pytest.raises(VectorFileError, match="affine_right"):
        SteeringVector.load(bad)


def test_tensors_of_different_sizes(tmp_path, good):
    bad = tmp_path / "bad.safetensors"
    _rewrite(good, bad, tensors={"direction.1": torch.ones(32)})
    with pytest.raises(VectorFileError, match="one size"):
        SteeringVector.load(bad)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_values_in_a_file(tmp_path, good, value):
    bad = tmp_path / "bad.safetensors"
    t = torch.ones(64)
    t[3] = value
    _rewrite(good, bad, tensors={"direction.1": t})
    with pytest.raises(VectorFileError, match="layer 1 has 1 NaN/inf"):
        SteeringVector.load(bad)


def test_complex_values_in_a_file(tmp_path, good):
    bad = tmp_path / "bad.safetensors"
    _rewrite(good, bad, tensors={"direction.1": torch.ones(64, dtype=torch.complex64)})
    with pytest.raises(VectorFileError, match="complex64"):
        SteeringVector.load(bad)


def test_file_for_another_d_model_loads_but_is_not_applied(tmp_path, tiny):
    small = SteeringVector({1: torch.randn(32)}, MODEL_ID)
    w = SteeringVector.load(small.save(tmp_path / "v.safetensors"))
    assert w.d_model == 32
    with pytest.raises(VectorShapeError, match="d_model 32"), steerlens.steer(tiny, w):
        pass


def test_provenance_that_is_not_json_is_refused_before_writing(tmp_path):
    v = _vec(provenance={"init": torch.ones(2)})
    with pytest.raises(SpecError, match="plain JSON"):
        v.save(tmp_path / "v.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_failed_save_leaves_no_temporary_file(tmp_path, monkeypatch):
    path = _vec().save(tmp_path / "v.safetensors")
    before = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", broken)
    with pytest.raises(OutputPathError, match=r"v.safetensors' failed after \d+ bytes: disk full"):
        _vec(seed=5).save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["v.safetensors"]


# --- paths that are not paths, and missing GGUF files (found by the reliability sweep) -------


@pytest.mark.parametrize(("path", "match"), [(None, "got None"), (5, "got 5"), ("", "is empty")])
def test_save_paths_that_are_not_paths_are_refused(path, match):
    with pytest.raises(OutputPathError, match=match):
        _vec().save(path)


def test_from_gguf_of_a_missing_file_is_a_vector_file_error(tmp_path, deep):
    with pytest.raises(VectorFileError, match="no control-vector file at"):
        SteeringVector.from_gguf(tmp_path / "none.gguf", deep)
