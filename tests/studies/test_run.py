"""run_study: resume after a crash loses nothing and duplicates nothing; failures are kept apart;
the evaluation phase; ``steerlens study run``."""

from __future__ import annotations

import dataclasses
import importlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from study_cases import assert_same_training
from tolerances import kl_bound

from steerlens import Steering, cli
from steerlens.errors import LayerError, StudyError, StudyFolderError
from steerlens.evaluation.judges import StringMatchJudge
from steerlens.studies import phases as phases_mod
from steerlens.studies import serial_backend as serial_mod
from steerlens.studies.folder import StudyFolder, writer_lock
from steerlens.studies.run import run_study
from steerlens.studies.serial_backend import SerialBackend
from steerlens.studies.spec import OptimizerSettings, StudySpec

SPECS = Path(__file__).parent / "specs"


@pytest.fixture(scope="module")
def spec() -> StudySpec:
    return StudySpec.from_toml(SPECS / "tiny.toml")


@pytest.fixture
def backend(tiny):
    return SerialBackend(model=tiny)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, spec):
    """An uninterrupted run of the tiny spec."""
    return run_study(spec, tmp_path_factory.mktemp("ref") / "study", progress=False)


def _count_calls(monkeypatch, *, fail_on: int | None = None, error: BaseException | None = None):
    """Wrap optimize_many; raise ``error`` on call ``fail_on`` (1-based)."""
    calls: list[int] = []
    real = phases_mod.optimize_many

    def wrapped(model, jobs, *, progress=None):
        calls.append(len(jobs))
        if len(calls) == fail_on:
            raise error  # type: ignore[misc]
        return real(model, jobs, progress=progress)

    monkeypatch.setattr(phases_mod, "optimize_many", wrapped)
    return calls


def test_a_study_trains_every_unit_and_evaluates_it(reference, spec):
    table = reference.table()
    assert table.unit.tolist() == [u.name for u in spec.units()]
    assert (table.status == "done").all() and (table.steps == 3).all()
    assert len(list((reference.path / "vectors").iterdir())) == 4
    ev = reference.evaluations()
    # 2 example prompts + 1 held-out prompt per vector.
    assert len(ev) == 4 * 3 and set(ev.unit) == set(table.unit)
    own = ev[ev.own == 1]
    assert sorted(own.unit) == sorted(table.unit)
    assert ev.side_effect_kl.notna().all() and ev.reply.notna().all()


def test_a_rerun_skips_every_finished_unit(reference, spec, monkeypatch):
    calls = _count_calls(monkeypatch)
    before = reference.table()
    again = run_study(spec, reference.path, progress=False)
    assert calls == [] and again.table().equals(before)


def test_ctrl_c_mid_run_keeps_finished_units_and_a_rerun_finishes_the_rest(
    tmp_path, spec, backend, reference, monkeypatch, tiny
):
    calls = _count_calls(monkeypatch, fail_on=3, error=KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        run_study(spec, tmp_path / "s", backend=backend, batch_size=1, progress=False)
    folder = StudyFolder.open(tmp_path / "s")
    done = [u.name for u in spec.units()[:2]]
    assert sorted(folder.finished()) == sorted(done) and len(calls) == 3
    files = sorted(p.name for p in (tmp_path / "s" / "vectors").iterdir())
    assert files == sorted(f"{n}.safetensors" for n in done)  # no partial file
    stamps = {n: folder.vector_path(n).stat().st_mtime_ns for n in done}

    monkeypatch.undo()
    calls = _count_calls(monkeypatch)
    finished = run_study(spec, tmp_path / "s", backend=backend, batch_size=1, progress=False)
    assert calls == [1, 1]  # only the two missing units
    table = finished.table()
    assert sorted(table.unit) == sorted(u.name for u in spec.units())
    assert table.unit.is_unique and (table.status == "done").all()
    assert {n: finished.vector_path(n).stat().st_mtime_ns for n in done} == stamps
    # One unit per optimize_many call here, four in the reference: the same training, its
    # float32 sums in another order (losses within the derived bound, vectors by direction).
    assert_same_training(tiny, spec, finished, reference)
    assert len(finished.evaluations()) == len(reference.evaluations())


def test_a_failing_unit_is_recorded_and_the_others_kept(tmp_path, spec, backend, monkeypatch):
    _count_calls(monkeypatch, fail_on=3, error=RuntimeError("CUDA out of memory"))
    with pytest.raises(StudyError) as info:
        run_study(spec, tmp_path / "s", backend=backend, batch_size=1, progress=False)
    third = spec.units()[2].name
    message = str(info.value)
    assert f"1 of 4 units failed (first: unit {third!r}: RuntimeError: CUDA out of memory)" in (
        message
    )
    assert "3 finished units are saved" in message and "run the study again" in message
    folder = StudyFolder.open(tmp_path / "s")
    assert folder.failures() == {third: "RuntimeError: CUDA out of memory"}
    assert len(folder.finished()) == 3

    monkeypatch.undo()
    calls = _count_calls(monkeypatch)
    table = run_study(spec, tmp_path / "s", backend=backend, progress=False).table()
    assert calls == [1] and len(table) == 4 and (table.status == "done").all()


def test_one_bad_unit_in_a_batch_does_not_fail_the_batch(tmp_path, spec, backend, monkeypatch):
    real = phases_mod.optimize_many
    bad_prompt = spec.examples[1].prompt

    def optimize_many(model, jobs, *, progress=None):
        if any(bad_prompt in j.datapoints.prompt and j.layer == 1 for j in jobs):
            raise RuntimeError("bad unit")
        return real(model, jobs, progress=progress)

    monkeypatch.setattr(phases_mod, "optimize_many", optimize_many)
    with pytest.raises(StudyError, match="unit 'cats-L1-s0-promotion'"):
        run_study(spec, tmp_path / "s", backend=backend, batch_size=4, progress=False)
    assert len(StudyFolder.open(tmp_path / "s").finished()) == 3


def test_a_layer_out_of_range_is_refused_before_any_training(tmp_path, spec, monkeypatch):
    calls = _count_calls(monkeypatch)
    bad = dataclasses.replace(spec, layers=(1, 4))
    with pytest.raises(
        LayerError, match=r"layer 4 in the spec's layers \[1, 4\] is out of range.*2 layers \(0-1\)"
    ):
        run_study(bad, tmp_path / "s", progress=False)
    assert calls == [] and StudyFolder.open(tmp_path / "s").table().empty


def test_a_changed_spec_is_refused_and_runs_nothing(reference, spec, monkeypatch):
    calls = _count_calls(monkeypatch)
    changed = dataclasses.replace(spec, optimizer=OptimizerSettings(lr=0.2, max_steps=3))
    with pytest.raises(StudyFolderError, match=r"another spec \(changed: optimizer"):
        run_study(changed, reference.path, progress=False)
    assert calls == [] and len(reference.finished()) == 4


def test_a_judge_that_raises_names_the_unit_and_keeps_everything(
    tmp_path, spec, backend, monkeypatch
):
    def broken(self, texts):
        raise RuntimeError("judge service down")

    monkeypatch.setattr(StringMatchJudge, "judge_all", broken)
    with pytest.raises(StudyError) as info:
        run_study(spec, tmp_path / "s", backend=backend, progress=False)
    message = str(info.value)
    assert "evaluating 4 unit(s) failed (first: unit 'ex0-L0-s0-promotion'" in message
    assert "judge service down" in message and "every trained vector" in message
    folder = StudyFolder.open(tmp_path / "s")
    assert len(folder.finished()) == 4 and folder.evaluations().empty

    monkeypatch.undo()
    calls = _count_calls(monkeypatch)
    done = run_study(spec, tmp_path / "s", backend=backend, progress=False)
    assert calls == [] and len(done.evaluations()) == 12  # evaluation only


def test_evaluation_resumes_per_vector(tmp_path, spec, backend):
    run_study(spec, tmp_path / "s", backend=backend, progress=False, evaluate=False)
    folder = StudyFolder.open(tmp_path / "s")
    assert len(folder.finished()) == 4 and folder.evaluations().empty
    first = spec.units()[0]
    rows = phases_mod.evaluate_units(backend.model, spec, [(first, folder.vector(first))])[0]
    assert not isinstance(rows, str)
    folder.record_evaluation(first, rows)
    seen: list[list[str]] = []
    real = phases_mod.evaluate_units

    def evaluate_units(model, spec, items, *, batch_size=16):
        seen.append([u.name for u, _ in items])
        return real(model, spec, items, batch_size=batch_size)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(serial_mod, "evaluate_units", evaluate_units)
        run_study(spec, tmp_path / "s", backend=backend, progress=False)
    assert seen == [[u.name for u in spec.units()[1:]]]
    assert len(folder.evaluations()) == 12


# -- the steerability and grid phases --------------------------------------------------------


def test_the_steerability_phase_equals_a_direct_call(reference, spec, tiny):
    from steerlens.studies.steerability import steerability

    results = reference.steerability_results()
    assert list(results) == [u.name for u in spec.units()]
    examples = spec.steerability_examples(tiny)
    table = reference.steerability_table()
    assert len(table) == 4 * 2 * 4  # units x example prompts x multipliers
    for name, stored in results.items():
        direct = steerability(
            tiny,
            reference.vector(name),
            examples,
            strengths=(-1, 0, 1, 2),
            neutral_prompts=[spec.prompt(tiny, p) for p in spec.evaluation.neutral_prompts],
            batch_size=16,
            progress=False,
        )
        # Exact: the phase makes this very call (run_study's batch_size 16) on the saved
        # vector (float32 safetensors round-trip exactly), in this process, and the folder
        # stores float64 (sqlite REAL): the same operations give the same floats. The KL is
        # the exception: next_token_kl shares a prompt's prefix between calls, so its rows may
        # be packed otherwise (bound derived in kl_bound).
        assert stored.prompts == direct.prompts
        assert torch.equal(stored.strengths, direct.strengths)
        assert torch.equal(stored.effects, direct.effects)
        assert torch.equal(stored.slopes, direct.slopes)
        assert torch.equal(stored.unsteered_logprob, direct.unsteered_logprob)
        assert stored.kl is not None and direct.kl is not None
        neutral = [spec.prompt(tiny, p) for p in spec.evaluation.neutral_prompts]
        rows = zip(direct.strengths.tolist(), stored.kl.tolist(), direct.kl.tolist(), strict=True)
        for m, a, b in rows:
            plan = Steering(reference.vector(name), strength=m)
            assert abs(a - b) <= kl_bound(tiny, neutral, plan), (name, m)
        mine = table[table.unit == name]
        assert mine.slope.tolist() == direct.slopes.repeat_interleave(4).tolist()


def test_steerability_resumes_per_unit(tmp_path, spec, backend):
    run_study(spec, tmp_path / "s", backend=backend, progress=False, evaluate=False)
    folder = StudyFolder.open(tmp_path / "s")
    assert folder.steerability_table().empty
    first = spec.units()[0]
    [rows] = phases_mod.measure_steerability(backend.model, spec, [(first, folder.vector(first))])
    assert not isinstance(rows, str)
    folder.record_steerability(first, rows)
    seen: list[list[str]] = []
    real = phases_mod.measure_steerability

    def measure_steerability(model, spec, items, *, batch_size=16):
        seen.append([u.name for u, _ in items])
        return real(model, spec, items, batch_size=batch_size)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(serial_mod, "measure_steerability", measure_steerability)
        run_study(spec, tmp_path / "s", backend=backend, progress=False)
        assert seen == [[u.name] for u in spec.units()[1:]]
        seen.clear()
        run_study(spec, tmp_path / "s", backend=backend, progress=False)
        assert seen == []  # everything is saved
    assert folder.steerability_measured() == {u.name for u in spec.units()}


def test_a_failing_steerability_unit_is_reported_and_the_others_kept(
    tmp_path, spec, backend, monkeypatch
):
    import importlib

    steer_mod = importlib.import_module("steerlens.studies.steerability")
    victim = spec.units()[1].name
    real = steer_mod.steerability

    def steerability(model, vector, examples, **kwargs):
        if vector.provenance["study"]["unit"] == victim:
            raise RuntimeError("NaN in the forward pass")
        return real(model, vector, examples, **kwargs)

    monkeypatch.setattr(steer_mod, "steerability", steerability)
    with pytest.raises(StudyError) as info:
        run_study(spec, tmp_path / "s", backend=backend, progress=False)
    message = str(info.value)
    assert f"steerability of 1 unit(s) failed (first: unit {victim!r}: RuntimeError" in message
    assert "redoes only the missing steerability" in message
    folder = StudyFolder.open(tmp_path / "s")
    assert folder.steerability_measured() == {u.name for u in spec.units()} - {victim}
    assert len(folder.evaluations()) == 12

    monkeypatch.undo()
    run_study(spec, tmp_path / "s", backend=backend, progress=False)
    assert victim in folder.steerability_measured()


def test_a_unit_trained_again_loses_its_old_steerability(reference, spec, tmp_path):
    import shutil

    copy = tmp_path / "s"
    shutil.copytree(reference.path, copy)
    folder = StudyFolder.open(copy)
    name = spec.units()[0].name
    folder.vector_path(name).unlink()  # a vector deleted by hand: its unit is redone
    StudyFolder.prepare(copy, spec)
    assert name not in folder.steerability_measured() and name not in folder.finished()


@pytest.fixture(scope="module")
def grid_study(tmp_path_factory, tiny):
    spec = StudySpec.from_toml(SPECS / "report.toml")
    path = tmp_path_factory.mktemp("grid") / "study"
    return spec, run_study(spec, path, backend=SerialBackend(model=tiny), progress=False)


def test_the_grid_phase_uses_each_layers_best_transferring_vector(grid_study, tiny):
    from steerlens.studies.grid import layer_strength_grid

    spec, folder = grid_study
    matrix = folder.matrix()
    sources = phases_mod.grid_sources(spec, matrix)
    best = [name for name, _ in matrix.ranking()]
    for layer, name in sources.items():
        mine = [u.name for u in spec.units() if u.layer == layer]
        assert name == min(mine, key=best.index)
    table = folder.grid_table()
    assert len(table) == 2 * 2 and dict(zip(table.layer, table.source_unit, strict=True)) == sources
    stored = folder.grid()
    ev = spec.evaluation
    direct = layer_strength_grid(
        tiny,
        {layer: folder.vector(name) for layer, name in sources.items()},
        layers=list(sources),
        strengths=ev.grid.strengths,
        prompts=ev.prompts,
        judge=ev.judge.build(),
        neutral_prompts=ev.neutral_prompts,
        max_new_tokens=ev.max_new_tokens,
        batch_size=16,
        progress=False,
    )
    assert stored.layers == direct.layers and stored.strengths == direct.strengths
    assert stored.replies == direct.replies
    # Exact: the phase makes this very call (run_study's batch_size 16) on the saved
    # vectors in this process, and the folder stores float64: the same floats (NaN equals NaN
    # here).
    for metric in direct.metrics:
        np.testing.assert_array_equal(stored.get(metric), direct.get(metric), err_msg=metric)
    assert stored.frontier(max_kl=0.1).summary() == direct.frontier(max_kl=0.1).summary()


def test_the_grid_is_measured_once(grid_study, monkeypatch):
    spec, folder = grid_study
    calls: list[object] = []
    monkeypatch.setattr(serial_mod, "measure_grid", lambda *a, **k: calls.append(a))
    run_study(spec, folder.path, progress=False)
    assert calls == [] and folder.has_grid()


def test_phase_settings_are_checked(spec):
    from steerlens.errors import SpecError
    from steerlens.studies.spec import EvaluationSettings, GridSettings

    with pytest.raises(SpecError, match=r"at least two different multipliers.*or \[\] to skip"):
        EvaluationSettings(steerability_strengths=[1])
    with pytest.raises(SpecError, match="none repeated"):
        EvaluationSettings(steerability_strengths=[0, 1, 1])
    with pytest.raises(SpecError, match=r"grid\.strengths is empty"):
        GridSettings(strengths=[])
    with pytest.raises(SpecError, match=r"held-out prompts, but evaluation\.prompts is empty"):
        dataclasses.replace(
            spec, evaluation=EvaluationSettings(grid=GridSettings(strengths=[0, 1]))
        )
    # Settings at their defaults leave the hash of specs written before them unchanged.
    assert "steerability_strengths" not in spec.to_dict()["evaluation"]
    assert "grid" not in spec.to_dict()["evaluation"]


def test_an_unknown_backend_is_refused(tmp_path, spec):
    with pytest.raises(Exception, match=r"unknown backend 'dask'.*'serial', 'ray'"):
        run_study(spec, tmp_path / "s", backend="dask")


# -- the command line -----------------------------------------------------------------------


def test_study_run_on_the_command_line_and_resume(tmp_path, capsys):
    argv = ["study", "run", str(SPECS / "tiny.toml"), "--folder", str(tmp_path / "s")]
    assert cli.main([*argv, "--no-progress", "--threads", "1"]) == 0
    out = capsys.readouterr()
    assert "4 units (2 examples x 2 layers x 1 seeds x 1 objectives)" in out.out
    assert "done: 4 units in" in out.out and "(4 trained now)" in out.out
    assert out.err.startswith("steerlens: device")
    assert cli.main([*argv, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "4 already finished, resuming" in out and "(0 trained now)" in out
    assert len(StudyFolder.open(tmp_path / "s").table()) == 4


def test_study_run_into_a_log_reports_in_lines(tmp_path, capsys, monkeypatch):
    progress_mod = importlib.import_module("steerlens.runtime.progress")
    monkeypatch.setattr(progress_mod, "LINE_EVERY_S", 0.0)  # every update, for the test
    argv = ["study", "run", str(SPECS / "tiny.toml"), "--folder", str(tmp_path / "s")]
    assert cli.main([*argv, "--threads", "1"]) == 0  # captured: stderr is not a terminal
    err = capsys.readouterr().err
    assert "study: 1/4 (25%)" in err and "study: 4/4 (100%)" in err, err


def test_study_run_errors_are_one_line(tmp_path, capsys):
    other = tmp_path / "other.toml"
    spec = StudySpec.from_toml(SPECS / "tiny.toml")
    dataclasses.replace(spec, seeds=(1,)).save_toml(other)
    folder = tmp_path / "s"
    assert cli.main(["study", "run", str(SPECS / "tiny.toml"), "--folder", str(folder)]) == 0
    capsys.readouterr()
    assert cli.main(["study", "run", str(other), "--folder", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "another spec (changed: seeds" in err
    assert "--if-changed versioned" in err
    assert cli.main(["study", "run", str(tmp_path / "missing.toml")]) == 2
    assert "no study spec file" in capsys.readouterr().err
    assert (
        cli.main(["study", "run", str(other), "--folder", str(folder), "--if-changed", "versioned"])
        == 0
    )
    assert (tmp_path / "s-v2" / "study.json").is_file()


def test_study_run_help_gives_every_default(capsys):
    with pytest.raises(SystemExit):
        cli.main(["study", "run", "--help"])
    out = capsys.readouterr().out
    assert "resumes" in out
    for option in ("--folder", "--backend", "--batch-size", "--if-changed", "--threads"):
        assert option in out
    assert out.count("(default:") >= 7


def test_a_folder_in_use_by_another_run_is_refused_with_its_holder(spec, tmp_path):
    folder = tmp_path / "s"
    with writer_lock(folder):
        with pytest.raises(StudyFolderError, match=rf"in use by process {os.getpid()} on .+ since"):
            run_study(spec, folder, progress=False)
        assert not folder.exists()  # the refused run wrote nothing
    assert run_study(spec, folder, progress=False).finished()  # free again


def test_a_lock_left_by_a_process_that_died_is_recovered(tmp_path):
    folder = tmp_path / "s"
    code = (
        "import os, sys; from steerlens.studies.folder import writer_lock\n"
        "cm = writer_lock(sys.argv[1]); cm.__enter__(); os._exit(9)"
    )
    done = subprocess.run([sys.executable, "-c", code, str(folder)], check=False)
    assert done.returncode == 9
    with writer_lock(folder):  # the OS released the dead process's lock
        pass
