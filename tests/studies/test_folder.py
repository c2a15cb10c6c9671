"""The study folder: manifest, the queryable table, crash repair, foreign and changed folders."""

from __future__ import annotations

import dataclasses
import json
import sqlite3

import pandas as pd
import pytest

from steerlens.errors import StudyFolderError
from steerlens.studies.folder import FORMAT_VERSION, StudyFolder
from steerlens.studies.phases import train_units
from steerlens.studies.spec import Example, OptimizerSettings, StudySpec
from steerlens.version import __version__


@pytest.fixture
def spec() -> StudySpec:
    return StudySpec(
        examples=[Example(prompt="the cat", promote=[" sat"])],
        layers=[0, 1],
        model="tiny",
        optimizer=OptimizerSettings(lr=0.1, max_steps=2),
    )


@pytest.fixture
def results(tiny, spec):
    return dict(zip(spec.units(), train_units(tiny, spec, spec.units()), strict=True))


def test_a_new_folder_gets_a_manifest_and_an_empty_table(tmp_path, spec):
    folder = StudyFolder.prepare(tmp_path / "s", spec)
    manifest = json.loads((tmp_path / "s" / "study.json").read_text())
    assert manifest["format"] == "steerlens-study"
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["steerlens_version"] == __version__
    assert manifest["spec_hash"] == spec.spec_hash
    assert StudySpec.from_toml(tmp_path / "s" / "spec.toml") == spec
    assert folder.spec == spec and folder.table().empty and folder.finished() == set()


def test_a_recorded_unit_has_its_vector_and_a_row_pandas_reads(tmp_path, spec, results):
    folder = StudyFolder.prepare(tmp_path / "s", spec)
    unit, result = next(iter(results.items()))
    folder.record(unit, result)
    table = folder.table()
    row = table.iloc[0]
    assert (row.unit, row.layer, row.seed, row.objective, row.status) == (
        unit.name,
        unit.layer,
        0,
        "promotion",
        "done",
    )
    assert row.steps == 2 and row.stop_reason == result.stop_reason
    # Exact: the row holds the very floats record() computed, and sqlite's REAL (float64) and
    # JSON (shortest round-tripping repr) both give them back unchanged.
    assert row.initial_loss == float(result.loss_history[0].sum())
    assert row.final_loss == float(result.loss_history[-1].sum())
    assert json.loads(row.final_losses) == result.final_losses
    vector = folder.vector(unit)
    assert (vector.vector == result.vector.vector).all()
    assert vector.provenance["study"] == {"unit": unit.name, "spec_hash": spec.spec_hash}
    assert (tmp_path / "s" / row.vector_file).is_file()
    with sqlite3.connect(tmp_path / "s" / "results.sqlite") as con:  # plain pandas works too
        assert pd.read_sql("SELECT unit FROM units", con).unit.tolist() == [unit.name]


def test_recording_a_unit_again_replaces_its_row(tmp_path, spec, results):
    folder = StudyFolder.prepare(tmp_path / "s", spec)
    unit, result = next(iter(results.items()))
    folder.record_failure(unit, "RuntimeError: boom")
    assert folder.failures() == {unit.name: "RuntimeError: boom"}
    folder.record(unit, result)
    folder.record(unit, result)
    assert folder.table().unit.tolist() == [unit.name] and folder.failures() == {}


def test_repair_drops_rows_without_files_and_temporary_files(tmp_path, spec, results):
    folder = StudyFolder.prepare(tmp_path / "s", spec)
    (first, r1), (second, r2) = results.items()
    folder.record(first, r1)
    folder.record(second, r2)
    folder.vector_path(first).unlink()  # a row without its file
    (tmp_path / "s" / "vectors" / ".x.safetensors.abc.tmp").write_bytes(b"partial")
    again = StudyFolder.prepare(tmp_path / "s", spec)
    assert again.finished() == {second.name}
    assert not list((tmp_path / "s" / "vectors").glob(".*.tmp"))
    with pytest.raises(StudyFolderError, match="has no saved vector"):
        again.vector(first)


def test_a_vector_file_without_a_row_is_not_a_finished_unit(tmp_path, spec, results):
    folder = StudyFolder.prepare(tmp_path / "s", spec)
    unit, result = next(iter(results.items()))
    result.vector.save(folder.vector_path(unit))  # crash after the file, before the row
    assert StudyFolder.prepare(tmp_path / "s", spec).finished() == set()


def test_a_changed_spec_is_refused_with_the_ways_forward(tmp_path, spec, results):
    folder = StudyFolder.prepare(tmp_path / "s", spec)
    unit, result = next(iter(results.items()))
    folder.record(unit, result)
    changed = dataclasses.replace(spec, optimizer=OptimizerSettings(lr=0.5, max_steps=2))
    with pytest.raises(StudyFolderError) as info:
        StudyFolder.prepare(tmp_path / "s", changed)
    message = str(info.value)
    assert "another spec (changed: optimizer" in message and "1 finished units" in message
    assert "new folder" in message and "versioned" in message and "overwrite" in message
    assert folder.finished() == {unit.name}  # nothing lost


def test_versioned_runs_a_changed_spec_beside_the_old_one(tmp_path, spec, results):
    unit, result = next(iter(results.items()))
    StudyFolder.prepare(tmp_path / "s", spec).record(unit, result)
    changed = dataclasses.replace(spec, seeds=(1,))
    v2 = StudyFolder.prepare(tmp_path / "s", changed, if_changed="versioned")
    assert v2.path == tmp_path / "s-v2" and v2.spec == changed
    assert StudyFolder.prepare(tmp_path / "s", changed, if_changed="versioned").path == v2.path
    assert StudyFolder.prepare(tmp_path / "s", spec, if_changed="versioned").path == (
        tmp_path / "s"
    )
    assert StudyFolder.open(tmp_path / "s").finished() == {unit.name}


def test_overwrite_deletes_only_the_old_study(tmp_path, spec, results):
    unit, result = next(iter(results.items()))
    StudyFolder.prepare(tmp_path / "s", spec).record(unit, result)
    (tmp_path / "s" / "notes.txt").write_text("mine")
    changed = dataclasses.replace(spec, seeds=(1,))
    folder = StudyFolder.prepare(tmp_path / "s", changed, if_changed="overwrite")
    assert folder.spec == changed and folder.finished() == set()
    assert not list((tmp_path / "s" / "vectors").iterdir())
    assert (tmp_path / "s" / "notes.txt").read_text() == "mine"


def test_a_folder_of_another_tool_is_refused(tmp_path, spec):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "data.csv").write_text("a,b\n")
    with pytest.raises(StudyFolderError, match=r"not a steerlens study folder.*new or empty"):
        StudyFolder.prepare(tmp_path / "other", spec)
    (tmp_path / "other" / "study.json").write_text('{"format": "mlflow"}')
    with pytest.raises(StudyFolderError, match=r"not written by steerlens.*'mlflow'"):
        StudyFolder.prepare(tmp_path / "other", spec, if_changed="overwrite")
    (tmp_path / "other" / "study.json").write_text("not json")
    with pytest.raises(StudyFolderError, match="not a steerlens study manifest"):
        StudyFolder.open(tmp_path / "other")
    assert (tmp_path / "other" / "data.csv").read_text() == "a,b\n"
    (tmp_path / "file").write_text("x")
    with pytest.raises(StudyFolderError, match="is a file"):
        StudyFolder.prepare(tmp_path / "file", spec)


def test_a_database_of_another_tool_is_refused(tmp_path, spec):
    StudyFolder.prepare(tmp_path / "s", spec)
    (tmp_path / "s" / "results.sqlite").unlink()
    with sqlite3.connect(tmp_path / "s" / "results.sqlite") as con:
        con.execute("CREATE TABLE t (x)")
    with pytest.raises(StudyFolderError, match="SQLite database not written by steerlens"):
        StudyFolder.prepare(tmp_path / "s", spec)
    (tmp_path / "s" / "results.sqlite").write_bytes(b"garbage" * 100)
    with pytest.raises(StudyFolderError, match="not a SQLite database"):
        StudyFolder.open(tmp_path / "s")


def test_a_folder_from_a_newer_steerlens_is_refused_with_the_fix(tmp_path, spec):
    StudyFolder.prepare(tmp_path / "s", spec)
    path = tmp_path / "s" / "study.json"
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps(manifest | {"format_version": 99, "steerlens_version": "9.0"}))
    with pytest.raises(StudyFolderError, match=r"format version 99.*'9.0'.*pip install -U"):
        StudyFolder.prepare(tmp_path / "s", spec)


def test_an_interrupted_creation_is_completed(tmp_path, spec):
    StudyFolder.prepare(tmp_path / "s", spec)
    (tmp_path / "s" / "spec.toml").unlink()
    (tmp_path / "s" / "results.sqlite").unlink()
    folder = StudyFolder.prepare(tmp_path / "s", spec)
    assert (tmp_path / "s" / "spec.toml").is_file() and folder.table().empty


def test_a_full_disk_during_a_write_names_the_folder_and_keeps_what_was_saved(
    tmp_path, spec, results
):
    folder = StudyFolder.prepare(tmp_path / "study", spec)
    unit, result = next(iter(results.items()))
    folder.record(unit, result)
    with pytest.raises(StudyFolderError, match=r"study' failed: database or disk is full.*kept"):
        with folder.transaction() as con:
            con.execute("DELETE FROM units")
            raise sqlite3.OperationalError("database or disk is full")
    assert folder.finished() == {unit.name}  # rolled back: nothing lost


def test_a_folder_from_before_the_steerability_kl_gets_the_column(tmp_path, spec, results):
    folder = StudyFolder.prepare(tmp_path / "s", spec)
    unit, result = next(iter(results.items()))
    folder.record(unit, result)
    with sqlite3.connect(tmp_path / "s" / "results.sqlite") as con:
        con.execute("ALTER TABLE steerability DROP COLUMN kl")
    old = {"prompt_index": 0, "prompt": "the cat", "effect": 1.0, "slope": 1.0}
    rows = [old | {"strength_index": k, "strength": s} for k, s in enumerate((0.0, 1.0))]
    reopened = StudyFolder.open(tmp_path / "s")
    reopened.record_steerability(unit, [r | {"kl": 0.1 * k} for k, r in enumerate(rows)])
    [stored] = reopened.steerability_results().values()
    assert stored.kl is not None and stored.kl.tolist() == [0.0, 0.1]
