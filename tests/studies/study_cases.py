"""Shared checks for the study tests: two study folders that trained the same units."""

from __future__ import annotations

import json

from tolerances import assert_losses_close, assert_same_direction, loss_bounds


def assert_same_training(model, spec, got, want) -> None:
    """``got`` and ``want`` trained every unit of ``spec``, their float32 sums in another order
    (other batches, another process, another machine). Compared as tests/tolerances.py says:
    the first loss of each completion within its k TINY32 (``initial_loss`` is their total),
    the last within 10x that, since Adam's amplified coordinates move the loss a little (as in
    tests/training/test_loop.py); vectors by direction, with another unit's vector as the case
    that must fail; never coordinate by coordinate."""
    a, b = got.table().set_index("unit"), want.table().set_index("unit")
    units = spec.units()
    assert sorted(a.index) == sorted(b.index) == sorted(u.name for u in units)
    assert (a.status == "done").all() and (b.status == "done").all()
    for i, unit in enumerate(units):
        name = unit.name
        bounds = loss_bounds(model, [spec.datapoint(model, unit)])
        assert abs(a.initial_loss[name] - b.initial_loss[name]) <= bounds.sum(), name
        final_a, final_b = json.loads(a.final_losses[name]), json.loads(b.final_losses[name])
        assert list(final_a) == list(final_b), name
        assert_losses_close(list(final_a.values()), list(final_b.values()), 10 * bounds)
        other = want.vector(units[(i + 1) % len(units)].name).vector
        assert_same_direction(got.vector(name).vector, want.vector(name).vector, other)
