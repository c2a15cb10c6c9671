"""The command line: every error is one ``steerlens: error:`` line and a non-zero exit, and
output paths are checked before any model is loaded."""

from __future__ import annotations

import errno
import tempfile
import time

import pytest
import torch

import steerlens
from steerlens import cli
from steerlens import model as model_mod

OPTIMIZE = ["optimize", "--prompt", "hi", "--raw-prompt", "--promote", " a", "--layer", "1"]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("steerlens: error: ") and err.endswith("\n"), err
    assert err.count("\n") == 1, err
    return err


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if a model is loaded."""
    monkeypatch.setattr(model_mod, "load_model", lambda *a, **k: pytest.fail("model loaded"))


@pytest.fixture
def tiny_loaded(monkeypatch, tiny):
    monkeypatch.setattr(model_mod, "load_model", lambda *a, **k: tiny)


# Case 3: output paths are refused before any work.


def test_optimize_refuses_a_folder_as_output_before_loading(no_model, tmp_path, capsys):
    assert cli.main([*OPTIMIZE, "-o", str(tmp_path)]) == 2
    err = one_error_line(capsys)
    assert "is a folder" in err and str(tmp_path) in err and "vector.safetensors" in err


def test_optimize_refuses_an_output_under_a_file(no_model, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("x")
    assert cli.main([*OPTIMIZE, "-o", str(tmp_path / "notes.txt" / "v.safetensors")]) == 2
    err = one_error_line(capsys)
    assert "notes.txt' is a file, not a folder" in err


def test_optimize_refuses_a_folder_it_cannot_write(no_model, tmp_path, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    out = tmp_path / "new" / "v.safetensors"
    assert cli.main([*OPTIMIZE, "-o", str(out)]) == 2
    err = one_error_line(capsys)
    assert f"cannot create files in {str(tmp_path)!r} (Permission denied)" in err


def test_demo_refuses_a_file_as_its_output_folder(no_model, tmp_path, capsys):
    (tmp_path / "demo").write_text("x")
    assert cli.main(["demo", "--out", str(tmp_path / "demo")]) == 2
    assert "is a file, but a folder is needed" in one_error_line(capsys)


def test_demo_refuses_a_folder_where_it_writes_a_file(no_model, tmp_path, capsys):
    (tmp_path / "demo" / "demo_report.html").mkdir(parents=True)
    assert cli.main(["demo", "--out", str(tmp_path / "demo")]) == 2
    assert "demo_report.html': it is a folder" in one_error_line(capsys)


def test_optimize_creates_missing_folders_and_saves(tiny_loaded, tmp_path, capsys):
    out = tmp_path / "a" / "b" / "v.safetensors"
    args = [*OPTIMIZE, "--max-steps", "2", "--no-progress", "-o", str(out)]
    assert cli.main(args) == 0
    assert steerlens.SteeringVector.load(out).layers == [1]
    assert capsys.readouterr().err == ""


# Case 2: errors that are not steerlens errors are one line too.


@pytest.mark.parametrize("device", ["tpu", "cuda", "cuda:7"])
def test_a_device_this_machine_lacks_is_one_line(monkeypatch, capsys, device):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(model_mod, "load_embedded_model", lambda **k: pytest.fail("loaded"))
    assert cli.main(["generate", "hi", "--device", device]) == 2
    err = one_error_line(capsys)
    assert f"'{device}'" in err and "'cpu'" in err


def test_an_unknown_hub_model_offline_is_one_line_and_fast(monkeypatch, capsys):
    monkeypatch.setattr(model_mod, "hub_unreachable", lambda timeout=5.0: "no network (test)")
    start = time.monotonic()
    code = cli.main(["generate", "hi", "--model", "no-such-org/no-such-model", "--device", "cpu"])
    assert code == 2 and time.monotonic() - start < 20
    err = one_error_line(capsys)
    assert "'no-such-org/no-such-model'" in err and "not in the local Hugging Face cache" in err


def test_ctrl_c_exits_130_with_one_line(monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(model_mod, "load_model", interrupted)
    assert cli.main(["generate", "hi"]) == 130
    assert "interrupted" in one_error_line(capsys)


@pytest.mark.parametrize(
    ("code", "reason", "fix"),
    [
        (errno.ENOSPC, "No space left on device", "free some disk space"),
        (errno.EACCES, "Permission denied", "check the permissions"),
    ],
)
def test_os_errors_while_saving_are_one_line(
    tiny_loaded, monkeypatch, tmp_path, capsys, code, reason, fix
):
    out = tmp_path / "v.safetensors"

    def fail(self, path):
        raise OSError(code, reason, str(path))

    monkeypatch.setattr(steerlens.SteeringVector, "save", fail)
    assert cli.main([*OPTIMIZE, "--max-steps", "1", "--no-progress", "-o", str(out)]) == 1
    err = one_error_line(capsys)
    assert reason in err and str(out) in err and fix in err


def test_an_unexpected_error_is_one_line(monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("first line\nsecond line")

    monkeypatch.setattr(model_mod, "load_model", broken)
    monkeypatch.delenv("STEERLENS_TRACEBACK", raising=False)
    assert cli.main(["generate", "hi"]) == 1
    err = one_error_line(capsys)
    assert "unexpected RuntimeError: first line second line" in err
    assert "STEERLENS_TRACEBACK=1" in err
