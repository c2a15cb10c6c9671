"""A save that fails part-way (a full disk, a file-size limit) says which file, how much was
written, and leaves the file saved before intact."""

from __future__ import annotations

import errno
import subprocess
import sys

import pytest

from steerlens.errors import OutputPathError
from steerlens.io.atomic import atomic_path


def test_a_write_that_fails_part_way_names_the_file_and_keeps_the_old_one(tmp_path):
    target = tmp_path / "vector.gguf"
    target.write_bytes(b"the old file")
    with pytest.raises(OutputPathError, match=r"vector.gguf' failed after 5 bytes: No space"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"12345")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert target.read_bytes() == b"the old file"
    assert [p.name for p in tmp_path.iterdir()] == ["vector.gguf"]  # no temporary file left


@pytest.mark.skipif(sys.platform == "win32", reason="file-size limits are POSIX rlimits")
def test_a_gguf_export_under_a_file_size_limit_is_a_clear_error(tmp_path):
    """Under ``ulimit -f`` the write stops with EFBIG part-way (Python ignores SIGXFSZ)."""
    out = tmp_path / "v.gguf"
    out.write_bytes(b"old")
    code = (
        "import resource, sys, torch\n"
        "from steerlens import SteeringVector\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))\n"
        "v = SteeringVector({l: torch.ones(4096) for l in range(2, 10)}, model_id='m')\n"
        "v.to_gguf(sys.argv[1])\n"
    )
    run = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True)
    assert run.returncode != 0
    assert "OutputPathError" in run.stderr and "failed after" in run.stderr, run.stderr[-800:]
    assert out.read_bytes() == b"old"
