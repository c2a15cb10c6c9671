"""The sweep's framework: cases, the context they share, classification, the registry of areas,
the worker processes that run the cases and the JSON they end in."""

# mypy: ignore-errors
# (the cases pass wrong types on purpose)

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FAILURES = ("raw error", "silent", "crash", "lost")
NOT_RUN = "not run"
CASE_TIMEOUT_S = 120.0

# The areas, in the order their cases run; each is the module of that name in this package.
AREAS = (
    "files",
    "vector",
    "optimizer",
    "data",
    "steering",
    "generation",
    "evaluation",
    "baselines",
    "interop",
    "studies",
    "model",
    "cli",
)


# --- cases and the context they share ------------------------------------------------------------


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


def cases(area: str, rows: Iterable[tuple[Any, ...]]) -> list[Case]:
    """One area's cases from its table, one row each: ``(name, run, ok, mentions[, flags])``.

    ``run`` takes the `Ctx`; ``ok`` judges a result (None: only an error is right); ``mentions``
    is what an error must name: a fragment, a tuple of them or None; ``flags``, a dict, sets the
    rest of the `Case` (``python_ok``, ``before_work``, ``injected``, ``needs``)."""
    built = []
    for name, run, ok, *rest in rows:
        if len(rest) > 2:
            raise ValueError(f"{area}: {name}: a row has at most 5 fields, not {3 + len(rest)}")
        mentions = rest[0] if rest else None
        flags = rest[1] if len(rest) > 1 else {}
        if mentions is None:
            mentions = ()
        elif isinstance(mentions, str):
            mentions = (mentions,)
        built.append(Case(area, name, run, ok, tuple(mentions), **flags))
    return built


def all_cases() -> list[Case]:
    """Every area's cases in the order of `AREAS` (a case's index names it between processes)."""
    return [
        case for area in AREAS for case in importlib.import_module(f".{area}", __package__).CASES
    ]


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


# --- classification ------------------------------------------------------------------------------


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


# --- the worker: runs the cases from one index on, logging each ----------------------------------


def worker(cases: list[Case], start: int, log: Path, only: str | None) -> None:
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="steerlens-sweep-") as tmp:
        ctx = Ctx(Path(tmp))
        ctx.tiny  # noqa: B018 - build the model before timing the first case
        with log.open("a") as out:
            for i, case in enumerate(cases):
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


def _run_worker(script: Path, start: int, log: Path, only: str | None) -> None:
    argv = [sys.executable, str(script), "--worker", str(start), "--log", str(log)]
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


def sweep(cases: list[Case], script: Path, only: str | None) -> list[dict[str, Any]]:
    """Run ``cases`` in workers (``script --worker``), a fresh one after each crash or hang."""
    with tempfile.TemporaryDirectory(prefix="steerlens-sweep-log-") as tmp:
        log = Path(tmp) / "cases.jsonl"
        start = 0
        while True:
            _run_worker(script, start, log, only)
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
    for i, case in enumerate(cases):
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


def main(description: str, script: Path, results: Path) -> None:
    """The command line of ``script`` (the entry point, which workers run again with
    ``--worker``); the JSON goes to ``results`` unless ``--out`` says otherwise."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--only", help="run only this area (nothing is written)")
    parser.add_argument("--out", type=Path, default=results, help="where the JSON goes")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--log", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    cases = all_cases()
    if args.worker is not None:
        worker(cases, args.worker, args.log, args.only)
        return
    t0 = time.perf_counter()
    table = sweep(cases, script, args.only)
    print(summary(table))
    print(f"\n{time.perf_counter() - t0:.0f} s")
    if not args.only:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        counts = Counter(r["outcome"] for r in table)
        args.out.write_text(json.dumps({"counts": counts, "cases": table}, indent=1) + "\n")
        print(f"wrote {args.out}")
    if any(r["outcome"] in FAILURES for r in table):
        raise SystemExit(1)
