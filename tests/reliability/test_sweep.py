"""The reliability sweep (benchmarks/reliability_sweep.py) finds nothing silent, nothing
crashed, nothing lost: over 300 bad inputs and faults on the tiny model, each correct or a
clear error. About a minute, so it runs with the slow tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SWEEP = Path(__file__).parents[2] / "benchmarks" / "reliability_sweep.py"


@pytest.mark.slow
def test_the_sweep_finds_no_failures(tmp_path):
    out = tmp_path / "sweep.json"
    run = subprocess.run(
        [sys.executable, str(SWEEP), "--out", str(out)], capture_output=True, text=True, check=False
    )
    assert out.exists(), run.stdout + run.stderr
    table = json.loads(out.read_text())["cases"]
    failures = [r for r in table if r["outcome"] not in ("correct", "clear error", "not run")]
    # Only cases needing an optional package that cannot be imported here are not run.
    assert all(r["area"] == "interop" for r in table if r["outcome"] == "not run")
    assert sum(r["outcome"] != "not run" for r in table) >= 121
    assert not failures, "\n".join(f"{r['area']}: {r['case']}: {r['message']}" for r in failures)
    assert run.returncode == 0, run.stdout[-2000:]
