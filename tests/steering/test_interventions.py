"""The interventions' formulas, in float64.

Tolerance (tests/tolerances.py): each formula here is at most two dot products of D terms
(each within D u of the sum of its terms' magnitudes, which Cauchy-Schwarz bounds by the
norms), a squared norm ``v . v`` (D u; for a rescaled unit ``v``, its distance from 1 within
2 `rescale_bound`) and a few elementwise roundings, computed in two groupings: within
``(4 D + 13) u`` times the scale of the terms involved (`_assert_close`). A formula that is the
same operations on the same inputs is compared exactly.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tolerances import U64

from steerlens.errors import NonFiniteError, VectorShapeError
from steerlens.steering.interventions import Ablate, Add, Affine, Clamp

D = 16
seeds = st.integers(min_value=0, max_value=2**31 - 1)
strengths = st.floats(min_value=-50, max_value=50, allow_nan=False)


FORMULA = (4 * D + 13) * U64  # relative to the terms' scale (module docstring)


def _rand(seed, *shape):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _assert_close(got, want, scale):
    """``got`` and ``want`` within ``FORMULA`` times ``scale`` (broadcast)."""
    gap = (got - want).abs()
    bound = FORMULA * torch.as_tensor(scale, dtype=torch.float64)
    assert bool((gap <= bound).all()), float((gap / bound).max())


def _norms(x):
    """Each row's norm, broadcast against its coordinates."""
    return x.norm(dim=-1, keepdim=True)


@settings(max_examples=50, deadline=None)
@given(seed=seeds, a=strengths)
def test_clamp_sets_projection_to_strength(seed, a):
    v = _rand(seed, D)
    v = v / v.norm()
    x = _rand(seed + 1, 2, 3, D)
    out = Clamp(v).apply(x, a)
    scale = _norms(x) + abs(a)
    _assert_close(out @ v, torch.full((2, 3), a, dtype=torch.float64), scale[..., 0])
    # The orthogonal part is untouched.
    _assert_close(out - (out @ v)[..., None] * v, x - (x @ v)[..., None] * v, scale)


@settings(max_examples=50, deadline=None)
@given(seed=seeds)
def test_ablate_leaves_nothing_along_v(seed):
    v = _rand(seed, D) * 3.0  # not unit: the direction is what matters
    x = _rand(seed + 1, 2, 5, D)
    out = Ablate(v).apply(x)
    _assert_close(out @ v, torch.zeros(2, 5, dtype=torch.float64), _norms(x)[..., 0] * v.norm())


@settings(max_examples=50, deadline=None)
@given(seed=seeds)
def test_strength_zero_is_identity(seed):
    v = _rand(seed, D)
    x = _rand(seed + 1, 1, 4, D)
    assert torch.equal(Add(v).apply(x, 0.0), x)
    left, right = _rand(seed + 2, 2, D), _rand(seed + 3, 2, D)
    assert torch.equal(Affine(left, right, v).apply(x, 0.0), x)


@settings(max_examples=30, deadline=None)
@given(seed=seeds, a=strengths)
def test_add_and_clamp_formulas(seed, a):
    v = _rand(seed, D)
    x = _rand(seed + 1, 3, D)
    assert torch.equal(Add(v).apply(x, a), x + a * v)  # the formula itself
    expected = x - torch.outer(x @ v, v) / (v @ v) + a * v
    _assert_close(Clamp(v).apply(x, a), expected, _norms(x) + abs(a) * v.norm())


def test_affine_formula():
    left, right, bias = _rand(0, 3, D), _rand(1, 3, D), _rand(2, D)
    x = _rand(3, 2, 4, D)
    m = left.T @ right  # M = L^T R
    expected = x + x @ m.T + bias
    # Another association of the product: its terms are at most |x| |R^T| |L| entrywise.
    scale = x.abs() + (x.abs() @ right.abs().T) @ left.abs() + bias.abs()
    _assert_close(Affine(left, right, bias).apply(x), expected, scale)
    assert Affine(left, right).rank == 3


def test_bad_vectors_are_refused():
    with pytest.raises(NonFiniteError, match="NaN"):
        Add(torch.tensor([1.0, float("nan")]))
    with pytest.raises(NonFiniteError, match="NaN"):
        Add(torch.tensor([1.0, float("inf")]))
    with pytest.raises(VectorShapeError, match="1-D"):
        Add(torch.ones(2, 3))
    with pytest.raises(NonFiniteError, match="non-zero"):
        Clamp(torch.zeros(4))
    with pytest.raises(VectorShapeError, match="equal shape"):
        Affine(torch.ones(2, 4), torch.ones(3, 4))
    with pytest.raises(NonFiniteError, match="non-zero"):
        Ablate(torch.zeros(4))


@settings(max_examples=30, deadline=None)
@given(seed=seeds, a=strengths)
def test_ablate_removes_a_fraction_of_the_component(seed, a):
    v = _rand(seed, D)
    x = _rand(seed + 1, 2, D)
    expected = x - a * torch.outer(x @ v, v) / (v @ v)
    _assert_close(Ablate(v).apply(x, a), expected, _norms(x) * (1 + abs(a)))


def test_minus_strength_is_the_intervention_of_minus_v():
    """Negated datapoints are steered at -strength; that must equal steering with -v.

    Exactly: rounding to nearest is symmetric in sign, so each product and dot product with
    ``-v`` is exactly minus the one with ``v``, and ``x + (-1) y`` is ``x - y``."""
    v, x = _rand(0, D), _rand(1, 2, 3, D)
    left, right = _rand(2, 2, D), _rand(3, 2, D)
    assert torch.equal(Add(v).apply(x, -2.0), Add(-v).apply(x, 2.0))
    assert torch.equal(Clamp(v).apply(x, -2.0), Clamp(-v).apply(x, 2.0))
    neg = Affine(left, right, v).apply(x, -1.0)
    assert torch.equal(neg, Affine(-left, right, -v).apply(x))
    assert torch.equal(neg, x - (x @ right.T) @ left - v)
