"""In CI (``make test`` sets STEERLENS_REQUIRE_INTEGRATIONS=1) the optional libraries whose
tests skip when missing must be installed, so that those tests run rather than skip."""

from __future__ import annotations

import importlib
import os

import pytest

from steerlens.interop.libraries import import_repeng

pytestmark = pytest.mark.skipif(
    not os.environ.get("STEERLENS_REQUIRE_INTEGRATIONS"),
    reason="set STEERLENS_REQUIRE_INTEGRATIONS=1 to require the optional libraries (CI does)",
)


@pytest.mark.parametrize("module", ["lm_eval.models.hf_steered", "peft", "steering_vectors", "ray"])
def test_the_optional_library_is_installed(module):
    importlib.import_module(module)


def test_repeng_is_installed_and_imports():
    assert hasattr(import_repeng(), "ControlVector")
