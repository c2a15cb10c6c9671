"""The command line: every error is one ``steerlens: error:`` line and a non-zero exit, and
output paths and every other input are checked before any model is loaded."""

from __future__ import annotations

import errno
import tempfile
import time

import pytest
import torch

import steerlens
from steerlens import cli
from steerlens.loading import model as model_mod

OPTIMIZE = ["optimize", "--prompt", "hi", "--raw-prompt", "--promote", " a", "--layer", "1"]


def one_error_line(capsys, *, before_loading: bool = False) -> str:
    """The error line; only the device banner and notes (one line each) may come before it."""
    err = capsys.readouterr().err
    assert err.endswith("\n"), err
    *info, error = err.splitlines()
    assert error.startswith("steerlens: error: "), err
    assert all(line.startswith(("steerlens: device ", "steerlens: note: ")) for line in info), err
    if before_loading:
        assert not info, err  # refused before the banner, which comes just before loading
    return error + "\n"


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
    err = capsys.readouterr().err.splitlines()  # no warnings: the banner, then maybe a note
    assert err[0].startswith("steerlens: device cpu, ") and len(err) <= 2
    assert all(line.startswith("steerlens: note: ") for line in err[1:]), err


# Every other input is checked before loading too, and errors quote the user's text.


def test_optimize_without_a_completion_fails_before_loading(no_model, tmp_path, capsys):
    argv = ["optimize", "--prompt", "Tell me about cats.", "-o", str(tmp_path / "v.safetensors")]
    assert cli.main(argv) == 2
    err = one_error_line(capsys, before_loading=True)
    assert "--prompt 'Tell me about cats.'" in err and "--promote" in err
    assert "<|im_start|>" not in err and "promote=[" not in err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--prompt", "", "--promote", "a"], "--prompt '' is empty"),
        (["--prompt", " \n", "--promote", "a"], "is empty; give the user message"),
        (["--prompt", "hi", "--promote", ""], "--promote '' is empty"),
        (["--prompt", "hi", "--promote", "a", "--suppress", ""], "--suppress '' is empty"),
        (["--prompt", "hi", "--promote", "a", "--lr", "0"], "--lr must be > 0"),
        (["--prompt", "hi", "--promote", "a", "--lr", "nan"], "--lr must be > 0"),
        (["--prompt", "hi", "--promote", "a", "--max-steps", "-1"], "--max-steps must be >= 0"),
        (["--prompt", "hi", "--promote", "a", "--seed", "-1"], "--seed must be >= 0"),
        (["--prompt", "hi", "--promote", "a", "--layer", "-1"], "--layer must be >= 0"),
        (["--prompt", "hi", "--promote", "a", "--norm-cap", "-1"], "--norm-cap must be > 0"),
    ],
)
def test_optimize_inputs_fail_before_loading(no_model, tmp_path, capsys, options, message):
    assert cli.main(["optimize", *options, "-o", str(tmp_path / "v.safetensors")]) == 2
    assert message in one_error_line(capsys, before_loading=True)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["generate", "hi", " "], "prompt 2 (' ') is empty"),
        (["generate", "hi", "--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
        (["generate", "hi", "--temperature", "-1"], "--temperature must be >= 0"),
        (["generate", "hi", "--strength", "2"], "pass --vector FILE too"),
        (["generate", "hi", "--vector", "no-such-file.safetensors"], "no-such-file"),
        (["demo", "--max-steps", "-1"], "--max-steps must be >= 0"),
    ],
)
def test_generate_and_demo_inputs_fail_before_loading(no_model, tmp_path, capsys, argv, message):
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        assert cli.main(argv) != 0
    assert message in one_error_line(capsys, before_loading=True)


@pytest.mark.parametrize(
    "argv",
    [
        ["optimize"],
        ["generate", "hi", "--threads", "0"],
        ["generate", "hi", "--mode", "scale"],
        ["optimize", "--prompt", "hi", "--layer", "eight", "-o", "v.safetensors"],
        ["frobnicate"],
    ],
)
def test_usage_errors_are_one_line_with_exit_2(no_model, capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    err = one_error_line(capsys, before_loading=True)
    assert "--help" in err


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


# Found by benchmarks/reliability_sweep.py: inputs checked before loading, named precisely.


def test_sweep_refuses_a_non_finite_coherence_budget_before_loading(no_model, tmp_path, capsys):
    vector = steerlens.SteeringVector({1: torch.ones(64)}, "steerlens/tiny-llama")
    path = vector.save(tmp_path / "v.safetensors")
    argv = ["sweep", str(path), "--prompt", "x", "--judge-any-of", "y", "--max-nll-ratio", "nan"]
    assert cli.main(argv) == 2
    assert "--max-nll-ratio must be > 0 and finite, got nan" in one_error_line(capsys)


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"\n  \n", "has no prompts (it is empty or only blank lines)"), (b"\xff\xfe", "not UTF-8")],
)
def test_caa_names_a_prompt_file_without_prompts(no_model, tmp_path, capsys, content, message):
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(content)
    argv = ["caa", "--positive-file", str(prompts), "--negative", "x"]
    assert cli.main([*argv, "-o", str(tmp_path / "v.safetensors")]) == 2
    err = one_error_line(capsys, before_loading=True)
    assert message in err and "prompts.txt" in err
