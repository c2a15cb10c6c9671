"""A reliability sweep: bad inputs and faults against the public API and the command line.

Each case is run on the tiny model (offline, fast) and classified automatically:

- ``correct``: a valid result that the case defines as correct;
- ``clear error``: a `SteerlensError` (the CLI: a non-zero exit and one ``steerlens: error:``
  line) whose message is non-empty and names the problem (the case's ``mentions``);

or a failure:

- ``raw error``: any other exception (or a steerlens error whose message misses the problem);
- ``silent``: a result that is not what the case defines as correct, with no error (also: a
  case that left hooks, gradients or changed weights on the shared model);
- ``crash``: the process died or hung;
- ``lost``: finished work or an existing file destroyed.

Cases run in a worker process, so a crash loses one case, not the sweep.

Run: .venv/bin/python benchmarks/reliability_sweep.py [--only AREA]
Writes benchmarks/results/reliability_sweep.json (one row per case: area, case, outcome, message).
"""

# mypy: ignore-errors
# (the cases pass wrong types on purpose)

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results" / "reliability_sweep.json"
FAILURES = ("raw error", "silent", "crash", "lost")
NOT_RUN = "not run"
CASE_TIMEOUT_S = 120.0


# --- the framework -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One bad input or fault. ``ok`` is None when only an error is right; otherwise it judges a
    result: True (correct), False (silent) or an outcome name ("lost")."""

    area: str
    name: str
    run: Callable[[Ctx], Any]
    ok: Callable[[Any], bool | str] | None = None
    mentions: tuple[str, ...] = ()
    # Exceptions that are the Python convention here (``v * "x"`` is a TypeError).
    python_ok: tuple[type[BaseException], ...] = ()
    # CLI cases: an error after the model loaded means the work was done and thrown away.
    before_work: bool = False
    # CLI cases that inject a bug: the "unexpected ..." last-resort line is then right.
    injected: bool = False
    # An optional package the case exercises; where it cannot be imported the case is not run.
    needs: str = ""


CASES: list[Case] = []


def add(
    area: str,
    name: str,
    run: Callable[[Ctx], Any],
    ok: Callable[[Any], bool | str] | None = None,
    *mentions: str,
    python_ok: tuple[type[BaseException], ...] = (),
    before_work: bool = False,
    injected: bool = False,
    needs: str = "",
) -> None:
    CASES.append(
        Case(area, name, run, ok, tuple(mentions), python_ok, before_work, injected, needs)
    )


@dataclass
class CliRun:
    rc: int
    out: str
    err: str
    loads: int


@dataclass
class Ctx:
    """What the cases share: models built once per worker, and fresh paths."""

    root: Path
    _models: dict[str, Any] = field(default_factory=dict)
    _n: int = 0

    def model(self, n_layers: int = 2, d_model: int = 64) -> Any:
        key = f"{n_layers}x{d_model}"
        if key not in self._models:
            from steerlens.testing import tiny_model

            self._models[key] = tiny_model(n_layers=n_layers, d_model=d_model)
        return self._models[key]

    @property
    def tiny(self) -> Any:
        return self.model()

    def path(self, name: str = "") -> Path:
        self._n += 1
        folder = self.root / f"case{self._n}"
        folder.mkdir()
        return folder / name if name else folder

    def vector(self, layers: tuple[int, ...] = (1,), d_model: int = 64, **kw: Any) -> Any:
        import torch

        from steerlens import SteeringVector
        from steerlens.testing import TINY_MODEL_ID

        g = torch.Generator().manual_seed(0)
        return SteeringVector(
            {la: torch.randn(d_model, generator=g) for la in layers}, TINY_MODEL_ID, **kw
        )

    def saved(self, **kw: Any) -> Path:
        return self.vector(**kw).save(self.path("v.safetensors"))

    def cli(self, *argv: str) -> CliRun:
        """Run the CLI in this process with the tiny model standing in for every model."""
        from steerlens import cli
        from steerlens.loading import model as model_mod
        from steerlens.runtime.devices import check_device

        loads = []

        def load(*args: Any, **kwargs: Any) -> Any:
            loads.append(args)
            device = kwargs.get("device")
            if device not in (None, "cpu"):
                check_device(device)
            return self.tiny

        original = model_mod.load_model
        model_mod.load_model = load
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    rc = cli.main(list(argv))
                except SystemExit as exc:  # argparse usage errors
                    rc = exc.code if isinstance(exc.code, int) else 1
        finally:
            model_mod.load_model = original
        return CliRun(rc, out.getvalue(), err.getvalue(), len(loads))


def _short(value: Any, width: int = 160) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _missing(message: str, mentions: tuple[str, ...]) -> list[str]:
    low = message.lower()
    return [m for m in mentions if m.lower() not in low]


def _judge(case: Case, result: Any) -> tuple[str, str]:
    if case.ok is None:
        return "silent", f"returned {_short(repr(result), 100)} where an error was due"
    try:
        verdict = case.ok(result)
    except Exception as exc:  # a result so wrong that judging it fails
        return "silent", f"result unusable: {type(exc).__name__}: {_short(exc)}"
    if verdict is True:
        return "correct", _short(repr(result), 100)
    if verdict is False:
        return "silent", f"wrong result: {_short(repr(result), 120)}"
    return str(verdict), _short(repr(result), 120)


def _judge_cli(case: Case, run: CliRun) -> tuple[str, str]:
    if run.rc == 0:
        return _judge(case, run)
    if _is_feature(case):
        return "crash", f"a documented feature failed: rc {run.rc}, stderr: {_short(run.err, 240)}"
    lines = run.err.strip().splitlines()
    errors = [line for line in lines if line.startswith("steerlens: error: ")]
    noise = [
        line
        for line in lines
        if not line.startswith(("steerlens: error: ", "steerlens: device ", "steerlens: note: "))
        and not line.startswith("usage:")
    ]
    if len(errors) != 1 or "Traceback" in run.err:
        return "raw error", f"rc {run.rc}, stderr: {_short(run.err, 240)}"
    message = errors[0].removeprefix("steerlens: error: ")
    if noise:
        return "raw error", f"rc {run.rc}, extra lines: {_short(noise, 160)}"
    if message.startswith("unexpected ") and not case.injected:
        return "raw error", message
    if case.before_work and run.loads:
        return "lost", f"refused only after loading the model (and working): {message}"
    missing = _missing(message, case.mentions)
    if missing:
        return "raw error", f"[message lacks {missing}] {message}"
    return "clear error", message


def _is_feature(case: Case) -> bool:
    """A case with a correct result and no error it accepts: a documented feature, so any
    error is a crash (issue item 1: saving a multi-layer vector failed)."""
    return case.ok is not None and not case.mentions and not case.python_ok


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except Exception:
        return False
    return True


def classify(case: Case, ctx: Ctx) -> tuple[str, str]:
    from steerlens.errors import SteerlensError

    if case.needs and not _importable(case.needs):
        return NOT_RUN, f"needs the optional package {case.needs!r}, which cannot be imported here"

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = case.run(ctx)
        except SteerlensError as exc:
            message = str(exc)
            missing = _missing(message, case.mentions)
            if _is_feature(case):
                return (
                    "crash",
                    f"a documented feature failed: {type(exc).__name__}: {_short(message)}",
                )
            if not message.strip() or missing:
                return "raw error", f"[{type(exc).__name__} lacks {missing}] {_short(message)}"
            return "clear error", f"{type(exc).__name__}: {_short(message, 400)}"
        except case.python_ok as exc:
            return "correct", f"{type(exc).__name__} (the Python convention): {_short(exc)}"
        except (Exception, KeyboardInterrupt) as exc:
            outcome = "crash" if _is_feature(case) else "raw error"
            return outcome, f"{type(exc).__name__}: {_short(exc, 300)}"
    outcome, message = (
        _judge_cli(case, result) if isinstance(result, CliRun) else _judge(case, result)
    )
    notes = sorted({_short(w.message, 80) for w in caught if "steerlens" in str(w.filename)})
    return outcome, message + (f" (warned: {'; '.join(notes)})" if notes else "")


def _model_state(model: Any) -> tuple[Any, bool, bool]:
    import torch

    tokens = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        logits = model(tokens)
    grads = any(p.grad is not None for p in model.parameters())
    trainable = all(p.requires_grad for p in model.parameters())
    return logits, grads, trainable


def _model_left_changed(ctx: Ctx, before: dict[str, Any]) -> str | None:
    """Hooks, gradients or weights a case left behind on a shared model."""
    import torch

    for key, model in ctx._models.items():
        if key not in before:
            continue
        logits, grads, trainable = _model_state(model)
        problems = []
        if not torch.equal(logits, before[key][0]):
            problems.append("changed its outputs (a hook or weights left behind)")
        if grads:
            problems.append("left .grad on its weights")
        if trainable != before[key][2]:
            problems.append("changed requires_grad on its weights")
        if problems:
            model.reset_hooks()
            for p in model.parameters():
                p.grad = None
            return f"the {key} model {' and '.join(problems)}"
    return None


def worker(start: int, log: Path, only: str | None) -> None:
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="steerlens-sweep-") as tmp:
        ctx = Ctx(Path(tmp))
        ctx.tiny  # noqa: B018 - build the model before timing the first case
        with log.open("a") as out:
            for i, case in enumerate(CASES):
                if i < start or (only and case.area != only):
                    continue
                out.write(json.dumps({"i": i, "start": True}) + "\n")
                out.flush()
                before = {k: _model_state(m) for k, m in ctx._models.items()}
                t0 = time.perf_counter()
                outcome, message = classify(case, ctx)
                left = _model_left_changed(ctx, before)
                if left and outcome not in FAILURES:
                    outcome, message = "silent", f"{left}; {message}"
                row = {"i": i, "outcome": outcome, "message": message}
                row["seconds"] = round(time.perf_counter() - t0, 2)
                out.write(json.dumps(row) + "\n")
                out.flush()


# --- the parent: runs workers, survives crashes and hangs ----------------------------------------


def _read(log: Path) -> tuple[dict[int, dict[str, Any]], int | None]:
    rows: dict[int, dict[str, Any]] = {}
    started = None
    if log.exists():
        for line in log.read_text().splitlines():
            entry = json.loads(line)
            if entry.get("start"):
                started = entry["i"]
            else:
                rows[entry["i"]] = entry
    return rows, started


def _run_worker(start: int, log: Path, only: str | None) -> None:
    argv = [sys.executable, __file__, "--worker", str(start), "--log", str(log)]
    if only:
        argv += ["--only", only]
    with open(log.with_suffix(".stderr"), "a") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)
        last, last_t = None, time.monotonic()
        while proc.poll() is None:
            time.sleep(0.5)
            _, started = _read(log)
            if started != last:
                last, last_t = started, time.monotonic()
            elif time.monotonic() - last_t > CASE_TIMEOUT_S:
                proc.kill()
                proc.wait()


def sweep(only: str | None) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="steerlens-sweep-log-") as tmp:
        log = Path(tmp) / "cases.jsonl"
        start = 0
        while True:
            _run_worker(start, log, only)
            rows, started = _read(log)
            if started is None or started in rows:
                break
            rows[started] = {
                "i": started,
                "outcome": "crash",
                "message": "the process died or hung",
            }
            with log.open("a") as out:
                out.write(json.dumps(rows[started]) + "\n")
            start = started + 1
        rows, _ = _read(log)
    table = []
    for i, case in enumerate(CASES):
        if only and case.area != only:
            continue
        row = rows.get(i, {"outcome": "crash", "message": "never ran (the worker died early)"})
        table.append(
            {
                "area": case.area,
                "case": case.name,
                "outcome": row["outcome"],
                "message": row["message"],
                "seconds": row.get("seconds"),
            }
        )
    return table


def summary(table: list[dict[str, Any]]) -> str:
    outcomes = ["correct", "clear error", *FAILURES, NOT_RUN]
    areas = sorted({r["area"] for r in table}, key=[r["area"] for r in table].index)
    lines = [f"{'area':<12}" + "".join(f"{o:>13}" for o in outcomes)]
    for area in [*areas, "all"]:
        counts = Counter(r["outcome"] for r in table if area in ("all", r["area"]))
        lines.append(f"{area:<12}" + "".join(f"{counts.get(o, 0):>13}" for o in outcomes))
    bad = [r for r in table if r["outcome"] in FAILURES]
    not_run = sum(r["outcome"] == NOT_RUN for r in table)
    lines.append(f"\n{len(table)} cases, {len(bad)} failures, {not_run} not run")
    lines += [f"  {r['outcome']:<10} {r['area']}: {r['case']}: {r['message']}" for r in bad]
    return "\n".join(lines)


# --- helpers for the cases ---------------------------------------------------------------------


def _is_vector(v: Any, layers: list[int] | None = None) -> bool:
    import torch

    from steerlens import SteeringVector

    ok = isinstance(v, SteeringVector) and all(
        bool(torch.isfinite(d).all()) for d in v.directions.values()
    )
    return ok and math.isfinite(v.norm()) and (layers is None or v.layers == layers)


def _result_vector_ok(res: Any, layers: list[int] | None = None) -> bool:
    return _is_vector(res.vector, layers)


def _texts_ok(n: int) -> Callable[[Any], bool]:
    return lambda out: (
        isinstance(out, list) and len(out) == n and all(isinstance(t, str) for t in out)
    )


def _intact(saved: tuple[Path, Any]) -> bool | str:
    """Whether the file at ``saved[0]`` still holds the vector ``saved[1]`` ("lost" if not)."""
    from steerlens import SteeringVector

    path, expected = saved
    try:
        again = SteeringVector.load(path)
    except Exception:
        return "lost"
    same = all(torch_equal(again.directions[la], expected.directions[la]) for la in expected.layers)
    return same or "lost"


def torch_equal(a: Any, b: Any) -> bool:
    import torch

    return bool(torch.equal(a, b))


def _dp(prompt: str = "the cat sat", **kw: Any) -> Any:
    from steerlens import Datapoint

    return Datapoint(prompt, **({"promote": [" on the mat"]} | kw))


def _opt(ctx: Ctx, dps: Any = None, layer: Any = 1, *args: Any, **kw: Any) -> Any:
    from steerlens import optimize_vector

    kw.setdefault("max_steps", 2)
    kw.setdefault("progress", False)
    return optimize_vector(ctx.tiny, _dp() if dps is None else dps, layer, *args, **kw)


def _clamp() -> Any:
    from steerlens.training.kinds import ClampSteering

    return ClampSteering()


def _optimize_vector(*args: Any, **kwargs: Any) -> Any:
    from steerlens import optimize_vector

    return optimize_vector(*args, **kwargs)


def _evaluate_objective(*args: Any, **kwargs: Any) -> Any:
    from steerlens import evaluate_objective

    return evaluate_objective(*args, **kwargs)


def _positions_at(where: Any) -> Any:
    from steerlens import Positions

    return Positions.at(where)


def _nan(shape: int = 64) -> Any:
    import torch

    return torch.full((shape,), float("nan"))


def _rewrite_file(
    src: Path, dst: Path, *, tensors: Any = None, meta: Any = None, header: Any = None
) -> Path:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as f:
        fields = dict(f.metadata())
        data = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open API
    body = json.loads(fields["steerlens"])
    body.update(meta or {})
    data.update(tensors or {})
    fields["steerlens"] = json.dumps(body)
    fields.update(header or {})
    save_file(data, str(dst), metadata=fields)
    return dst


@contextlib.contextmanager
def _patched(obj: Any, name: str, value: Any) -> Iterator[None]:
    original = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, original)


def _raise(exc: BaseException) -> Callable[..., Any]:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise exc

    return fail


# --- cases: vector files ------------------------------------------------------------------------


def _files() -> None:
    import torch

    from steerlens import SteeringVector

    def multi_tensor(ctx: Ctx) -> Any:
        v = SteeringVector.from_tensor(
            torch.randn(64), layer=[0, 1], model_id="steerlens/tiny-llama"
        )
        return SteeringVector.load(v.save(ctx.path("m.safetensors")))

    add(
        "files",
        "save a from_tensor vector at layers [0, 1]",
        multi_tensor,
        lambda v: _is_vector(v, [0, 1]),
    )

    def multi_opt(ctx: Ctx) -> Any:
        v = _opt(ctx, layer=[0, 1]).vector
        return SteeringVector.load(v.save(ctx.path("m.safetensors")))

    add(
        "files",
        "save an optimized vector at layers [0, 1]",
        multi_opt,
        lambda v: _is_vector(v, [0, 1]),
    )
    add("files", "save to an existing folder", lambda c: c.vector().save(c.path()), None, "folder")
    add(
        "files",
        "to_gguf to an existing folder",
        lambda c: c.vector(layers=(2,)).to_gguf(c.path()),
        None,
        "folder",
    )
    add(
        "files",
        "save to a path ending in /",
        lambda c: c.vector().save(str(c.path()) + "/x/"),
        None,
        "folder",
    )

    def tilde(ctx: Ctx) -> Any:
        home = ctx.path()
        old = os.environ.get("HOME")
        os.environ["HOME"] = str(home)
        cwd = os.getcwd()
        os.chdir(home)
        try:
            saved = ctx.vector().save("~/v.safetensors")
        finally:
            os.chdir(cwd)
            os.environ["HOME"] = old or ""
        return saved, home

    add(
        "files",
        "save to ~/v.safetensors",
        tilde,
        lambda r: r[0] == r[1] / "v.safetensors" and not (r[1] / "~").exists(),
    )

    def under_file(ctx: Ctx) -> Any:
        f = ctx.path("notes.txt")
        f.write_text("x")
        return ctx.vector().save(f / "v.safetensors")

    add("files", "save under a path that is a file", under_file, None, "notes.txt")

    def readonly(ctx: Ctx) -> Any:
        folder = ctx.path()

        def deny(*args: Any, **kwargs: Any) -> Any:
            raise PermissionError(13, "Permission denied", str(folder))

        # Root ignores folder modes, so the denial is injected where files are created.
        from steerlens.io import atomic

        with _patched(atomic.tempfile, "mkstemp", deny):
            return ctx.vector().save(folder / "v.safetensors")

    add("files", "save into a folder without write access", readonly, None, "permission")
    add("files", "save to an empty path", lambda c: c.vector().save(""), None, "path")
    add("files", "save to None", lambda c: c.vector().save(None), None, "path", "None")  # type: ignore[arg-type]
    add(
        "files",
        "load a missing file",
        lambda c: SteeringVector.load(c.path("nope.safetensors")),
        None,
        "nope.safetensors",
    )
    add("files", "load a folder", lambda c: SteeringVector.load(c.path()), None, "folder")

    def truncated(ctx: Ctx) -> Any:
        good = ctx.saved()
        bad = ctx.path("cut.safetensors")
        bad.write_bytes(good.read_bytes()[:40])
        return SteeringVector.load(bad)

    add("files", "load a truncated file", truncated, None, "cut.safetensors")

    def content(data: bytes) -> Callable[[Ctx], Any]:
        def load(ctx: Ctx) -> Any:
            f = ctx.path("x.safetensors")
            f.write_bytes(data)
            return SteeringVector.load(f)

        return load

    add("files", "load an empty file", content(b""), None, "x.safetensors")
    add("files", "load a text file", content(b"hello, not tensors at all"), None, "x.safetensors")
    add("files", "load random bytes", content(os.urandom(256)), None, "x.safetensors")

    def foreign_st(ctx: Ctx) -> Any:
        from safetensors.torch import save_file

        f = ctx.path("weights.safetensors")
        save_file({"w": torch.zeros(3)}, str(f))
        return SteeringVector.load(f)

    add(
        "files",
        "load a safetensors file that is not a vector",
        foreign_st,
        None,
        "weights.safetensors",
    )

    def gguf_as_st(ctx: Ctx) -> Any:
        g = ctx.vector(layers=(2,)).to_gguf(ctx.path("v.gguf"), model_hint="llama")
        return SteeringVector.load(g)

    add("files", "load a GGUF file with load()", gguf_as_st, None, "gguf")
    add(
        "files",
        "from_gguf a safetensors file",
        lambda c: SteeringVector.from_gguf(c.saved(), c.model(4)),
        None,
        "gguf",
    )

    def gguf_cut(ctx: Ctx) -> Any:
        g = ctx.vector(layers=(2,)).to_gguf(ctx.path("v.gguf"), model_hint="llama")
        g.write_bytes(g.read_bytes()[:50])
        return SteeringVector.from_gguf(g, ctx.model(4))

    add("files", "from_gguf a truncated file", gguf_cut, None, "v.gguf")
    add(
        "files",
        "from_gguf a missing file",
        lambda c: SteeringVector.from_gguf(c.path("no.gguf"), c.model(4)),
        None,
        "no.gguf",
    )

    def gguf_round(ctx: Ctx) -> Any:
        v = ctx.vector(layers=(2, 3))
        back = SteeringVector.from_gguf(
            v.to_gguf(ctx.path("v.gguf"), model=ctx.model(4)), ctx.model(4)
        )
        return v, back

    add(
        "files",
        "to_gguf / from_gguf round trip (layers 2, 3)",
        gguf_round,
        lambda r: (
            r[1].layers == [2, 3]
            and all(torch.allclose(r[0].directions[k], r[1].directions[k]) for k in (2, 3))
        ),
    )

    def gguf_other_model(ctx: Ctx) -> Any:
        g = ctx.vector(layers=(2,)).to_gguf(ctx.path("v.gguf"), model_hint="llama")
        return SteeringVector.from_gguf(g, ctx.model(4, 32))

    add("files", "from_gguf with a model of another d_model", gguf_other_model, None, "64", "32")

    def nan_file(ctx: Ctx) -> Any:
        good = ctx.saved()
        with open(good, "rb"):
            pass
        from safetensors import safe_open

        with safe_open(str(good), framework="pt") as f:
            key = next(iter(f.keys()))
        return SteeringVector.load(
            _rewrite_file(good, ctx.path("n.safetensors"), tensors={key: _nan()})
        )

    add("files", "load a file holding NaN", nan_file, None, "nan")
    add(
        "files",
        "load a file of a newer format version",
        lambda c: SteeringVector.load(
            _rewrite_file(c.saved(), c.path("n.safetensors"), header={"format_version": "99"})
        ),
        None,
        "99",
    )

    def resid_post_applied(ctx: Ctx) -> Any:
        import steerlens

        v = SteeringVector.load(ctx.saved(hook_template="blocks.{layer}.hook_resid_post"))
        return steerlens.generate(ctx.tiny, "the cat", steerlens.Steering(v), max_new_tokens=2)

    add(
        "files",
        "apply a vector made at hook_resid_post",
        resid_post_applied,
        None,
        "hook_resid_post",
    )
    add(
        "files",
        "load(device='cuda') on a CPU machine",
        lambda c: SteeringVector.load(c.saved(), device="cuda"),
        None,
        "cuda",
    )
    add(
        "files", "vector.to('cuda') on a CPU machine", lambda c: c.vector().to("cuda"), None, "cuda"
    )
    add("files", "vector.to('tpu')", lambda c: c.vector().to("tpu"), None, "tpu")

    def bad_provenance(ctx: Ctx) -> Any:
        return ctx.vector(provenance={"f": object()}).save(ctx.path("p.safetensors"))

    add("files", "save with provenance that is not JSON", bad_provenance, None, "provenance")

    def failed_resave(ctx: Ctx) -> Any:
        good = ctx.vector()
        path = good.save(ctx.path("keep.safetensors"))
        with contextlib.suppress(Exception):
            ctx.vector(provenance={"f": object()}).save(path)
        return path, good

    add("files", "a failed save over an existing file keeps the old file", failed_resave, _intact)

    def disk_full(ctx: Ctx) -> Any:
        import safetensors.torch

        good = ctx.vector()
        path = good.save(ctx.path("keep.safetensors"))
        full = _raise(OSError(28, "No space left on device"))
        with _patched(safetensors.torch, "save_file", full), contextlib.suppress(OSError):
            (good * 2.0).save(path)
        return path, good

    add("files", "disk full while saving over an existing file keeps it", disk_full, _intact)

    def clamp_gguf(ctx: Ctx) -> Any:
        v = _opt(ctx, layer=[1], kind=_clamp()).vector
        return v.to_gguf(ctx.path("c.gguf"), model_hint="llama")

    add("files", "to_gguf a clamp-steering vector", clamp_gguf, None, "clamp")
    add(
        "files",
        "to_gguf at layer 0 (llama.cpp cannot steer it)",
        lambda c: c.vector(layers=(0,)).to_gguf(c.path("v.gguf"), model_hint="llama"),
        None,
        "layer",
    )
    add(
        "files",
        "to_gguf a layer the model lacks",
        lambda c: c.vector(layers=(7,)).to_gguf(c.path("v.gguf"), model=c.model(4)),
        None,
        "7",
    )
    add(
        "files",
        "load a file of another model and steer with it",
        lambda c: _steer_other_model(c),
        None,
        "tiny",
    )


def _steer_other_model(ctx: Ctx) -> Any:
    import torch

    import steerlens
    from steerlens import SteeringVector

    v = SteeringVector({1: torch.ones(64)}, "gpt2")
    return steerlens.generate(ctx.tiny, "the cat", steerlens.Steering(v), max_new_tokens=2)


# --- cases: vector values ----------------------------------------------------------------------


def _values() -> None:
    import numpy as np
    import torch

    from steerlens import SteeringVector

    ft = SteeringVector.from_tensor
    add(
        "vector",
        "from_tensor of a 2-D tensor",
        lambda c: ft(torch.ones(2, 64), layer=1, model=c.tiny),
        None,
        "shape",
    )
    add("vector", "from_tensor of NaN", lambda c: ft(_nan(), layer=1, model=c.tiny), None, "nan")
    add(
        "vector",
        "from_tensor of entries ~1e30 (norm inf)",
        lambda c: ft(torch.full((64,), 3e38), layer=1, model=c.tiny),
        None,
        "norm",
    )
    add(
        "vector",
        "from_tensor at layer -1",
        lambda c: ft(torch.ones(64), layer=-1, model=c.tiny),
        None,
        "-1",
    )
    add(
        "vector",
        "from_tensor at layer '1'",
        lambda c: ft(torch.ones(64), layer="1", model=c.tiny),
        None,
        "'1'",
    )  # type: ignore[arg-type]
    add(
        "vector",
        "from_tensor at layer 5 of a 2-layer model",
        lambda c: ft(torch.ones(64), layer=5, model=c.tiny),
        None,
        "5",
    )
    add(
        "vector",
        "from_tensor at no layer ([])",
        lambda c: ft(torch.ones(64), layer=[], model=c.tiny),
        None,
        "layer",
    )
    add(
        "vector",
        "from_tensor of a complex tensor",
        lambda c: ft(torch.ones(64, dtype=torch.complex64), layer=1, model=c.tiny),
        None,
        "complex",
    )
    add(
        "vector",
        "from_tensor of an int tensor",
        lambda c: ft(torch.ones(64, dtype=torch.int64), layer=1, model=c.tiny),
        None,
        "int64",
    )
    add(
        "vector",
        "from_tensor of a numpy array",
        lambda c: ft(np.ones(64, dtype=np.float32), layer=1, model=c.tiny),
        lambda v: _is_vector(v, [1]),
        "ndarray",
    )
    add(
        "vector",
        "from_tensor of a list",
        lambda c: ft([1.0] * 64, layer=1, model=c.tiny),
        lambda v: _is_vector(v, [1]),
        "list",
    )  # type: ignore[arg-type]
    add(
        "vector",
        "from_tensor of the wrong size for the model",
        lambda c: ft(torch.ones(32), layer=1, model=c.tiny),
        None,
        "32",
        "64",
    )
    add(
        "vector",
        "from_tensor without model or model_id",
        lambda c: ft(torch.ones(64), layer=1),
        None,
        "model",
    )
    add("vector", "v * nan", lambda c: c.vector() * float("nan"), None, "nan")
    add("vector", "v * inf", lambda c: c.vector() * float("inf"), None, "inf")
    add("vector", "v / 0", lambda c: c.vector() / 0, None, "0")
    add("vector", "v * 'x'", lambda c: c.vector() * "x", None, python_ok=(TypeError,))  # type: ignore[operator]
    add(
        "vector",
        "v + a vector of another d_model",
        lambda c: c.vector() + c.vector(d_model=32),
        None,
        "32",
    )
    add(
        "vector",
        "v + a vector at other layers",
        lambda c: c.vector(layers=(0,)) + c.vector(layers=(1,)),
        lambda v: _is_vector(v),
        "layer",
    )
    add(
        "vector",
        "SteeringVector with no directions",
        lambda c: SteeringVector({}, "m"),
        None,
        "direction",
    )
    add(
        "vector",
        "SteeringVector with an empty model_id",
        lambda c: SteeringVector({1: torch.ones(64)}, ""),
        None,
        "model_id",
    )
    add(
        "vector",
        "SteeringVector with a NaN direction",
        lambda c: SteeringVector({1: _nan()}, "m"),
        None,
        "nan",
    )
    add("vector", "v * 1e38 (norm overflows)", lambda c: c.vector() * 1e38, None, "inf")


# --- cases: optimizer ---------------------------------------------------------------------------


def _optimizer() -> None:
    import numpy as np
    import torch

    from steerlens import NormCap, OptimizeConfig
    from steerlens.training.kinds import ClampSteering

    add(
        "optimizer",
        "layer=[0, 1]",
        lambda c: _opt(c, layer=[0, 1]),
        lambda r: _result_vector_ok(r, [0, 1]),
    )
    for bad, mention in [
        (5, "5"),
        (-1, "-1"),
        ("1", "'1'"),
        (np.float64(1.0), "float"),
        ([], "layer"),
        (None, "None"),
        (1.0, "float"),
        (True, "bool"),
    ]:
        add("optimizer", f"layer={bad!r}", lambda c, b=bad: _opt(c, layer=b), None, mention)
    add(
        "optimizer",
        "layer=np.int64(1)",
        lambda c: _opt(c, layer=np.int64(1)),
        lambda r: _result_vector_ok(r, [1]),
    )
    add("optimizer", "datapoints=[]", lambda c: _opt(c, []), None, "datapoint")
    add("optimizer", "datapoints a dict", lambda c: _opt(c, {"a": _dp()}), None, "dict")
    add("optimizer", "datapoints a list of str", lambda c: _opt(c, ["the cat"]), None, "str")
    add(
        "optimizer",
        "datapoints=None",
        lambda c: _optimize_vector(c.tiny, None, 1),
        None,
        "datapoints",
    )
    add("optimizer", "config a dict", lambda c: _opt(c, None, 1, {"lr": 0.1}), None, "dict")
    add("optimizer", "max_steps=0", lambda c: _opt(c, max_steps=0), lambda r: _result_vector_ok(r))
    for key, bad, mention in [
        ("max_steps", -1, "max_steps"),
        ("max_steps", 2.5, "max_steps"),
        ("lr", float("nan"), "nan"),
        ("lr", 0.0, "learning rate"),
        ("lr", -1.0, "learning rate"),
        ("seed", None, "seed"),
        ("seed", -1, "seed"),
        ("starting_norm", 0.0, "starting_norm"),
        ("starting_norm", float("inf"), "starting_norm"),
        ("betas", (0.9, 1.5), "betas"),
        ("constraints", ("cap",), "constraints"),
        ("objective", "promotion", "objective"),
        ("positions", "bogus", "bogus"),
    ]:
        add(
            "optimizer",
            f"OptimizeConfig({key}={bad!r})",
            lambda c, k=key, b=bad: OptimizeConfig(**{k: b}),
            None,
            mention,
        )
    add(
        "optimizer",
        "an unknown keyword (max_step=3)",
        lambda c: _opt(c, max_step=3),
        None,
        "max_step",
    )
    add("optimizer", "init of the wrong shape", lambda c: _opt(c, init=torch.ones(32)), None, "32")
    add("optimizer", "init of NaN", lambda c: _opt(c, init=_nan()), None, "nan")
    add(
        "optimizer",
        "init whose norm is inf",
        lambda c: _opt(c, init=torch.full((64,), 3e38)),
        None,
        "init",
    )
    add(
        "optimizer",
        "lr=1e30 (diverges)",
        lambda c: _opt(c, lr=1e30, max_steps=3),
        lambda r: _result_vector_ok(r),
    )
    add("optimizer", "NormCap(-1)", lambda c: NormCap(-1.0), None, "-1")
    add("optimizer", "NormCap(nan)", lambda c: NormCap(float("nan")), None, "nan")
    add(
        "optimizer",
        "ClampSteering(strength=nan)",
        lambda c: ClampSteering(strength=float("nan")),
        None,
        "nan",
    )

    def grads(ctx: Ctx) -> Any:
        _opt(ctx, max_steps=2)
        return [p.grad is None for p in ctx.tiny.parameters()], [
            p.requires_grad for p in ctx.tiny.parameters()
        ]

    add("optimizer", "no .grad left on the weights", grads, lambda r: all(r[0]) and all(r[1]))

    def grads_interrupted(ctx: Ctx) -> Any:
        from steerlens.training.stopping import Plateau

        class Interrupt(Plateau):
            def check(self, history: Any, targets: Any = ()) -> str | None:
                raise KeyboardInterrupt

        with contextlib.suppress(KeyboardInterrupt):
            _opt(ctx, max_steps=3, stop=(Interrupt(),))
        return [p.grad is None for p in ctx.tiny.parameters()], [
            p.requires_grad for p in ctx.tiny.parameters()
        ]

    add(
        "optimizer",
        "no .grad and weights unchanged after Ctrl-C",
        grads_interrupted,
        lambda r: all(r[0]) and all(r[1]),
    )

    def long(ctx: Ctx) -> Any:
        return _opt(ctx, _dp("a " * 300))

    add("optimizer", "a datapoint longer than the context", long, None, "context")
    add(
        "optimizer",
        "positions that select no prompt token",
        lambda c: _opt(c, _dp("the cat", positions=_positions_at([40]))),
        None,
        "select",
    )

    def eval_obj(v: Any) -> Callable[[Ctx], Any]:
        return lambda c: _evaluate_objective(c.tiny, _dp(), 1, v)

    add(
        "optimizer",
        "evaluate_objective with a wrong-size vector",
        eval_obj(torch.ones(32)),
        None,
        "32",
    )
    add("optimizer", "evaluate_objective with a NaN vector", eval_obj(_nan()), None, "nan")
    add(
        "optimizer",
        "evaluate_objective unit='furlongs'",
        lambda c: _evaluate_objective(c.tiny, _dp(), 1, None, unit="furlongs"),
        None,
        "furlongs",
    )

    def side_effect(**kw: Any) -> Callable[[Ctx], Any]:
        from steerlens.training.regularizers import SideEffect

        return lambda c: SideEffect(**kw)

    add("optimizer", "SideEffect(prompts=[])", side_effect(prompts=[]), None, "prompt")
    add(
        "optimizer",
        "SideEffect(weight=-1)",
        side_effect(prompts=["hi"], weight=-1.0),
        None,
        "weight",
    )
    add(
        "optimizer",
        "SideEffect(weight=nan)",
        side_effect(prompts=["hi"], weight=float("nan")),
        None,
        "weight",
    )

    def target_nan(ctx: Ctx) -> Any:
        from steerlens.training.stopping import TargetLoss

        return TargetLoss(value=float("nan"))

    add("optimizer", "TargetLoss(value=nan)", target_nan, None, "nan")
    from steerlens.training.stopping import Plateau, TargetLoss

    add(
        "optimizer",
        "TargetLoss(value=1, patience=0)",
        lambda c: TargetLoss(value=1.0, patience=0),
        None,
        "patience",
    )
    add("optimizer", "Plateau(patience=0)", lambda c: Plateau(patience=0), None, "patience")
    add("optimizer", "Plateau(eps=-1)", lambda c: Plateau(eps=-1.0), None, "eps")
    add(
        "optimizer",
        "stop=Plateau() (one rule, not a tuple)",
        lambda c: OptimizeConfig(stop=Plateau()),
        lambda cfg: len(cfg.stop) == 1,
    )
    add("optimizer", "stop=('plateau',)", lambda c: OptimizeConfig(stop=("plateau",)), None, "stop")

    def optimize_many_empty(ctx: Ctx) -> Any:
        from steerlens.training.loop import optimize_many

        return optimize_many(ctx.tiny, [])

    add("optimizer", "optimize_many([])", optimize_many_empty, lambda r: list(r) == [], "no jobs")


# --- cases: data, positions, objectives -----------------------------------------------------------


def _data() -> None:
    from steerlens import Datapoint, Positions
    from steerlens.training.objectives import Objective

    add("data", "Datapoint(123)", lambda c: Datapoint(123, promote=["x"]), None, "int")  # type: ignore[arg-type]
    add("data", "Datapoint(b'bytes')", lambda c: Datapoint(b"x", promote=["x"]), None, "bytes")  # type: ignore[arg-type]
    add("data", "Datapoint('')", lambda c: Datapoint("", promote=["x"]), None, "empty")
    add(
        "data",
        "Datapoint without completions",
        lambda c: _opt(c, Datapoint("hi")),
        None,
        "completion",
    )
    add("data", "promote=5", lambda c: Datapoint("a", promote=5), None, "promote")  # type: ignore[arg-type]
    add(
        "data",
        "promote=None",
        lambda c: Datapoint("a", promote=None, suppress=["b"]),
        lambda d: d.promote == (),
    )  # type: ignore[arg-type]
    add("data", "promote=['']", lambda c: _opt(c, Datapoint("a", promote=[""])), None, "empty")
    add(
        "data",
        "promote='abc' (a str, not a list)",
        lambda c: Datapoint("a", promote=" abc"),
        lambda d: tuple(d.promote) == (" abc",),
        "str",
    )
    add("data", "promote=[5]", lambda c: Datapoint("a", promote=[5]), None, "5")  # type: ignore[list-item]
    add(
        "data",
        "negate='yes'",
        lambda c: Datapoint("a", promote=["b"], negate="yes"),
        None,
        "negate",
    )  # type: ignore[arg-type]
    add(
        "data",
        "promote_targets of the wrong length",
        lambda c: Datapoint("a", promote=["b"], promote_targets=[1.0, 2.0]),
        None,
        "promote_targets",
    )
    add(
        "data",
        "promote_targets=['x']",
        lambda c: Datapoint("a", promote=["b"], promote_targets=["x"]),
        None,
        "promote_targets",
    )
    add(
        "data",
        "promote_targets=[nan]",
        lambda c: Datapoint("a", promote=["b"], promote_targets=[float("nan")]),
        None,
        "nan",
    )
    add(
        "data",
        "positions='bogus'",
        lambda c: Datapoint("a", promote=["b"], positions="bogus"),
        None,
        "bogus",
    )
    add("data", "Positions.at([])", lambda c: Positions.at([]), None, "position")
    add("data", "Positions(kind='xyz')", lambda c: Positions(kind="xyz"), None, "xyz")  # type: ignore[arg-type]
    add("data", "Positions.last(0)", lambda c: Positions.last(0), None, "0")
    add("data", "Positions.last(-2)", lambda c: Positions.last(-2), None, "-2")
    add(
        "data",
        "Datapoint.chat on a model without a chat template",
        lambda c: _no_template_chat(c),
        None,
        "chat template",
    )
    for kw, mention in [
        ({"coldness": float("inf")}, "coldness"),
        ({"coldness": float("nan")}, "coldness"),
        ({"coldness": 0.0}, "coldness"),
        ({"suppression": "bad"}, "bad"),
        ({"length_normalize": "yes"}, "length_normalize"),
    ]:
        add("data", f"Objective({kw})", lambda c, k=kw: Objective(**k), None, mention)


def _no_template_chat(ctx: Ctx) -> Any:
    from steerlens import Datapoint

    tok = ctx.tiny.tokenizer
    template = tok.chat_template
    tok.chat_template = None
    try:
        return Datapoint.chat(ctx.tiny, "hi", promote=[" x"])
    finally:
        tok.chat_template = template


# --- cases: steering -------------------------------------------------------------------------


def _steering() -> None:
    import torch

    import steerlens
    from steerlens import Steering, steer
    from steerlens.steering.interventions import Ablate

    def gen(plan: Callable[[], Any]) -> Callable[[Ctx], Any]:
        return lambda c: steerlens.generate(c.tiny, "the cat", plan(), max_new_tokens=2)

    for bad in (float("nan"), float("inf"), "2", [1.0, 2.0], None):
        add(
            "steering",
            f"Steering(strength={bad!r})",
            lambda c, b=bad: Steering(torch.ones(64), layer=1, strength=b),
            None,
            "strength",
        )
    add(
        "steering",
        "a tensor of the wrong size",
        gen(lambda: Steering(torch.ones(32), layer=1)),
        None,
        "32",
    )
    add("steering", "a tensor without a layer", lambda c: Steering(torch.ones(64)), None, "layer")
    add("steering", "layer 99", gen(lambda: Steering(torch.ones(64), layer=99)), None, "99")
    add("steering", "a NaN tensor", gen(lambda: Steering(_nan(), layer=1)), None, "nan")
    add(
        "steering",
        "positions past the prompt",
        gen(lambda: Steering(torch.ones(64), layer=1, positions=[40])),
        None,
        "select",
    )
    add(
        "steering",
        "kind='bogus'",
        lambda c: Steering(torch.ones(64), layer=1, kind="bogus"),
        None,
        "bogus",
    )  # type: ignore[arg-type]
    add(
        "steering",
        "steer(model, 'a string')",
        lambda c: steer(c.tiny, "a string").__enter__(),
        None,
        "str",
    )  # type: ignore[arg-type]
    add(
        "steering",
        "a complex tensor",
        gen(lambda: Steering(torch.ones(64, dtype=torch.complex64), layer=1)),
        None,
        "complex",
    )
    add(
        "steering", "a 2-D tensor", gen(lambda: Steering(torch.ones(2, 64), layer=1)), None, "shape"
    )
    add(
        "steering",
        "an int tensor",
        gen(lambda: Steering(torch.ones(64, dtype=torch.int64), layer=1)),
        None,
        "int64",
    )
    add(
        "steering",
        "a tensor on the meta device",
        gen(lambda: Steering(torch.ones(64, device="meta"), layer=1)),
        None,
        "meta",
    )
    add(
        "steering",
        "Ablate of a zero vector",
        gen(lambda: Steering(Ablate(torch.zeros(64)), layer=1)),
        None,
        "zero",
    )

    def hooks_removed(ctx: Ctx) -> Any:
        try:
            with steer(ctx.tiny, Steering(torch.ones(64), layer=1)):
                raise RuntimeError("user code failed")
        except RuntimeError:
            pass
        return len([h for h in ctx.tiny.hook_dict.values() if h.fwd_hooks])

    add("steering", "hooks removed after an error inside steer()", hooks_removed, lambda n: n == 0)

    def strength_zero(ctx: Ctx) -> Any:
        plain = steerlens.generate(ctx.tiny, "the cat", max_new_tokens=4)
        zero = steerlens.generate(
            ctx.tiny,
            "the cat",
            Steering(torch.ones(64) * 50, layer=1, strength=0.0),
            max_new_tokens=4,
        )
        return plain, zero

    add("steering", "strength 0 equals unsteered", strength_zero, lambda r: r[0] == r[1])


# --- cases: generation ------------------------------------------------------------------------


def _generation() -> None:
    import torch

    import steerlens

    def gen(prompts: Any = "the cat", **kw: Any) -> Callable[[Ctx], Any]:
        kw.setdefault("max_new_tokens", 2)
        return lambda c: steerlens.generate(c.tiny, prompts, **kw)

    for bad, mention in [
        (None, "NoneType"),
        (b"the cat", "bytes"),
        ({"a": "b"}, "dict"),
        (5, "int"),
        ([b"x"], "bytes"),
        ([1, 2], "int"),
    ]:
        add("generation", f"prompts={bad!r}", gen(bad), None, mention)
    add("generation", "prompts=[]", gen([]), lambda out: out == [], "empty")
    add("generation", "prompt ''", gen(""), lambda out: isinstance(out, str), "empty")
    add(
        "generation",
        "max_new_tokens=0",
        gen(max_new_tokens=0),
        lambda out: out == "",
        "max_new_tokens",
    )
    for bad in (-1, 2.5, "3", None):
        add(
            "generation", f"max_new_tokens={bad!r}", gen(max_new_tokens=bad), None, "max_new_tokens"
        )
    for bad in (float("nan"), float("inf"), -0.5, "hot"):
        add("generation", f"temperature={bad!r}", gen(temperature=bad), None, "temperature")
    for bad in (0, -1, 1.5, True):
        add(
            "generation", f"batch_size={bad!r}", gen(["a", "b"], batch_size=bad), None, "batch_size"
        )
    add("generation", "seed=1.5", gen(temperature=1.0, seed=1.5), None, "seed")
    add("generation", "seed='x'", gen(temperature=1.0, seed="x"), None, "seed")
    add("generation", "a prompt longer than the context", gen("a " * 300), None, "context")
    add(
        "generation",
        "a prompt that leaves less room than max_new_tokens",
        gen("a " * 250, max_new_tokens=50),
        lambda out: isinstance(out, str),
        "context",
    )
    add("generation", "system=123 with chat", gen(chat=True, system=123), None, "system")
    add(
        "generation",
        "chat=True on a model without a chat template",
        lambda c: _no_template(c, gen(chat=True)),
        None,
        "chat template",
    )

    prompts = ["hi", "yo", "the cat"]
    kw: dict[str, Any] = {"temperature": 1.0, "seed": 3, "max_new_tokens": 6}

    def batch_sizes(ctx: Ctx) -> Any:
        return [steerlens.generate(ctx.tiny, prompts, batch_size=b, **kw) for b in (1, 2, 3)]

    add(
        "generation",
        "seeded sampling independent of batch_size",
        batch_sizes,
        lambda r: r[0] == r[1] == r[2],
    )

    def mates(ctx: Ctx) -> Any:
        a = steerlens.generate(ctx.tiny, prompts, **kw)
        b = steerlens.generate(
            ctx.tiny, ["hi", "a much longer prompt than the others", "the cat"], **kw
        )
        return a, b

    add(
        "generation",
        "seeded sampling independent of batch mates",
        mates,
        lambda r: r[0][0] == r[1][0] and r[0][2] == r[1][2],
    )

    def repeat(ctx: Ctx) -> Any:
        return [steerlens.generate(ctx.tiny, prompts, **kw) for _ in range(2)]

    add("generation", "seeded sampling repeats", repeat, lambda r: r[0] == r[1])

    def global_rng(ctx: Ctx) -> Any:
        torch.manual_seed(1234)
        expected = torch.rand(3)
        torch.manual_seed(1234)
        steerlens.generate(ctx.tiny, "hi", temperature=1.0, max_new_tokens=3)
        return torch.equal(torch.rand(3), expected)

    add(
        "generation",
        "unseeded sampling leaves the global RNG alone",
        global_rng,
        lambda same: same is True,
    )
    add(
        "generation",
        "unknown keyword max_tokens=",
        gen(max_tokens=3),
        None,
        "max_tokens",
        python_ok=(TypeError,),
    )


def _no_template(ctx: Ctx, run: Callable[[Ctx], Any]) -> Any:
    tok = ctx.tiny.tokenizer
    template = tok.chat_template
    tok.chat_template = None
    try:
        return run(ctx)
    finally:
        tok.chat_template = template


# --- cases: evaluation ------------------------------------------------------------------------


def _evaluation() -> None:
    import torch

    from steerlens import Steering
    from steerlens import evaluation as ev

    def cl(prompts: Any = "the cat", completions: Any = " sat", **kw: Any) -> Callable[[Ctx], Any]:
        return lambda c: ev.completion_logprobs(c.tiny, prompts, completions, **kw)

    add(
        "evaluation",
        "completion_logprobs of 2 prompts x 3 completions",
        cl(["a", "b"], [" x", " y", " z"]),
        lambda r: tuple(r.totals.shape) == (2, 3),
    )
    add("evaluation", "completion_logprobs completion ''", cl(completions=""), None, "empty")
    add("evaluation", "completion_logprobs coldness=0", cl(coldness=0.0), None, "coldness")
    add(
        "evaluation",
        "completion_logprobs coldness=nan",
        cl(coldness=float("nan")),
        None,
        "coldness",
    )
    add("evaluation", "completion_logprobs unit='furlongs'", cl(unit="furlongs"), None, "furlongs")
    add("evaluation", "completion_logprobs batch_size=0", cl(batch_size=0), None, "batch_size")
    add(
        "evaluation",
        "completion_logprobs prompts=[]",
        cl([], []),
        lambda r: r.totals.numel() == 0,
        "empty",
    )
    add(
        "evaluation",
        "completion_logprobs under NaN-free steering is finite",
        lambda c: cl(steering=Steering(torch.ones(64), layer=1, strength=1e6))(c),
        lambda r: bool(torch.isfinite(r.totals).all()),
    )
    add(
        "evaluation",
        "success_rate with an unknown keyword",
        lambda c: ev.success_rate(c.tiny, ["a"], ev.StringMatchJudge(["x"]), max_tokens=2),
        None,
        "max_tokens",
    )
    add(
        "evaluation",
        "success_rate with a str as judge",
        lambda c: ev.success_rate(c.tiny, ["a"], "x", max_new_tokens=2),
        None,
        "judge",
    )  # type: ignore[arg-type]
    add(
        "evaluation",
        "success_rate prompts=[]",
        lambda c: ev.success_rate(c.tiny, [], ev.StringMatchJudge(["x"]), max_new_tokens=2),
        None,
        "prompt",
    )
    add(
        "evaluation",
        "a judge that answers 'no' (a truthy str)",
        lambda c: ev.success_rate(c.tiny, ["a"], lambda t: "no", max_new_tokens=2),
        None,
        "'no'",
    )
    add("evaluation", "StringMatchJudge([])", lambda c: ev.StringMatchJudge([]), None, "phrase")
    add(
        "evaluation",
        "StringMatchJudge('abc') (a str, not a list)",
        lambda c: ev.StringMatchJudge("abc"),
        lambda j: list(j.phrases) == ["abc"],
        "str",
    )
    add(
        "evaluation",
        "StringMatchJudge(['']) (matches everything)",
        lambda c: ev.StringMatchJudge([""]),
        None,
        "empty",
    )
    add(
        "evaluation",
        "ModelJudge template without {text}",
        lambda c: ev.ModelJudge(c.tiny, "Is it French?"),
        None,
        "{text}",
    )
    for k, n, mention in [(5, 0, "0"), (5, 3, "5"), (-1, 3, "-1"), (1.5, 3, "1.5")]:
        add(
            "evaluation",
            f"wilson_interval({k}, {n})",
            lambda c, k=k, n=n: ev.wilson_interval(k, n),
            None,
            mention,
        )
    add(
        "evaluation",
        "wilson_interval z=nan",
        lambda c: ev.wilson_interval(1, 3, float("nan")),
        None,
        "z",
    )
    add(
        "evaluation",
        "beam_search k=0",
        lambda c: ev.beam_search(c.tiny, "the cat", k=0, n_tokens=2),
        None,
        "k",
    )
    add(
        "evaluation",
        "beam_search n_tokens=0",
        lambda c: ev.beam_search(c.tiny, "the cat", k=2, n_tokens=0),
        None,
        "n_tokens",
    )
    add(
        "evaluation",
        "behavior_change_rates with a multi-token answer",
        lambda c: ev.behavior_change_rates(
            c.tiny, Steering(torch.ones(64), layer=1), ["q"], ["q"], answers=("Absolutely", "Never")
        ),
        None,
        "token",
    )
    add(
        "evaluation",
        "coherence prompts=[]",
        lambda c: ev.coherence(c.tiny, [], Steering(torch.ones(64), layer=1), max_new_tokens=2),
        None,
        "prompt",
    )
    add("evaluation", "distinct_n n=0", lambda c: ev.distinct_n(c.tiny, ["a b c"], n=0), None, "n")
    add(
        "evaluation",
        "loop_rate repeats=0",
        lambda c: ev.loop_rate(c.tiny, ["a b c"], repeats=0),
        None,
        "repeats",
    )
    add("evaluation", "distinct_n texts=[]", lambda c: ev.distinct_n(c.tiny, []), None, "text")
    add(
        "evaluation",
        "mean_surprisal samples=[]",
        lambda c: ev.mean_surprisal(c.tiny, [], "ctx"),
        None,
        "sample",
    )
    add(
        "evaluation",
        "mean_surprisal unit='furlongs'",
        lambda c: ev.mean_surprisal(c.tiny, ["a b"], "ctx", unit="furlongs"),
        None,
        "furlongs",
    )
    add(
        "evaluation",
        "mean_surprisal max_tokens=0",
        lambda c: ev.mean_surprisal(c.tiny, ["a b"], "ctx", max_tokens=0),
        None,
        "max_tokens",
    )
    add(
        "evaluation",
        "reply_nll with 2 prompts and 1 reply",
        lambda c: ev.reply_nll(c.tiny, ["a", "b"], [" x"]),
        None,
        "2",
    )
    add(
        "evaluation",
        "side_effect_kl prompts=[]",
        lambda c: ev.side_effect_kl(c.tiny, [], Steering(torch.ones(64), layer=1)),
        None,
        "prompt",
    )
    add(
        "evaluation",
        "information_complexity context=''",
        lambda c: ev.information_complexity(c.tiny, ""),
        None,
        "empty",
    )
    add(
        "evaluation",
        "compare_samples with an empty side",
        lambda c: ev.compare_samples(c.tiny, ["a b"], [], "ctx"),
        None,
        "sample",
    )


# --- cases: baselines --------------------------------------------------------------------------


def _baselines() -> None:
    import torch

    from steerlens import baselines as bl

    pos, neg = ["I love this", "What a day"], ["I hate this", "Awful day"]

    def dom(p: Any = pos, n: Any = neg, layer: Any = 1, **kw: Any) -> Callable[[Ctx], Any]:
        return lambda c: bl.diff_of_means(c.tiny, p, n, layer, **kw)

    def pca(p: Any = pos, n: Any = neg, layer: Any = 1, **kw: Any) -> Callable[[Ctx], Any]:
        return lambda c: bl.pca_direction(c.tiny, p, n, layer, **kw)

    add("baselines", "diff_of_means works", dom(), lambda v: _is_vector(v, [1]))
    add("baselines", "diff_of_means positive=[]", dom(p=[]), None, "positive")
    add(
        "baselines",
        "diff_of_means paired with unequal lengths",
        dom(n=neg[:1], paired=True),
        None,
        "paired",
    )
    add("baselines", "diff_of_means layer 99", dom(layer=99), None, "99")
    add("baselines", "diff_of_means position='middle'", dom(position="middle"), None, "middle")
    add("baselines", "diff_of_means batch_size=0", dom(batch_size=0), None, "batch_size")
    add("baselines", "diff_of_means a str instead of a list", dom(p="I love this"), None, "str")
    add(
        "baselines",
        "diff_of_means completions of the wrong length",
        dom(position="completion", completions=([" a", " b"], [" c"])),
        None,
        "completion",
    )
    add(
        "baselines",
        "diff_of_means of identical sets",
        dom(p=pos, n=pos),
        lambda v: isinstance(v, object) and _is_vector(v),
        "identical",
    )
    add(
        "baselines",
        "pca_direction works",
        pca(),
        lambda v: (_is_vector(v, [1]) and abs(v.norm() - 1) < 1e-3) or _is_vector(v, [1]),
    )
    add("baselines", "pca_direction of identical sets", pca(p=pos, n=pos), None, "zero")
    add("baselines", "pca_direction negative=[]", pca(n=[]), None, "negative")
    add(
        "baselines",
        "principal_direction of an empty tensor",
        lambda c: bl.principal_direction(torch.zeros(0, 64)),
        None,
        "empty",
    )
    add(
        "baselines",
        "principal_direction of NaN",
        lambda c: bl.principal_direction(torch.full((3, 64), float("nan"))),
        None,
        "nan",
    )
    add(
        "baselines",
        "principal_direction of a 1-D tensor",
        lambda c: bl.principal_direction(torch.ones(64)),
        None,
        "shape",
    )
    add(
        "baselines",
        "mean_activations prompts=[]",
        lambda c: bl.mean_activations(c.tiny, [], 1),
        None,
        "prompt",
    )


# --- cases: interop -------------------------------------------------------------------------------


def _interop() -> None:
    import torch

    from steerlens import SteeringVector
    from steerlens.interop import libraries as interop

    def deep_vec(ctx: Ctx) -> Any:
        g = torch.Generator().manual_seed(1)
        return SteeringVector({2: torch.randn(64, generator=g)}, "steerlens/tiny-llama")

    def round_trip(to: Callable[..., Any], back: Callable[..., Any]) -> Callable[[Ctx], Any]:
        def run(ctx: Ctx) -> Any:
            v = deep_vec(ctx)
            return v, back(to(v, model=ctx.model(4)), ctx.model(4))

        return run

    def same_vector(r: Any) -> bool:
        return r[1].layers == [2] and torch.allclose(r[0].directions[2], r[1].directions[2])

    # The interop cases need their optional package (absent in CI; repeng 0.4 cannot be
    # imported under NumPy 2): where it cannot be imported, they are not run.
    add(
        "interop",
        "to_repeng / from_repeng round trip",
        round_trip(interop.to_repeng, interop.from_repeng),
        same_vector,
        needs="repeng",
    )
    add(
        "interop",
        "to_steering_vectors / from_steering_vectors round trip",
        round_trip(interop.to_steering_vectors, interop.from_steering_vectors),
        same_vector,
        needs="steering_vectors",
    )

    def clamp_repeng(ctx: Ctx) -> Any:
        v = _opt(ctx, layer=[1], kind=_clamp()).vector
        return interop.to_repeng(v, model=ctx.tiny)

    add("interop", "to_repeng a clamp-steering vector", clamp_repeng, None, "clamp", needs="repeng")
    add(
        "interop",
        "from_repeng of a dict",
        lambda c: interop.from_repeng({2: [0.0] * 64}, c.model(4)),
        None,
        "dict",
        needs="repeng",
    )
    add(
        "interop",
        "from_steering_vectors of a str",
        lambda c: interop.from_steering_vectors("vector", c.model(4)),
        None,
        "str",
        needs="steering_vectors",
    )

    def repeng_other_size(ctx: Ctx) -> Any:
        v = deep_vec(ctx)
        cv = interop.to_repeng(v, model=ctx.model(4))
        return interop.from_repeng(cv, ctx.model(4, 32))

    add(
        "interop",
        "from_repeng onto a model of another d_model",
        repeng_other_size,
        None,
        "64",
        needs="repeng",
    )
    add(
        "interop",
        "to_repeng of a str",
        lambda c: interop.to_repeng("v", model=c.tiny),  # type: ignore[arg-type]
        None,
        "str",
        needs="repeng",
    )


# --- cases: studies ---------------------------------------------------------------------------


SPEC = """\
layers = [0, 1]
model = "tiny"
[optimizer]
max_steps = 2
[[examples]]
prompt = "Hi"
promote = [" there"]
"""


def _studies() -> None:
    from steerlens.studies import StudyFolder, StudySpec, run_study
    from steerlens.studies.serial_backend import SerialBackend

    def toml(text: str) -> Callable[[Ctx], Any]:
        def load(ctx: Ctx) -> Any:
            f = ctx.path("spec.toml")
            f.write_text(text)
            return StudySpec.from_toml(f)

        return load

    add(
        "studies",
        "from_toml of a missing file",
        lambda c: StudySpec.from_toml(c.path("none.toml")),
        None,
        "none.toml",
    )
    add("studies", "from_toml of a folder", lambda c: StudySpec.from_toml(c.path()), None, "folder")
    add("studies", "from_toml of garbage", toml("this is = = not toml ["), None, "toml")
    add(
        "studies",
        "from_toml of binary bytes",
        lambda c: (
            (c.path("b.toml").write_bytes(b"\xff\xfe\x00") and None)
            or StudySpec.from_toml(c.root / f"case{c._n}" / "b.toml")
        ),
        None,
        "b.toml",
    )
    add("studies", "an unknown key", toml(SPEC + "colour = 'red'\n"), None, "colour")
    add("studies", "layers = []", toml(SPEC.replace("[0, 1]", "[]")), None, "layers")
    add("studies", "layers = ['a']", toml(SPEC.replace("[0, 1]", '["a"]')), None, "layers")
    add("studies", "no examples", toml(SPEC.split("[[examples]]")[0]), None, "example")
    add(
        "studies",
        "lr = 'fast'",
        toml(SPEC.replace("max_steps = 2", "max_steps = 2\nlr = 'fast'")),
        None,
        "lr",
    )
    add(
        "studies",
        "max_steps = -3",
        toml(SPEC.replace("max_steps = 2", "max_steps = -3")),
        None,
        "max_steps",
    )
    add(
        "studies",
        "an unknown objective",
        toml("objectives = ['happiness']\n" + SPEC),
        None,
        "happiness",
    )
    add(
        "studies",
        "an unknown model",
        lambda c: run_study(
            toml(SPEC.replace('"tiny"', '"no/such-model"'))(c),
            c.path("s"),
            progress=False,
            evaluate=False,
        ),
        None,
        "no/such-model",
    )

    def spec(ctx: Ctx) -> Any:
        return toml(SPEC)(ctx)

    def run(ctx: Ctx, folder: Path, **kw: Any) -> Any:
        kw.setdefault("backend", SerialBackend(model=ctx.tiny))
        return run_study(spec(ctx), folder, progress=False, evaluate=False, **kw)

    add(
        "studies",
        "run_study works and resumes",
        lambda c: _resume(c, run),
        lambda r: r == ("done", "done", 2),
    )
    add(
        "studies",
        "a layer the model lacks",
        lambda c: run_study(
            toml(SPEC.replace("[0, 1]", "[0, 9]"))(c),
            c.path("s"),
            backend=SerialBackend(model=c.tiny),
            progress=False,
        ),
        None,
        "9",
    )

    def file_as_folder(ctx: Ctx) -> Any:
        f = ctx.path("study")
        f.write_text("x")
        return run(ctx, f)

    add("studies", "the folder is a file", file_as_folder, None, "study")

    def foreign_folder(ctx: Ctx) -> Path:
        folder = ctx.path("mine")
        folder.mkdir()
        (folder / "thesis.tex").write_text("precious")
        return folder

    def foreign_kept(ctx: Ctx) -> Path:
        folder = foreign_folder(ctx)
        with contextlib.suppress(Exception):
            run(ctx, folder)
        return folder

    add("studies", "a folder of another tool", lambda c: run(c, foreign_folder(c)), None, "folder")
    add(
        "studies",
        "a folder of another tool is left untouched",
        foreign_kept,
        lambda folder: _still(folder / "thesis.tex", "precious"),
    )

    def changed(ctx: Ctx) -> Any:
        folder = ctx.path("s")
        run(ctx, folder)
        other = toml(SPEC.replace("max_steps = 2", "max_steps = 3"))(ctx)
        return run_study(
            other, folder, backend=SerialBackend(model=ctx.tiny), progress=False, evaluate=False
        )

    add("studies", "another spec in the same folder", changed, None, "spec")
    add("studies", "backend='bogus'", lambda c: run(c, c.path("s"), backend="bogus"), None, "bogus")
    add("studies", "batch_size=0", lambda c: run(c, c.path("s"), batch_size=0), None, "batch_size")
    add(
        "studies",
        "if_changed='maybe'",
        lambda c: run(c, c.path("s"), if_changed="maybe"),
        None,
        "maybe",
    )

    def interrupted(ctx: Ctx) -> Any:
        class Dies(SerialBackend):
            def train(self, spec: Any, units: Any, batch_size: int) -> Any:
                for i, item in enumerate(super().train(spec, units, 1)):
                    if i == 1:
                        raise KeyboardInterrupt
                    yield item

        folder = ctx.path("s")
        with contextlib.suppress(KeyboardInterrupt):
            run(ctx, folder, backend=Dies(model=ctx.tiny))
        return StudyFolder(folder).finished()

    add(
        "studies",
        "Ctrl-C mid-study keeps the finished unit",
        interrupted,
        lambda done: len(done) == 1 or "lost",
    )

    def damaged_db(ctx: Ctx) -> Any:
        folder = ctx.path("s")
        run(ctx, folder)
        for f in folder.iterdir():
            if f.suffix in (".db", ".sqlite", ".sqlite3"):
                f.write_bytes(b"not a database at all" * 10)
        return run(ctx, folder)

    add("studies", "a damaged study database", damaged_db, None, "damaged")


def _still(path: Path, text: str) -> bool | str:
    return (path.is_file() and path.read_text() == text) or "lost"


def _resume(ctx: Ctx, run: Callable[..., Any]) -> Any:
    folder = ctx.path("s")
    first = run(ctx, folder)
    second = run(ctx, folder)
    table = second.table()
    return table["status"].iloc[0], table["status"].iloc[-1], len(first.finished())


# --- cases: model loading -------------------------------------------------------------------------


def _model() -> None:
    import torch

    from steerlens import load_model

    add(
        "model",
        "load_model(device='cuda') on a CPU machine",
        lambda c: load_model(device="cuda"),
        None,
        "cuda",
    )
    add("model", "load_model(device='tpu')", lambda c: load_model(device="tpu"), None, "tpu")
    add(
        "model",
        "load_model(dtype='float16')",
        lambda c: load_model(dtype="float16"),
        None,
        "float16",
    )  # type: ignore[arg-type]
    add(
        "model",
        "load_model(dtype=torch.int8)",
        lambda c: load_model(dtype=torch.int8),
        None,
        "int8",
    )
    add("model", "load_model(123)", lambda c: load_model(123), None, "123")  # type: ignore[arg-type]

    def unknown(ctx: Ctx) -> Any:
        before = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
        t0 = time.perf_counter()
        try:
            load_model("no-such-org/no-such-model")
        except Exception as exc:
            after = {k: os.environ.get(k) for k in before}
            return type(exc).__name__, str(exc), after == before, time.perf_counter() - t0
        return None

    def unknown_ok(r: Any) -> bool:
        from steerlens import errors

        return (
            r is not None
            and hasattr(errors, r[0])
            and "no-such-model" in r[1]
            and r[2]
            and r[3] < 60
        )

    add("model", "an unknown hub model offline: clear, fast, env untouched", unknown, unknown_ok)


# --- cases: the command line -------------------------------------------------------------------


OPT = (
    "optimize",
    "--prompt",
    "hi",
    "--raw-prompt",
    "--promote",
    " a",
    "--layer",
    "1",
    "--max-steps",
    "2",
    "--no-progress",
)


def _cli() -> None:
    from steerlens.errors import SteerlensError

    def cli(*argv: str) -> Callable[[Ctx], Any]:
        return lambda c: c.cli(*argv)

    def saved(name: str) -> Callable[[Ctx], Any]:
        def run(ctx: Ctx) -> Any:
            out = ctx.path("deep") / "er" / name
            result = ctx.cli(*OPT, "-o", str(out))
            result.out += f"\n[exists={out.exists()}]"
            return result

        return run

    add(
        "cli",
        "optimize into new folders saves",
        saved("v.safetensors"),
        lambda r: "[exists=True]" in r.out,
    )
    add(
        "cli",
        "optimize -o an existing folder",
        lambda c: c.cli(*OPT, "-o", str(c.path())),
        None,
        "folder",
        before_work=True,
    )

    def under_file(ctx: Ctx) -> Any:
        f = ctx.path("notes.txt")
        f.write_text("x")
        return ctx.cli(*OPT, "-o", str(f / "v.safetensors"))

    add("cli", "optimize -o under a file", under_file, None, "notes.txt", before_work=True)
    add(
        "cli",
        "optimize --layer 99",
        lambda c: c.cli(*OPT[:-3], "--layer", "99", "-o", str(c.path("v.safetensors"))),
        None,
        "99",
    )
    add(
        "cli",
        "optimize without --promote",
        lambda c: c.cli("optimize", "--prompt", "hi", "-o", str(c.path("v.safetensors"))),
        None,
        "promote",
        before_work=True,
    )
    # A bad optimizer flag is refused before the model loads, naming the flag or the value.
    for flag, value, mention in [
        ("--lr", "nan", "lr"),
        ("--max-steps", "-1", "max-steps"),
        ("--max-steps", "abc", "abc"),
        ("--device", "cuda", "cuda"),
        ("--device", "tpu", "tpu"),
        ("--threads", "0", "threads"),
        ("--norm-cap", "-5", "norm-cap"),
    ]:
        add(
            "cli",
            f"optimize {flag} {value}",
            lambda c, flag=flag, value=value: c.cli(
                *OPT, flag, value, "-o", str(c.path("v.safetensors"))
            ),
            None,
            mention,
            before_work=True,
        )
    add(
        "cli",
        "optimize --prompt ''",
        lambda c: c.cli(
            "optimize", "--prompt", "", "--promote", " a", "-o", str(c.path("v.safetensors"))
        ),
        None,
        "prompt",
        before_work=True,
    )

    def interrupted(ctx: Ctx) -> Any:
        from steerlens.training import optimize

        with _patched(optimize, "optimize_vector", _raise(KeyboardInterrupt())):
            return ctx.cli(*OPT, "-o", str(ctx.path("v.safetensors")))

    add("cli", "Ctrl-C during optimize", interrupted, None, "interrupted")

    def disk_full(ctx: Ctx) -> Any:
        import safetensors.torch

        with _patched(
            safetensors.torch, "save_file", _raise(OSError(28, "No space left on device"))
        ):
            return ctx.cli(*OPT, "-o", str(ctx.path("v.safetensors")))

    add("cli", "disk full while saving", disk_full, None, "space")

    def unexpected(ctx: Ctx) -> Any:
        from steerlens.training import optimize

        with _patched(optimize, "optimize_vector", _raise(RuntimeError("boom"))):
            return ctx.cli(*OPT, "-o", str(ctx.path("v.safetensors")))

    # A bug inside steerlens is reported as one line that says so: the CLI's last resort.
    add("cli", "an unexpected internal error", unexpected, None, "boom", injected=True)

    def gen(*argv: str) -> Callable[[Ctx], Any]:
        return lambda c: c.cli("generate", "hi", "--max-new-tokens", "2", "--no-chat", *argv)

    add("cli", "generate works", gen(), lambda r: r.rc == 0 and r.out.strip() != "")
    add(
        "cli",
        "generate --vector a missing file",
        lambda c: c.cli("generate", "hi", "--vector", str(c.path("none.safetensors"))),
        None,
        "none.safetensors",
        before_work=True,
    )
    add(
        "cli",
        "generate --vector a folder",
        lambda c: c.cli("generate", "hi", "--vector", str(c.path())),
        None,
        "folder",
        before_work=True,
    )

    def damaged(ctx: Ctx) -> Any:
        f = ctx.path("bad.safetensors")
        f.write_bytes(b"garbage" * 10)
        return ctx.cli("generate", "hi", "--vector", str(f))

    add(
        "cli",
        "generate --vector a damaged file",
        damaged,
        None,
        "bad.safetensors",
        before_work=True,
    )
    add(
        "cli",
        "generate --vector of another model",
        lambda c: c.cli(
            "generate",
            "hi",
            "--no-chat",
            "--max-new-tokens",
            "2",
            "--vector",
            str(_other_model_file(c)),
        ),
        None,
        "gpt2",
    )
    add(
        "cli",
        "generate --strength nan",
        lambda c: c.cli("generate", "hi", "--vector", str(c.saved()), "--strength", "nan"),
        None,
        "strength",
        before_work=True,
    )
    add(
        "cli",
        "generate --temperature -1",
        gen("--temperature", "-1"),
        None,
        "temperature",
        before_work=True,
    )
    add(
        "cli",
        "generate --max-new-tokens -3",
        gen("--max-new-tokens", "-3"),
        None,
        "max-new-tokens",
        before_work=True,
    )
    add(
        "cli",
        "generate --mode sideways",
        gen("--mode", "sideways"),
        None,
        "sideways",
        before_work=True,
    )
    add(
        "cli",
        "generate --seed 1.5",
        gen("--temperature", "1", "--seed", "1.5"),
        None,
        "1.5",
        before_work=True,
    )
    add("cli", "generate with no prompt", cli("generate"), None, "prompt", before_work=True)
    add(
        "cli",
        "caa without positives",
        lambda c: c.cli("caa", "--negative", "x", "-o", str(c.path("v.safetensors"))),
        None,
        "positive",
        before_work=True,
    )
    add(
        "cli",
        "caa --positive-file missing",
        lambda c: c.cli(
            "caa",
            "--positive-file",
            str(c.path("none.txt")),
            "--negative",
            "x",
            "-o",
            str(c.path("v.safetensors")),
        ),
        None,
        "none.txt",
        before_work=True,
    )
    add(
        "cli",
        "caa -o an existing folder",
        lambda c: c.cli(
            "caa", "--positive", "a", "--negative", "b", "--layer", "1", "-o", str(c.path())
        ),
        None,
        "folder",
        before_work=True,
    )
    add(
        "cli",
        "caa works",
        lambda c: c.cli(
            "caa",
            "--positive",
            "I love it",
            "--negative",
            "I hate it",
            "--layer",
            "1",
            "-o",
            str(c.path("v.safetensors")),
        ),
        lambda r: r.rc == 0,
    )

    def empty_file(ctx: Ctx) -> Any:
        f = ctx.path("empty.txt")
        f.write_text("\n\n")
        return ctx.cli(
            "caa",
            "--positive-file",
            str(f),
            "--negative",
            "x",
            "-o",
            str(ctx.path("v.safetensors")),
        )

    add(
        "cli",
        "caa --positive-file with only blank lines",
        empty_file,
        None,
        "empty.txt",
        before_work=True,
    )

    def binary_file(ctx: Ctx) -> Any:
        f = ctx.path("prompts.bin")
        f.write_bytes(b"\xff\xfe\x00\x81" * 8)
        return ctx.cli(
            "caa",
            "--positive-file",
            str(f),
            "--negative",
            "x",
            "-o",
            str(ctx.path("v.safetensors")),
        )

    add(
        "cli",
        "caa --positive-file of binary bytes",
        binary_file,
        None,
        "prompts.bin",
        before_work=True,
    )
    add(
        "cli",
        "sweep a missing vector",
        lambda c: c.cli(
            "sweep", str(c.path("none.safetensors")), "--prompt", "x", "--judge-any-of", "y"
        ),
        None,
        "none.safetensors",
        before_work=True,
    )
    add(
        "cli",
        "sweep --strengths a,b",
        lambda c: c.cli(
            "sweep", str(c.saved()), "--prompt", "x", "--judge-any-of", "y", "--strengths", "a,b"
        ),
        None,
        "strengths",
        before_work=True,
    )
    add(
        "cli",
        "sweep --layers 99",
        lambda c: c.cli(
            "sweep",
            str(c.saved()),
            "--prompt",
            "x",
            "--judge-any-of",
            "y",
            "--layers",
            "99",
            "--no-progress",
            "-o",
            str(c.path("sweep")),
        ),
        None,
        "99",
    )
    add(
        "cli",
        "sweep --max-nll-ratio nan",
        lambda c: c.cli(
            "sweep",
            str(c.saved()),
            "--prompt",
            "x",
            "--judge-any-of",
            "y",
            "--max-nll-ratio",
            "nan",
        ),
        None,
        "max-nll-ratio",
        before_work=True,
    )
    add(
        "cli",
        "report a missing vector",
        lambda c: c.cli("report", str(c.path("none.safetensors"))),
        None,
        "none.safetensors",
        before_work=True,
    )
    add(
        "cli",
        "report -o an existing folder",
        lambda c: c.cli("report", str(c.saved()), "-o", str(c.path())),
        None,
        "folder",
        before_work=True,
    )

    def study_spec(ctx: Ctx, text: str = SPEC) -> Path:
        f = ctx.path("spec.toml")
        f.write_text(text)
        return f

    add(
        "cli",
        "study run a missing spec",
        lambda c: c.cli("study", "run", str(c.path("none.toml")), "--folder", str(c.path("s"))),
        None,
        "none.toml",
        before_work=True,
    )
    add(
        "cli",
        "study run a garbage spec",
        lambda c: c.cli("study", "run", str(study_spec(c, "= = [")), "--folder", str(c.path("s"))),
        None,
        "toml",
        before_work=True,
    )

    def study_folder_file(ctx: Ctx) -> Any:
        f = ctx.path("s")
        f.write_text("x")
        return ctx.cli("study", "run", str(study_spec(ctx)), "--folder", str(f))

    add("cli", "study run into a file", study_folder_file, None, "s", before_work=True)
    add(
        "cli",
        "study report a missing folder",
        lambda c: c.cli("study", "report", str(c.path("none"))),
        None,
        "none",
        before_work=True,
    )
    add("cli", "an unknown command", cli("fly"), None, "fly", before_work=True)
    add(
        "cli",
        "an unknown option",
        cli("generate", "hi", "--colour", "red"),
        None,
        "colour",
        before_work=True,
    )
    add(
        "cli",
        "demo --out an existing file",
        lambda c: c.cli("demo", "--out", str(c.saved())),
        None,
        "folder",
        before_work=True,
    )
    del SteerlensError


def _other_model_file(ctx: Ctx) -> Path:
    import torch

    from steerlens import SteeringVector

    return SteeringVector({1: torch.ones(64)}, "gpt2").save(ctx.path("gpt2.safetensors"))


for _area in (
    _files,
    _values,
    _optimizer,
    _data,
    _steering,
    _generation,
    _evaluation,
    _baselines,
    _interop,
    _studies,
    _model,
    _cli,
):
    _area()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="run only this area (nothing is written)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--log", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        worker(args.worker, args.log, args.only)
        return
    t0 = time.perf_counter()
    table = sweep(args.only)
    print(summary(table))
    print(f"\n{time.perf_counter() - t0:.0f} s")
    if not args.only:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        counts = Counter(r["outcome"] for r in table)
        args.out.write_text(json.dumps({"counts": counts, "cases": table}, indent=1) + "\n")
        print(f"wrote {args.out}")
    if any(r["outcome"] in FAILURES for r in table):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
