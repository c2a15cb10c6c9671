"""What the benchmark returns: a `CellResult` per (behaviour, layer) and the `BenchResult`
that gathers them (tidy table, leaderboard, figures)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from steerlens.steering.vector import SteeringVector
from steerlens.studies.bench.settings import BenchSettings


@dataclass(frozen=True)
class CellResult:
    """One behaviour at one layer: a row per vector, each vector's per-item slopes, the
    cosines between the vectors, the seconds of each phase, and the vectors."""

    behaviour: str
    layer: int
    rows: tuple[dict[str, Any], ...]
    slopes: dict[str, list[float]]
    cosines: dict[str, Any]
    times: dict[str, float]
    vectors: dict[str, SteeringVector] = field(repr=False)


@dataclass(frozen=True)
class BenchResult:
    """What `benchmark` returns: one row per (behaviour, layer, vector), the per-item slopes,
    the cosines between vectors, the times of each phase, and the vectors themselves
    (``vectors[(behaviour, layer, label)]``, e.g. to save one with ``.save``).

    ``rows`` are plain dicts (``table()`` gives a pandas DataFrame); ``leaderboard()`` the
    per-method summary; ``figures()`` the plotly figures.
    """

    rows: tuple[dict[str, Any], ...]
    slopes: dict[tuple[str, int, str], list[float]]
    cosines: dict[tuple[str, int], dict[str, Any]]
    times: dict[str, float]
    settings: BenchSettings
    vectors: dict[tuple[str, int, str], SteeringVector] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, cells: Sequence[CellResult], settings: BenchSettings) -> BenchResult:
        """The benchmark's result from its cells."""
        times: dict[str, float] = {}
        for cell in cells:
            for phase, seconds in cell.times.items():
                times[phase] = times.get(phase, 0.0) + seconds
        return cls(
            rows=tuple(row for cell in cells for row in cell.rows),
            slopes={
                (cell.behaviour, cell.layer, label): values
                for cell in cells
                for label, values in cell.slopes.items()
            },
            cosines={(cell.behaviour, cell.layer): cell.cosines for cell in cells},
            times=times,
            settings=settings,
            vectors={
                (cell.behaviour, cell.layer, label): vector
                for cell in cells
                for label, vector in cell.vectors.items()
            },
        )

    def table(self) -> Any:
        """The rows as a pandas DataFrame (needs pandas)."""
        import pandas as pd

        return pd.DataFrame(list(self.rows))

    def leaderboard(self) -> Any:
        """Per method, the mean over behaviours and layers (one-shot vectors first averaged
        over their E examples): slope, anti-steerable share, effectiveness, entanglement, and
        for open-ended behaviours the reply NLL ratio (a column is empty where no behaviour
        of the run measures it)."""
        keys = ["method", "behaviour", "layer"]
        cols = [
            "mean_slope",
            "anti_steerable",
            "non_monotonic",
            "delta_at_max",
            "effectiveness",
            "entanglement",
            "nll_ratio",
        ]
        table = self.table().reindex(columns=keys + cols)
        per_cell = table.groupby(keys, sort=False)[cols].mean()
        board = per_cell.groupby("method", sort=False).mean()
        return board.sort_values("effectiveness", ascending=False)

    def figures(self) -> dict[str, Any]:
        """Slope distributions per method, effectiveness vs entanglement at equal cost, and
        the per-training-example bars of the one-shot vectors (plotly figures)."""
        from steerlens.studies.bench.figures import bench_figures

        return bench_figures(self)

    def __repr__(self) -> str:
        n = len({(r["behaviour"], r["layer"]) for r in self.rows})
        return (
            f"BenchResult({len(self.rows)} vectors over {n} behaviour x layer cells, "
            f"{sum(self.times.values()):.0f} s)"
        )


__all__ = ["BenchResult", "CellResult"]
