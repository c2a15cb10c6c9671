"""The Ray backend: batches of units as Ray tasks (``pip install steerlens[ray]``).

Each task trains one batch with `steerlens.studies.run.train_units` (or evaluates one,
measures its steerability, or measures the grid) on a model its worker process builds once,
from the spec's model name, and keeps (`worker_model`). Tasks ask for one GPU each when the
cluster has GPUs, else one CPU. A task whose worker dies is retried
(``max_retries``); one that still fails has each of its units recorded as failed with the
error, and the other units are kept. The driver (the process calling
`steerlens.studies.run.run_study`) alone writes to the study folder.

To use a cluster, set ``RAY_ADDRESS`` (e.g. ``ray://head:10001``, or ``auto`` on a cluster
node) or pass ``RayBackend(address=...)``; without either, a local Ray instance is started and
shut down after the run. An address that cannot be reached is a `steerlens.errors.ClusterError`
naming it and the likely causes (a ``host:port`` where nothing listens is refused at once).
When Ray is already initialised (``ray.init(...)`` in your script),
that instance is used and left running.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from steerlens.errors import ClusterError, SteerlensError, describe_error
from steerlens.steering.vector import SteeringVector
from steerlens.studies.phases import (
    Outcome,
    PhaseOutcome,
    evaluate_units,
    measure_grid,
    measure_steerability,
    train_units,
)
from steerlens.studies.spec import StudySpec, Unit
from steerlens.studies.workers import INSTALL, check_ray_settings, import_ray, worker_model


def train_on_worker(spec: StudySpec, units: Sequence[Unit], device: str | None) -> list[Outcome]:
    """What one Ray task runs: ``units`` trained on this worker's model; vectors on the CPU
    (so the driver needs no GPU to read them)."""
    import dataclasses

    from steerlens import runtime
    from steerlens.training.config import OptimizeResult

    model = worker_model(spec.model, device)
    spec.check_layers(runtime.n_layers(model))
    return [
        dataclasses.replace(r, vector=r.vector.to("cpu")) if isinstance(r, OptimizeResult) else r
        for r in train_units(model, spec, units)
    ]


def evaluate_on_worker(
    spec: StudySpec,
    items: Sequence[tuple[Unit, SteeringVector]],
    device: str | None,
    batch_size: int,
) -> list[PhaseOutcome]:
    """What one Ray evaluation task runs: `steerlens.studies.run.evaluate_units` on this
    worker's model."""
    model = worker_model(spec.model, device)
    return evaluate_units(model, spec, items, batch_size=batch_size)


def steerability_on_worker(
    spec: StudySpec,
    items: Sequence[tuple[Unit, SteeringVector]],
    device: str | None,
    batch_size: int,
) -> list[PhaseOutcome]:
    """What one Ray steerability task runs: `steerlens.studies.run.measure_steerability` on
    this worker's model."""
    model = worker_model(spec.model, device)
    return measure_steerability(model, spec, items, batch_size=batch_size)


def grid_on_worker(
    spec: StudySpec,
    sources: Mapping[int, tuple[Unit, SteeringVector]],
    device: str | None,
    batch_size: int,
) -> list[PhaseOutcome]:
    """What the Ray grid task runs: `steerlens.studies.run.measure_grid` on this worker's
    model (a list of one outcome)."""
    model = worker_model(spec.model, device)
    return [measure_grid(model, spec, sources, batch_size=batch_size)]


def model_layers(spec: StudySpec, device: str | None) -> int:
    """The number of layers of the spec's model, as a worker builds it."""
    from steerlens import runtime

    return runtime.n_layers(worker_model(spec.model, device))


def connection_failed(address: str | None, exc: BaseException) -> str:
    """What to say when ``ray.init`` cannot reach a cluster: the address, the likely causes.

    Example:
        >>> text = connection_failed("10.0.0.5:6379", ConnectionError("timed out"))
        >>> "at '10.0.0.5:6379' (timed out)" in text, "ray start --head" in text
        (True, True)
    """
    where = address or os.environ.get("RAY_ADDRESS") or "auto"
    source = "" if address else " (from RAY_ADDRESS)" if os.environ.get("RAY_ADDRESS") else ""
    return (
        f"cannot connect to the Ray cluster at {where!r}{source} ({exc}). Likely causes: no "
        "Ray head is running there (start one with 'ray start --head', or check the host and "
        "port), the cluster requires authentication this machine is not set up for, or a "
        "firewall blocks the port. Fix the address (RayBackend(address=...) or RAY_ADDRESS), "
        "unset it to start a local instance, or use the serial backend."
    )


def check_reachable(address: str | None, given: str | None, timeout_s: float = 5.0) -> None:
    """Refuse a ``host:port`` address where nothing accepts a connection, before ``ray.init``
    (which, in Ray 2.60, retries such an address for minutes). Other forms (``auto``,
    ``ray://...``, none) are left to Ray.

    Raises:
        ClusterError: nothing answers at ``host:port`` within ``timeout_s``.
    """
    if not address or "://" in address or address == "auto" or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ClusterError(connection_failed(given, exc)) from exc


@dataclass(frozen=True, kw_only=True)
class RayBackend:
    """Train (and evaluate) batches of units as Ray tasks.

    Attributes:
        address: the Ray cluster to connect to (default: ``RAY_ADDRESS``, else a local
            instance); ignored when Ray is already initialised.
        max_retries: how many times a task whose worker died is run again.
        num_gpus: GPUs per task (default: 1 when the cluster has GPUs, else 0).
        num_cpus: CPUs per task.
        device: where workers put the model (default: CUDA when the worker sees a GPU).
        task: the function each task runs, ``(spec, units, device) -> outcomes`` in unit
            order (default `train_on_worker`); a wrapper can add logging or profiling.

    Example:
        >>> from steerlens.studies.run import run_study
        >>> backend = RayBackend(max_retries=5)  # doctest: +SKIP
        >>> run_study("study.toml", "runs/study", backend=backend)  # doctest: +SKIP
    """

    address: str | None = None
    max_retries: int = 3
    num_gpus: float | None = None
    num_cpus: float = 1
    device: str | None = None
    task: Callable[[StudySpec, Sequence[Unit], str | None], list[Outcome]] = train_on_worker

    def __post_init__(self) -> None:
        check_ray_settings(self.max_retries)

    def train(
        self, spec: StudySpec, units: Sequence[Unit], batch_size: int
    ) -> Iterator[tuple[Unit, Outcome]]:
        batches = [list(units[i : i + batch_size]) for i in range(0, len(units), batch_size)]
        args = [(spec, batch, self.device) for batch in batches]
        yield from self._run(self.task, spec, list(zip(batches, args, strict=True)))

    def evaluate(
        self, spec: StudySpec, items: Sequence[tuple[Unit, SteeringVector]], batch_size: int
    ) -> Iterator[tuple[Unit, PhaseOutcome]]:
        yield from self._run(evaluate_on_worker, spec, self._item_work(spec, items, batch_size))

    def steerability(
        self, spec: StudySpec, items: Sequence[tuple[Unit, SteeringVector]], batch_size: int
    ) -> Iterator[tuple[Unit, PhaseOutcome]]:
        yield from self._run(steerability_on_worker, spec, self._item_work(spec, items, batch_size))

    def grid(
        self, spec: StudySpec, sources: Mapping[int, tuple[Unit, SteeringVector]], batch_size: int
    ) -> PhaseOutcome:
        work = [(["grid"], (spec, dict(sources), self.device, batch_size))]
        [(_, outcome)] = list(self._run(grid_on_worker, spec, work))
        return outcome  # type: ignore[no-any-return]

    def _item_work(
        self, spec: StudySpec, items: Sequence[tuple[Unit, SteeringVector]], batch_size: int
    ) -> list[tuple[list[Any], tuple]]:
        """One task's ``(units, args)`` per ``batch_size`` items, for `_run`."""
        chunks = [list(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]
        return [([u for u, _ in c], (spec, c, self.device, batch_size)) for c in chunks]

    def _run(
        self, fn: Callable[..., list[Any]], spec: StudySpec, work: list[tuple[list[Any], tuple]]
    ) -> Iterator[tuple[Any, Any]]:
        """Run ``fn(*args)`` as one task per ``(units, args)``; yield ``(unit, outcome)`` pairs
        as tasks finish (a task returns one outcome per unit, in order)."""
        ray = import_ray()
        started = not ray.is_initialized()
        if started:
            check_reachable(self.address or os.environ.get("RAY_ADDRESS"), self.address)
            try:
                ray.init(address=self.address, include_dashboard=False)
            except ConnectionError as exc:
                raise ClusterError(connection_failed(self.address, exc)) from exc
        pending: dict[Any, list[Any]] = {}
        try:
            num_gpus = self.num_gpus
            if num_gpus is None:
                num_gpus = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
            options = {
                "num_gpus": num_gpus,
                "num_cpus": self.num_cpus,
                "max_retries": self.max_retries,
            }
            check = ray.remote(model_layers).options(**options)
            try:
                n_layers = ray.get(check.remote(spec, self.device))
            except ray.exceptions.RayTaskError as exc:
                # A worker that cannot build the model: report steerlens's own error.
                if isinstance(exc.cause, SteerlensError):
                    raise exc.cause from None
                raise
            spec.check_layers(n_layers)
            task = ray.remote(fn).options(**options)
            for units, args in work:
                pending[task.remote(*args)] = units
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    units = pending.pop(ref)
                    yield from zip(units, self._outcomes(ray, ref, units), strict=True)
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
            if started:
                ray.shutdown()

    def _outcomes(self, ray: Any, ref: Any, batch: list[Any]) -> list[Any]:
        try:
            outcomes = list(ray.get(ref))
        except ray.exceptions.RayError as exc:
            error = (
                f"the Ray task failed after {self.max_retries} retries "
                f"({describe_error(exc)[:500]})"
            )
            return [error] * len(batch)
        if len(outcomes) != len(batch):
            return [f"the Ray task returned {len(outcomes)} outcomes for {len(batch)} units"] * len(
                batch
            )
        return outcomes


__all__ = [
    "INSTALL",
    "RayBackend",
    "check_reachable",
    "connection_failed",
    "evaluate_on_worker",
    "grid_on_worker",
    "import_ray",
    "steerability_on_worker",
    "train_on_worker",
    "worker_model",
]
