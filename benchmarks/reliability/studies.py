"""Cases: studies (spec files, study folders, resuming, interruption, damage)."""

# mypy: ignore-errors
# (the cases pass wrong types on purpose)

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from steerlens import SteeringVector
from steerlens.evaluation import StringMatchJudge
from steerlens.studies import StudyFolder, StudySpec, calibrate, run_study
from steerlens.studies.folder import writer_lock
from steerlens.studies.serial_backend import SerialBackend

from .helpers import SPEC
from .runner import Ctx, cases

# Specs that are valid TOML but not a valid study, and what the error must name.
BAD_SPECS = [
    ("an unknown key", SPEC + "colour = 'red'\n", "colour"),
    ("layers = []", SPEC.replace("[0, 1]", "[]"), "layers"),
    ("layers = ['a']", SPEC.replace("[0, 1]", '["a"]'), "layers"),
    ("no examples", SPEC.split("[[examples]]")[0], "example"),
    ("lr = 'fast'", SPEC.replace("max_steps = 2", "max_steps = 2\nlr = 'fast'"), "lr"),
    ("max_steps = -3", SPEC.replace("max_steps = 2", "max_steps = -3"), "max_steps"),
    ("an unknown objective", "objectives = ['happiness']\n" + SPEC, "happiness"),
]


def _toml(text: str) -> Callable[[Ctx], Any]:
    """Load a spec file ``spec.toml`` holding ``text``."""

    def load(ctx: Ctx) -> Any:
        f = ctx.path("spec.toml")
        f.write_text(text)
        return StudySpec.from_toml(f)

    return load


def _binary_toml(ctx: Ctx) -> Any:
    f = ctx.path("b.toml")
    f.write_bytes(b"\xff\xfe\x00")
    return StudySpec.from_toml(f)


def _unknown_model(ctx: Ctx) -> Any:
    spec = _toml(SPEC.replace('"tiny"', '"no/such-model"'))(ctx)
    return run_study(spec, ctx.path("s"), progress=False, evaluate=False)


def _run(ctx: Ctx, folder: Path, **kw: Any) -> Any:
    """Run the study `SPEC` into ``folder`` on the tiny model, without evaluation."""
    kw.setdefault("backend", SerialBackend(model=ctx.tiny))
    return run_study(_toml(SPEC)(ctx), folder, progress=False, evaluate=False, **kw)


def _resume(ctx: Ctx) -> Any:
    folder = ctx.path("s")
    first = _run(ctx, folder)
    second = _run(ctx, folder)
    table = second.table()
    return table["status"].iloc[0], table["status"].iloc[-1], len(first.finished())


def _missing_layer(ctx: Ctx) -> Any:
    spec = _toml(SPEC.replace("[0, 1]", "[0, 9]"))(ctx)
    return run_study(spec, ctx.path("s"), backend=SerialBackend(model=ctx.tiny), progress=False)


def _file_as_folder(ctx: Ctx) -> Any:
    f = ctx.path("study")
    f.write_text("x")
    return _run(ctx, f)


def _foreign_folder(ctx: Ctx) -> Path:
    folder = ctx.path("mine")
    folder.mkdir()
    (folder / "thesis.tex").write_text("precious")
    return folder


def _foreign_kept(ctx: Ctx) -> Path:
    folder = _foreign_folder(ctx)
    with contextlib.suppress(Exception):
        _run(ctx, folder)
    return folder


def _still_precious(folder: Path) -> bool | str:
    path = folder / "thesis.tex"
    return (path.is_file() and path.read_text() == "precious") or "lost"


def _changed(ctx: Ctx) -> Any:
    folder = ctx.path("s")
    _run(ctx, folder)
    other = _toml(SPEC.replace("max_steps = 2", "max_steps = 3"))(ctx)
    return run_study(
        other, folder, backend=SerialBackend(model=ctx.tiny), progress=False, evaluate=False
    )


def _in_new_folder(**kw: Any) -> Callable[[Ctx], Any]:
    return lambda c: _run(c, c.path("s"), **kw)


def _interrupted(ctx: Ctx) -> Any:
    class Dies(SerialBackend):
        def train(self, spec: Any, units: Any, batch_size: int) -> Any:
            for i, item in enumerate(super().train(spec, units, 1)):
                if i == 1:
                    raise KeyboardInterrupt
                yield item

    folder = ctx.path("s")
    with contextlib.suppress(KeyboardInterrupt):
        _run(ctx, folder, backend=Dies(model=ctx.tiny))
    return StudyFolder(folder).finished()


def _damaged_db(ctx: Ctx) -> Any:
    folder = ctx.path("s")
    _run(ctx, folder)
    for f in folder.iterdir():
        if f.suffix in (".db", ".sqlite", ".sqlite3"):
            f.write_bytes(b"not a database at all" * 10)
    return _run(ctx, folder)


def _in_use(ctx: Ctx) -> Any:
    folder = ctx.path("busy")
    with writer_lock(folder):  # as another run holds it
        return _run(ctx, folder)


def _calibrate(**budget: Any) -> Callable[[Ctx], Any]:
    def run(ctx: Ctx) -> Any:
        vector = SteeringVector.from_tensor(torch.ones(64), layer=1, model=ctx.tiny)
        judge = StringMatchJudge(["x"])
        return calibrate(ctx.tiny, vector, ["hi"], judge, max_new_tokens=2, **budget)

    return run


# (name, run, ok: None where only an error is right, what the error must name)
CASES = cases(
    "studies",
    [
        (
            "from_toml of a missing file",
            lambda c: StudySpec.from_toml(c.path("none.toml")),
            None,
            "none.toml",
        ),
        ("from_toml of a folder", lambda c: StudySpec.from_toml(c.path()), None, "folder"),
        ("from_toml of garbage", _toml("this is = = not toml ["), None, "toml"),
        ("from_toml of binary bytes", _binary_toml, None, "b.toml"),
        *[(name, _toml(text), None, mention) for name, text, mention in BAD_SPECS],
        ("an unknown model", _unknown_model, None, "no/such-model"),
        ("run_study works and resumes", _resume, lambda r: r == ("done", "done", 2)),
        ("a layer the model lacks", _missing_layer, None, "9"),
        ("the folder is a file", _file_as_folder, None, "study"),
        ("a folder of another tool", lambda c: _run(c, _foreign_folder(c)), None, "folder"),
        ("a folder of another tool is left untouched", _foreign_kept, _still_precious),
        ("another spec in the same folder", _changed, None, "spec"),
        ("backend='bogus'", _in_new_folder(backend="bogus"), None, "bogus"),
        ("batch_size=0", _in_new_folder(batch_size=0), None, "batch_size"),
        ("if_changed='maybe'", _in_new_folder(if_changed="maybe"), None, "maybe"),
        (
            "Ctrl-C mid-study keeps the finished unit",
            _interrupted,
            lambda done: len(done) == 1 or "lost",
        ),
        ("a damaged study database", _damaged_db, None, "damaged"),
        ("a folder in use by another run", _in_use, None, "in use by process"),
        ("calibrate(max_nll_ratio=-1)", _calibrate(max_nll_ratio=-1), None, "max_nll_ratio"),
        ("calibrate(min_distinct=2)", _calibrate(min_distinct=2), None, "min_distinct"),
        ("calibrate(max_kl=-0.1)", _calibrate(max_kl=-0.1), None, "max_kl"),
    ],
)
