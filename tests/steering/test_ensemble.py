"""Ensembles of one-shot vectors: normalise, average, rescale."""

import math

import pytest
import torch

from steerlens.errors import InputError, LayerError, ModelMismatchError, NonFiniteError, SpecError
from steerlens.steering.ensemble import ensemble
from steerlens.steering.vector import SteeringVector


def _vec(t, layer=1, model_id="m", **kw):
    return SteeringVector.from_tensor(t, layer=layer, model_id=model_id, **kw)


def _cos(a, b):
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def test_averaging_noisy_copies_recovers_a_planted_direction_better_than_any_member():
    g = torch.Generator().manual_seed(0)
    truth = torch.randn(64, generator=g)
    truth /= truth.norm()
    # Each one-shot vector: the shared direction plus its own example's noise, at its own norm.
    members = [
        _vec((truth + 1.2 * torch.randn(64, generator=g) / 8) * (2 + k), layer=3) for k in range(12)
    ]
    combined = ensemble(members)
    best_member = max(_cos(m.vector, truth) for m in members)
    assert _cos(combined.vector, truth) > best_member
    assert best_member < 0.8 < 0.9 < _cos(combined.vector, truth)
    assert combined.norm() == pytest.approx(sum(m.norm() for m in members) / len(members))


def test_members_are_normalised_first_so_a_long_one_does_not_dominate():
    big = _vec(torch.tensor([100.0, 0.0]))
    small = _vec(torch.tensor([0.0, 1.0]))
    v = ensemble([big, small], norm=2.0)
    assert v.vector.tolist() == pytest.approx([math.sqrt(2), math.sqrt(2)])
    assert v.provenance["member_norms"] == {"1": [100.0, 1.0]}
    assert v.provenance["member_cosines"]["1"] == pytest.approx([math.sqrt(0.5)] * 2)


def test_every_layer_is_averaged_and_the_members_are_recorded():
    a = SteeringVector(
        {0: torch.tensor([1.0, 0.0]), 2: torch.tensor([0.0, 2.0])},
        model_id="m",
        provenance={"method": "optimize_vector", "prompt": "a"},
    )
    b = SteeringVector(
        {0: torch.tensor([3.0, 0.0]), 2: torch.tensor([0.0, 4.0])},
        model_id="m",
        provenance={"method": "optimize_vector", "prompt": "b"},
    )
    v = ensemble([a, b])
    assert v.layers == [0, 2]
    assert v.directions[0].tolist() == pytest.approx([2.0, 0.0])
    assert v.directions[2].tolist() == pytest.approx([0.0, 3.0])
    assert [m["prompt"] for m in v.provenance["members"]] == ["a", "b"]
    assert v.provenance["norm"] == "mean" and v.provenance["n_members"] == 2
    assert v.metadata()["provenance"]["method"] == "ensemble"  # plain JSON data


def test_one_vector_is_its_own_ensemble():
    v = _vec(torch.tensor([3.0, 4.0]))
    assert ensemble([v]).vector.tolist() == pytest.approx([3.0, 4.0])


def test_a_non_additive_kind_is_kept_for_export():
    a = _vec(torch.tensor([1.0, 0.0]), provenance={"steering": "clamp"})
    b = _vec(torch.tensor([0.0, 1.0]), provenance={"steering": "clamp"})
    assert ensemble([a, b]).provenance["steering"] == "clamp"


def test_refusals():
    a = _vec(torch.tensor([1.0, 0.0]))
    with pytest.raises(ModelMismatchError, match="member 1 was made on 'other'"):
        ensemble([a, _vec(torch.tensor([1.0, 0.0]), model_id="other")])
    with pytest.raises(ModelMismatchError, match="d_model 3"):
        ensemble([a, _vec(torch.tensor([1.0, 0.0, 0.0]))])
    with pytest.raises(LayerError, match=r"member 1 has layers \[2\] but member 0 has \[1\]"):
        ensemble([a, _vec(torch.tensor([1.0, 0.0]), layer=2)])
    affine = SteeringVector(
        {1: torch.tensor([1.0, 0.0])},
        model_id="m",
        affine={1: (torch.ones(1, 2), torch.ones(1, 2))},
    )
    with pytest.raises(SpecError, match="affine parts"):
        ensemble([a, affine])
    with pytest.raises(SpecError, match="trained with clamp steering but member 0 with add"):
        ensemble([a, _vec(torch.tensor([1.0, 0.0]), provenance={"steering": "clamp"})])
    with pytest.raises(InputError, match="no vectors"):
        ensemble([])
    with pytest.raises(InputError, match="list of vectors"):
        ensemble(a)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="member 1 is a Tensor"):
        ensemble([a, torch.ones(2)])  # type: ignore[list-item]
    with pytest.raises(NonFiniteError, match="cancel out"):
        ensemble([a, -a])
    with pytest.raises(NonFiniteError, match=r"member\(s\) \[1\] have a zero direction"):
        ensemble([a, _vec(torch.zeros(2))])
    for bad in (0.0, -1.0, float("inf"), "max", True):
        with pytest.raises(SpecError, match="norm must be"):
            ensemble([a], norm=bad)  # type: ignore[arg-type]
