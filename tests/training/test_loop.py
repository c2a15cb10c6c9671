"""`optimize_many`: K vectors in one batched loop equal K separate `optimize_vector` calls, and a
finished vector leaves the batch."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from tolerances import assert_losses_close, assert_same_direction, loss_bounds

from steerlens import Datapoint, NormCap, OptimizeConfig, optimize_vector
from steerlens.errors import SpecError
from steerlens.testing import tiny_model
from steerlens.training.constraints import Noise
from steerlens.training.engines import HookedEngine, PackedEngine, forget_checks
from steerlens.training.kinds import ClampSteering
from steerlens.training.loop import Job, optimize_many
from steerlens.training.objectives import Objective
from steerlens.training.stopping import Plateau


@pytest.fixture(scope="module")
def model():
    return tiny_model(n_layers=3)


def _jobs(model, fast=True):
    """Jobs that differ in every way a study varies them: example, layer, seed, objective,
    steering kind, constraints, stop rules, step budget."""
    cat = Datapoint("the cat sat", promote=[" on the mat", " in"], suppress=[" xyz"], chat=False)
    dog = Datapoint("a dog ran far", promote=[" away from home!"], chat=False)
    neg = Datapoint("the end", promote=[" of it"], negate=True, chat=False)
    base = OptimizeConfig(lr=0.2, max_steps=6, fast=fast, progress=False)
    return [
        Job(cat, 1, base),
        Job(dog, 1, replace(base, seed=3)),
        Job([dog, neg], 2, replace(base, max_steps=2)),
        Job(cat, 0, replace(base, constraints=(NormCap(0.5), Noise(0.01)))),
        Job(dog, 1, replace(base, kind=ClampSteering(strength=2.0))),
        Job(cat, [0, 2], replace(base, objective=Objective(coldness=1.0))),
        Job(cat, 1, replace(base, stop=(Plateau(eps=10.0),))),
    ]


def _same_training(model, job, got, alone, other):
    """One job trained in a batch and alone. The losses before the first step differ by the
    engine's float32 rounding (tests/tolerances.py: each loss within its token count times
    TINY32); later rows also carry Adam's amplification of that rounding in coordinates the
    loss hardly depends on, allowed 10x. Coordinates are compared through the direction, with
    another job's vector as the case that must fail."""
    bounds = loss_bounds(model, job.datapoints)
    assert_losses_close(got.loss_history[0], alone.loss_history[0], bounds)
    assert_losses_close(got.loss_history[1:], alone.loss_history[1:], 10 * bounds)
    assert_same_direction(got.vector.vector, alone.vector.vector, other.vector.vector)


@pytest.mark.parametrize("fast", [True, False])
def test_batched_equals_separate_runs(model, fast):
    jobs = _jobs(model, fast)
    batched = optimize_many(model, jobs)
    for i, (job, got) in enumerate(zip(jobs, batched, strict=True)):
        alone = optimize_vector(model, job.datapoints, job.layer, job.config)
        assert got.engine == ("packed" if fast else "hooked")
        assert (got.steps, got.stop_reason, got.labels) == (
            alone.steps,
            alone.stop_reason,
            alone.labels,
        )
        other = batched[(i + 1) % len(batched)]
        _same_training(model, job, got, alone, other)
        assert got.vector.layers == alone.vector.layers


def test_results_keep_job_order_across_layer_groups(model):
    dp = Datapoint("the cat", promote=[" sat"], chat=False)
    cfg = OptimizeConfig(lr=0.1, max_steps=1, progress=False)
    results = optimize_many(model, [Job(dp, la, cfg) for la in (2, 0, 1, 0)])
    assert [r.vector.layers for r in results] == [[2], [0], [1], [0]]


@pytest.mark.parametrize("engine", [PackedEngine, HookedEngine])
def test_a_finished_vector_leaves_the_batch(model, engine, monkeypatch):
    seen: list[list[int]] = []
    real = engine.logits

    def spy(self, apply):
        seen.append(sorted(apply) if isinstance(apply, dict) else [-1])
        return real(self, apply)

    monkeypatch.setattr(engine, "logits", spy)
    dp = Datapoint("the cat", promote=[" sat"], chat=False)
    fast = engine is PackedEngine
    forget_checks(model)  # an earlier test on this model has its verdict kept
    jobs = [Job(dp, 1, OptimizeConfig(max_steps=s, fast=fast, progress=False)) for s in (1, 3, 2)]
    results = optimize_many(model, jobs)
    assert [r.steps for r in results] == [1, 3, 2]
    # The packed engine's self-check runs (unsteered, on one group); then each step
    # carries only the vectors still running.
    if fast:
        assert seen[0] == [0]
    steered = seen[1:] if fast else seen
    assert steered == [[0, 1, 2], [0, 1, 2], [1, 2], [1]]


def test_errors_name_the_problem(model):
    with pytest.raises(SpecError, match="no jobs"):
        optimize_many(model, [])
    with pytest.raises(SpecError, match=r"jobs\[0\].*not a Job"):
        optimize_many(model, [("the cat", 1)])  # type: ignore[list-item]


@pytest.mark.slow
def test_batched_equals_separate_runs_on_the_embedded_model(smol):
    prompts = ["Tell me about dogs.", "What is the capital of Japan?", "Give me advice."]
    cfg = OptimizeConfig(lr=0.1, max_steps=3, progress=False, constraints=(NormCap(20.0),))
    jobs = [
        Job(Datapoint.from_message(smol, p, promote=["Bien sûr"]), 6, replace(cfg, seed=i))
        for i, p in enumerate(prompts)
    ]
    batched = optimize_many(smol, jobs)
    for job, got in zip(jobs, batched, strict=True):
        alone = optimize_vector(smol, job.datapoints, job.layer, job.config)
        # What a vector does is its losses (the last row is the returned vector's): equal to
        # float32 rounding. Its coordinates are not compared one by one: Adam divides each
        # coordinate's step by that coordinate's own gradient scale, so where a gradient is as
        # small as the rounding of a d_model-wide float32 sum, the order of that sum decides the
        # step, and the order differs between CPUs' kernels (Intel vs AMD) and between a
        # batched and a separate forward. That amplification has no bound in terms of the
        # rounding (measured: within 1e-5 of the norm on one CPU, 2.9e-5 on an AMD EPYC). A
        # real mistake (a job trained on another job's row or seed) gives another direction,
        # which the cosine checks catch.
        # The tiny models' derived bound (tests/tolerances.py) needs their contractive random
        # layers; a trained model's are not, so this bound stays the measured 1e-5 relative.
        b_hist = np.asarray(alone.loss_history, dtype=np.float64)
        np.testing.assert_allclose(
            got.loss_history, b_hist, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(b_hist).max()))
        )
        a, b = got.vector.vector.double(), alone.vector.vector.double()
        assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.999
    first, second = (r.vector.vector.double() for r in batched[:2])
    assert torch.nn.functional.cosine_similarity(first, second, dim=0) < 0.9  # the check can fail


def test_every_result_says_how_long_its_job_ran(model):
    jobs = [
        Job(
            Datapoint("the cat", promote=[" sat"], chat=False),
            1,
            OptimizeConfig(max_steps=2, progress=False),
        ),
        Job(
            Datapoint("a dog", promote=[" ran"], chat=False),
            1,
            OptimizeConfig(max_steps=4, progress=False),
        ),
    ]
    first, second = optimize_many(model, jobs)
    assert 0 < first.wall_time_s <= second.wall_time_s
