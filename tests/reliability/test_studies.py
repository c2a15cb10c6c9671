"""Study spec files that are not spec files get steerlens errors, not Python's (issue "Nothing
silent, nothing lost"; cases found by benchmarks/reliability_sweep.py)."""

from __future__ import annotations

import pytest

from steerlens.errors import InputError, SpecError
from steerlens.studies import StudySpec


def test_a_folder_as_the_spec_file_is_named_as_a_folder(tmp_path):
    with pytest.raises(InputError, match="is a folder, not a study spec file"):
        StudySpec.from_toml(tmp_path)


def test_a_binary_spec_file_is_not_toml(tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(SpecError, match=r"is not a TOML text file \(not UTF-8"):
        StudySpec.from_toml(spec)
