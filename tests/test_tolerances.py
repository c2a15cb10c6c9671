"""The premises of tests/tolerances.py's bounds, checked on the models they are about."""

from __future__ import annotations

import pytest
import torch
from tolerances import TINY_GAIN, rounding_gain

from steerlens import runtime
from steerlens.testing import tiny_model


@pytest.mark.parametrize("n_layers", [2, 3, 4, 8])  # the depths the suite's tests use
def test_the_tiny_model_amplifies_rounding_less_than_its_gain(n_layers):
    model = tiny_model(n_layers=n_layers).to(torch.float64)
    tokens = torch.tensor([runtime.encode(model, "the cat sat on the mat, a dog ran far away")])
    assert rounding_gain(model, tokens) < TINY_GAIN
