"""Progress where no bar is shown: a long call into a pipe or log reports in whole lines."""

from __future__ import annotations

import importlib
import io
import types

from steerlens import runtime
from steerlens.runtime.progress import ProgressLines

# The module, not runtime's function of the same name.
progress_mod = importlib.import_module("steerlens.runtime.progress")


def test_a_pipe_gets_lines_not_a_hidden_bar(monkeypatch):
    monkeypatch.setattr(progress_mod, "show_progress", lambda enabled: bool(enabled))
    assert isinstance(runtime.progress(3, "study"), ProgressLines)
    assert not isinstance(runtime.progress(3, "study", enabled=False), ProgressLines)


def test_lines_come_at_most_every_interval_and_a_last_one_at_the_end(monkeypatch):
    clock = iter([0.0, 5.0, 25.0, 30.0, 31.0, 31.0])
    monkeypatch.setattr(progress_mod.time, "monotonic", lambda: next(clock))
    out = io.StringIO()
    lines = ProgressLines(4, "study", every_s=20.0, file=out)  # starts at 0 s
    lines.update()  # 5 s: too soon
    lines.set_postfix_str("unit b")
    lines.update()  # 25 s: a line
    lines.update()  # 30 s: too soon after it
    lines.update(1)  # 31 s
    lines.close()
    assert out.getvalue().splitlines() == [
        "study: 2/4 (50%), 25 s [unit b]",
        "study: 4/4 (100%), 31 s [unit b]",
    ]


def test_a_short_call_writes_nothing():
    out = io.StringIO()
    with ProgressLines(2, "score", every_s=60.0, file=out) as lines:
        lines.update(2)
    assert out.getvalue() == ""


def test_a_loaded_ipykernel_module_is_not_a_notebook(monkeypatch):
    # A test run that executes notebooks (nbclient) imports ipykernel without being one; the
    # default must stay "no bar" there, or every later doctest prints a bar to stdout.
    import ipykernel  # noqa: F401

    monkeypatch.setattr(progress_mod.sys.stderr, "isatty", lambda: False, raising=False)
    assert not progress_mod.in_notebook()
    assert isinstance(runtime.progress(3, "study"), ProgressLines)


def test_a_running_kernel_is_a_notebook(monkeypatch):
    import IPython

    shell = types.SimpleNamespace(config={"IPKernelApp": {}})
    monkeypatch.setattr(IPython, "get_ipython", lambda: shell)
    assert progress_mod.in_notebook()
