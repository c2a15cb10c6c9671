"""Vectors, interventions and positions: values steering cannot use are refused where they are
built or applied, never turned into NaN logits or a plan that steers nothing (issue "Nothing
silent, nothing lost"; cases found by benchmarks/reliability_sweep.py)."""

from __future__ import annotations

import pytest
import torch

import steerlens
from steerlens import Positions, Steering, SteeringVector
from steerlens.errors import NonFiniteError, SpecError, VectorFileError, VectorShapeError
from steerlens.steering.interventions import Add, check_vector

MODEL_ID = "steerlens/tiny-llama"


def test_a_vector_whose_norm_overflows_is_refused(tiny):
    # Every entry is finite, but the norm is inf: the steered activations would be inf.
    huge = torch.full((64,), 3e38)
    with pytest.raises(NonFiniteError, match=r"norm inf .*Scale it down"):
        SteeringVector.from_tensor(huge, layer=1, model=tiny)
    with pytest.raises(NonFiniteError, match="norm inf"):
        check_vector(huge)
    with pytest.raises(NonFiniteError, match="norm inf"):
        SteeringVector({1: torch.ones(64)}, MODEL_ID) * 1e38


def test_a_meta_tensor_is_refused_by_name():
    with pytest.raises(VectorShapeError, match="'meta' device"):
        Add(torch.ones(64, device="meta"))


@pytest.mark.parametrize(
    ("vector", "match"),
    [
        (torch.full((64,), float("nan")), "NaN/inf"),
        (torch.ones(64, dtype=torch.complex64), "complex64"),
        (torch.ones(64, dtype=torch.int64), "int64"),
        (torch.ones(2, 64), "1-D"),
    ],
)
def test_a_steering_tensor_steerlens_cannot_use_is_refused_before_generating(tiny, vector, match):
    with pytest.raises((NonFiniteError, VectorShapeError), match=match):
        steerlens.generate(tiny, "the cat", Steering(vector, layer=1), max_new_tokens=2)


def test_an_unknown_positions_kind_is_refused():
    # mask() would treat it as an empty index list and steer nothing.
    with pytest.raises(SpecError, match="unknown positions kind 'xyz'"):
        Positions(kind="xyz")  # type: ignore[arg-type]
    assert Positions(kind="prompt").describe() == "prompt tokens"


@pytest.mark.parametrize(("device", "match"), [("cuda", "cuda"), ("tpu", "unknown device 'tpu'")])
def test_moving_a_vector_to_a_device_this_machine_lacks(tmp_path, device, match):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    v = SteeringVector({1: torch.ones(64)}, MODEL_ID)
    with pytest.raises(SpecError, match=match):
        v.to(device)
    path = v.save(tmp_path / "v.safetensors")
    with pytest.raises(SpecError, match=match):
        SteeringVector.load(path, device=device)
    assert SteeringVector.load(path, device="cpu").layers == [1]


@pytest.mark.parametrize("path", [None, 5, b"v.safetensors"])
def test_a_load_path_that_is_not_a_path(path):
    with pytest.raises(VectorFileError, match=r"must be a str or pathlib\.Path"):
        SteeringVector.load(path)  # type: ignore[arg-type]
