"""The Ray backend on a local instance: equal to the serial run; dead workers retried; a unit
whose worker keeps dying is recorded as failed, the others kept; missing ray is one clear error."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from study_cases import assert_same_training
from tolerances import TINY32, loss_bounds

from steerlens.errors import MissingPackageError, StudyError
from steerlens.studies.folder import StudyFolder
from steerlens.studies.ray_backend import RayBackend, train_on_worker
from steerlens.studies.run import run_study
from steerlens.studies.spec import StudySpec

ray = pytest.importorskip("ray")

SPECS = Path(__file__).parent / "specs"


@pytest.fixture(scope="module")
def local_ray():
    # One torch thread per worker, as the tests' own process runs tiny models (conftest.py):
    # the same kernels in the same order, where a test needs the same floats.
    env = {"env_vars": {"OMP_NUM_THREADS": "1"}}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env=env)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def spec() -> StudySpec:
    return StudySpec.from_toml(SPECS / "tiny.toml")


def test_ray_results_equal_the_serial_run(local_ray, spec, tmp_path, tiny):
    from steerlens.studies.steerability import steerability

    serial = run_study(spec, tmp_path / "serial", batch_size=2, progress=False)
    parallel = run_study(spec, tmp_path / "ray", backend="ray", batch_size=2, progress=False)
    # Ray workers are other processes (other threads, on a cluster other devices): the same
    # training, its float32 sums in another order (losses within the derived bound, vectors
    # by direction).
    assert_same_training(tiny, spec, parallel, serial)
    ta, tb = serial.table(), parallel.table()
    assert tb.unit.is_unique and (tb.status == "done").all()
    ta, tb = ta.set_index("unit").sort_index(), tb.set_index("unit").sort_index()
    assert (ta.steps == tb.steps).all()
    ea = serial.evaluations().sort_values(["unit", "prompt_index"]).reset_index(drop=True)
    eb = parallel.evaluations().sort_values(["unit", "prompt_index"]).reset_index(drop=True)
    assert ea[["unit", "prompt", "own", "judged"]].equals(eb[["unit", "prompt", "own", "judged"]])
    # The steerability phase ran as Ray tasks too. Its effects belong to the Ray run's own
    # vectors (Adam's coordinates differ from the serial run's), so they are checked against
    # steerability on those vectors here: the same rows summed in another process, each
    # effect (steered minus unsteered, a mean over promote completions) within twice the
    # mean of its completions' k TINY32 (tests/tolerances.py).
    sa, sb = serial.steerability_table(), parallel.steerability_table()
    assert len(sa) == len(sb) == 4 * 2 * 4 and sa.unit.tolist() == sb.unit.tolist()
    examples = spec.steerability_examples(tiny)
    bounds = torch.tensor([2 * loss_bounds(tiny, [dp]).mean() for dp in examples])
    for name in parallel.finished():
        direct = steerability(
            tiny,
            parallel.vector(name),
            examples,
            strengths=spec.evaluation.steerability_strengths,
            neutral_prompts=[spec.prompt(tiny, p) for p in spec.evaluation.neutral_prompts],
            batch_size=2,
            progress=False,
        )
        mine = sb[sb.unit == name].sort_values(["prompt_index", "strength_index"])
        stored = torch.tensor(mine.effect.values).reshape(direct.effects.shape)
        assert ((stored - direct.effects).abs() <= bounds[:, None]).all(), name


def test_the_grid_as_a_ray_task_equals_the_serial_grid(local_ray, tmp_path):
    from steerlens.studies.phases import grid_sources

    spec = StudySpec.from_toml(SPECS / "report.toml")
    serial = run_study(spec, tmp_path / "serial", progress=False)
    sources = {
        layer: (next(u for u in spec.units() if u.name == name), serial.vector(name))
        for layer, name in grid_sources(spec, serial.matrix()).items()
    }
    rows = RayBackend().grid(spec, sources, 16)
    assert not isinstance(rows, str)
    stored = serial.grid_table()
    assert [(r["layer"], r["strength"], r["source_unit"]) for r in rows] == list(
        zip(stored.layer, stored.strength, stored.source_unit, strict=True)
    )
    assert [r["behavior"] for r in rows] == stored.behavior.tolist()
    # The same replies scored in another process: a mean of per-token log-probabilities,
    # each within TINY32 whatever the order of the float32 sums (tests/tolerances.py).
    assert torch.allclose(
        torch.tensor([r["nll"] for r in rows], dtype=torch.float64),
        torch.tensor(stored.nll.values),
        atol=TINY32,
        rtol=0,
    )


def test_a_dead_worker_is_retried(local_ray, spec, tmp_path):
    marker = tmp_path / "died-once"
    victim = spec.units()[1].name

    def dies_once(spec, units, device):
        import os

        if any(u.name == victim for u in units) and not marker.exists():
            marker.write_text("x")
            os._exit(1)  # the worker process dies
        return train_on_worker(spec, units, device)

    backend = RayBackend(max_retries=2, task=dies_once)
    folder = run_study(spec, tmp_path / "s", backend=backend, batch_size=1, progress=False)
    assert marker.exists()
    table = folder.table()
    assert len(table) == 4 and table.unit.is_unique and (table.status == "done").all()


def test_a_unit_whose_worker_keeps_dying_is_failed_and_the_others_kept(local_ray, spec, tmp_path):
    victim = spec.units()[2].name

    def always_dies(spec, units, device):
        import os

        if any(u.name == victim for u in units):
            os._exit(1)
        return train_on_worker(spec, units, device)

    backend = RayBackend(max_retries=1, task=always_dies)
    with pytest.raises(StudyError, match=rf"1 of 4 units failed \(first: unit {victim!r}: the Ray"):
        run_study(
            spec, tmp_path / "s", backend=backend, batch_size=1, progress=False, evaluate=False
        )
    folder = StudyFolder.open(tmp_path / "s")
    assert list(folder.failures()) == [victim]
    assert "after 1 retries" in folder.failures()[victim]
    assert len(folder.finished()) == 3

    # The next run retries only the failed unit.
    done = run_study(spec, tmp_path / "s", backend="ray", batch_size=1, progress=False)
    table = done.table()
    assert len(table) == 4 and table.unit.is_unique and (table.status == "done").all()


def test_a_layer_out_of_range_is_refused_before_any_task(local_ray, spec, tmp_path):
    bad = dataclasses.replace(spec, layers=(0, 9))
    with pytest.raises(Exception, match=r"layer 9 .* is out of range"):
        run_study(bad, tmp_path / "s", backend="ray", progress=False)
    assert StudyFolder.open(tmp_path / "s").table().empty


def test_missing_ray_is_one_clear_error(monkeypatch, spec, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(MissingPackageError, match=r"pip install steerlens\[ray\]"):
        run_study(spec, tmp_path / "s", backend="ray", progress=False)
    assert not (tmp_path / "s").exists()  # refused before any work


def test_the_benchmark_on_ray_equals_the_serial_run(local_ray, tmp_path):
    """One task per behaviour (an A/B and an open-ended one), cells written by the driver as
    they return; the rows equal the serial run's and a second run reads them all back."""
    from steerlens.datasets import ABItem, Behaviour, OpenEndedBehaviour, OpenItem
    from steerlens.studies.bench import CAA, BenchSettings, OneShotEach, RayCells, benchmark
    from steerlens.testing import tiny_model
    from steerlens.training import OptimizeConfig

    def items(tag: str, n: int) -> tuple[ABItem, ...]:
        return tuple(ABItem(f"{tag} {i}?", "yes", "no", "AB"[i % 2]) for i in range(n))

    data = [
        Behaviour("toy", train=items("train", 6), test=items("test", 3)),
        OpenEndedBehaviour(
            "open", tuple(OpenItem(f"Q{i}?", "Oui, merci.") for i in range(4)), ("T?",), "french"
        ),
    ]
    settings = BenchSettings(
        test_items=3,
        examples=2,
        validation_items=2,
        entanglement_items=2,
        rollout_tokens=2,
        reply_tokens=3,
        bootstrap=10,
        neutral_prompts=("Hi",),
        optimizer=OptimizeConfig(lr=0.1, max_steps=3),
    )
    methods = [OneShotEach(), CAA(n=4)]
    model = tiny_model()
    serial = benchmark(model, data, methods, [1], settings)
    folder = tmp_path / "bench"
    # The rows hold trained vectors' metrics, and Adam's coordinates follow the order of the
    # float32 sums (tests/tolerances.py), so no bound carries over from the losses. The worker
    # runs the same computation in the same order instead: the CPU, one torch thread like this
    # process; then every row is the serial run's exactly.
    backend = RayCells(model="tiny", device="cpu", num_gpus=0)

    @ray.remote(num_cpus=1)
    def threads() -> int:
        return torch.get_num_threads()

    assert ray.get(threads.remote()) == torch.get_num_threads() == 1
    parallel = benchmark(model, data, methods, [1], settings, folder=folder, backend=backend)
    assert [(r["behaviour"], r["vector"]) for r in parallel.rows] == [
        (r["behaviour"], r["vector"]) for r in serial.rows
    ]
    for got, want in zip(parallel.rows, serial.rows, strict=True):
        for key, value in want.items():
            if isinstance(value, float) and math.isnan(value):
                assert math.isnan(got[key]), key
            else:
                assert got[key] == value, key
    again = benchmark(model, data, methods, [1], settings, folder=folder, backend=backend)
    # NaN != NaN: compare the JSON text the folder stores.
    assert json.dumps(again.rows, sort_keys=True) == json.dumps(parallel.rows, sort_keys=True)


def test_ray_cells_refuse_another_model_name():
    from steerlens.errors import SpecError
    from steerlens.studies.bench import RayCells

    with pytest.raises(SpecError, match="unknown study model 'gpt2'"):
        RayCells(model="gpt2")
