"""The benchmark on Ray: one task per behaviour (all of its unfinished layers), each on a model
its worker builds once (``pip install steerlens[ray]``).

A behaviour's cells share its contrasts and scorers across layers, so a behaviour, not a cell,
is the unit of work. The driver (the process calling `steerlens.studies.bench.benchmark`) alone
writes the benchmark folder, each cell as its task returns, so an interrupted run resumes from
what finished. Workers build the model from a study model name (``"embedded"``, ``"tiny"``,
``"hub:<name>"``; see `steerlens.studies.spec.load_study_model`), and the driver checks that it
is the model it was given.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from steerlens import runtime
from steerlens.errors import SpecError, SteerlensError, StudyError, describe_error
from steerlens.studies.bench.methods import Method
from steerlens.studies.bench.results import CellResult
from steerlens.studies.bench.settings import BenchSettings
from steerlens.studies.bench.steps import Data, behaviour_cells, shared_for
from steerlens.studies.spec import check_model_name
from steerlens.studies.workers import check_ray_settings, import_ray, worker_model


def behaviour_on_worker(
    model_name: str,
    device: str | None,
    data: Data,
    name: str,
    todo: Sequence[int],
    layers: Sequence[int],
    methods: Sequence[Method],
    settings: BenchSettings,
) -> tuple[str, list[CellResult]]:
    """What one Ray task runs: behaviour ``name``'s cells at the layers ``todo``, on this
    worker's model; returns the model's id and the cells, their vectors on the CPU."""
    model = worker_model(model_name, device)
    shared = shared_for(model, data, layers, settings)
    behaviour = next(b for b in data if b.name == name)
    cells = behaviour_cells(shared, behaviour, todo, methods, settings, progress=False)
    return runtime.model_id(model), [
        dataclasses.replace(c, vectors={k: v.to("cpu") for k, v in c.vectors.items()})
        for c in cells
    ]


@dataclass(frozen=True, kw_only=True)
class RayCells:
    """Run the benchmark's behaviours as Ray tasks (``benchmark(..., backend=RayCells(...))``).

    Attributes:
        model: the study model name each worker builds (``"embedded"`` for the embedded
            SmolLM2, ``"hub:<name>"``, or ``"tiny"`` in tests); it must be the model passed to
            `benchmark`.
        address: the Ray cluster (default: ``RAY_ADDRESS``, else a local instance started and
            shut down by the run); ignored when Ray is already initialised.
        num_cpus: CPUs per task.
        num_gpus: GPUs per task (default: 1 when the cluster has GPUs, else 0).
        max_retries: how many times a task whose worker died is run again.
        device: where workers put the model (default: CUDA when the worker sees a GPU).

    Example:
        >>> from steerlens.studies.bench import benchmark
        >>> backend = RayCells(model="embedded")  # doctest: +SKIP
        >>> benchmark(model, folder="runs/bench", backend=backend)  # doctest: +SKIP
    """

    model: str
    address: str | None = None
    num_cpus: float = 1
    num_gpus: float | None = None
    max_retries: int = 3
    device: str | None = None

    def __post_init__(self) -> None:
        check_model_name(self.model)
        check_ray_settings(self.max_retries)

    def run(
        self,
        model_id: str,
        data: Data,
        todo: dict[str, list[int]],
        layers: Sequence[int],
        methods: Sequence[Method],
        settings: BenchSettings,
        done: Callable[[CellResult], Any],
    ) -> None:
        """Run behaviour ``b``'s layers ``todo[b]`` as one task each; ``done`` receives each
        cell as its task returns. Tasks that fail are reported together at the end, after
        every other task's cells were handed to ``done``."""
        ray = import_ray()
        started = not ray.is_initialized()
        if started:
            ray.init(address=self.address, include_dashboard=False)
        pending: dict[Any, str] = {}
        failed: dict[str, str] = {}
        try:
            num_gpus = self.num_gpus
            if num_gpus is None:
                num_gpus = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
            task = ray.remote(behaviour_on_worker).options(
                num_cpus=self.num_cpus, num_gpus=num_gpus, max_retries=self.max_retries
            )
            for name, layers_todo in todo.items():
                ref = task.remote(
                    self.model, self.device, data, name, layers_todo, layers, methods, settings
                )
                pending[ref] = name
            while pending:
                finished, _ = ray.wait(list(pending), num_returns=1)
                for ref in finished:
                    name = pending.pop(ref)
                    try:
                        worker_id, cells = ray.get(ref)
                    except ray.exceptions.RayTaskError as exc:
                        if isinstance(exc.cause, SteerlensError):
                            raise exc.cause from None  # steerlens's own error, as in a serial run
                        failed[name] = describe_error(exc)[:500]
                        continue
                    except ray.exceptions.RayError as exc:
                        failed[name] = describe_error(exc)[:500]
                        continue
                    if worker_id != model_id:
                        raise SpecError(
                            f"the Ray workers built {worker_id!r} from RayCells(model="
                            f"{self.model!r}), but the benchmark was given {model_id!r}; pass "
                            "the study name of the same model."
                        )
                    for cell in cells:
                        done(cell)
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
            if started:
                ray.shutdown()
        if failed:
            lines = "; ".join(f"{name}: {error}" for name, error in failed.items())
            raise StudyError(
                f"{len(failed)} behaviour(s) failed on Ray after {self.max_retries} retries "
                f"({lines}); the other behaviours' cells are kept, and running the benchmark "
                "again with the same folder runs only what is missing."
            )


__all__ = ["RayCells", "behaviour_on_worker"]
