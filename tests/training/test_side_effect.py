"""SideEffect: the KL-to-unsteered regularizer, checked against a plain hooked forward."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from tolerances import (
    KL_TINY32,
    assert_losses_close,
    assert_same_direction,
    check_logits,
    kl_mean_bound,
    loss_bounds,
)

from steerlens import Datapoint, OptimizeConfig, Steering, optimize_vector, runtime, steer
from steerlens.errors import InputError, SpecError
from steerlens.evaluation import side_effect_kl
from steerlens.steering.positions import as_positions
from steerlens.testing import tiny_model
from steerlens.training.constraints import NormCap, OutputConstraint
from steerlens.training.data import next_token_rows
from steerlens.training.loop import Job, JobRun, LayerGroup, optimize_many
from steerlens.training.regularizers import SideEffect
from steerlens.training.stopping import Plateau, TargetLoss

NEUTRAL = ["the sun is", "a dog ran far away", "we"]
DP = Datapoint("the cat sat", promote=[" on the mat"], chat=False)
LAYER = 1


@pytest.fixture(scope="module")
def model():
    return tiny_model(n_layers=3)


def _direct(model, v, term, layer=LAYER):
    """``weight * mean KL`` by hand: one hooked forward per prompt, unsteered and with ``+v``
    at every position, KL of the softmaxes at the scored positions."""
    return _direct_parts(model, v, term, layer)[0]


def _direct_bound(model, v, term):
    """How far the engine's value of ``term`` may be from `_direct`'s: ``weight`` times
    `kl_mean_bound` of the scored rows (tests/tolerances.py), whose logits are checked below 2."""
    with torch.no_grad():
        _, p, q = _direct_parts(model, v, term)
    return term.weight * kl_mean_bound(p, q)


def _direct_parts(model, v, term, layer=LAYER):
    """`_direct`'s value, and the unsteered and steered log-probabilities it used."""
    kls, ps, qs = [], [], []
    for text in runtime.format_prompts(model, list(term.prompts), chat=term.chat):
        ids = torch.tensor([runtime.encode(model, text)])
        logits = model(ids)[0].float()
        check_logits(logits)
        base = logits.log_softmax(-1)

        def add(x, *, hook):
            return x + v.to(x.dtype)

        with model.hooks(fwd_hooks=[(f"blocks.{layer}.hook_resid_pre", add)]):
            logits = model(ids)[0].float()
        check_logits(logits)
        steered = logits.log_softmax(-1)
        ctx = runtime.TokenContext.prompts(torch.tensor([ids.shape[1]]))
        mask = as_positions(term.scored).mask(ctx, ids.shape[1])
        rows = slice(None) if mask is None else mask[0]
        p, q = base[rows], steered[rows]
        kls.append((p.exp() * (p - q)).sum(-1))
        ps.append(p)
        qs.append(q)
    return term.weight * torch.cat(kls).mean(), torch.cat(ps), torch.cat(qs)


def _value_at(model, v, term, fast=True):
    """The term's loss-history value at ``v`` (no update: max_steps=0)."""
    res = optimize_vector(
        model, DP, LAYER, init=v, max_steps=0, regularizers=(term,), fast=fast, progress=False
    )
    assert res.labels[-1] == term.label
    return float(res.loss_history[0, -1])


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("scored", ["last:1", "all", "last:2", slice(None, -1)])
def test_term_equals_a_direct_computation(model, fast, scored):
    v = torch.randn(64, generator=torch.Generator().manual_seed(1)) * 2
    term = SideEffect(NEUTRAL, weight=0.7, scored=scored, chat=False)
    got = _value_at(model, v, term, fast)
    want = float(_direct(model, v, term).detach())
    # The engine and the plain forwards add the same float32 terms in other orders.
    bound = _direct_bound(model, v, term)
    assert abs(got - want) <= bound
    assert got > 10 * bound  # a term that is not there (or scored elsewhere) fails


def test_chat_prompts_are_formatted(model):
    v = torch.randn(64, generator=torch.Generator().manual_seed(2))
    term = SideEffect(["Hi there"], chat=True, scored="last:3")
    want = float(_direct(model, v, term).detach())
    assert abs(_value_at(model, v, term) - want) <= _direct_bound(model, v, term)


@pytest.mark.parametrize("positions", ["last:2", [0, -1], slice(1, None), "generated"])
def test_other_steering_positions_score_each_prefix_as_a_prompt(model, positions):
    """With a position rule other than all/prompt, each scored prefix is steered as a prompt."""
    v = torch.randn(64, generator=torch.Generator().manual_seed(4)) * 3
    term = SideEffect(["a dog ran far away"], scored="last:3", chat=False)
    res = optimize_vector(
        model, DP, LAYER, init=v, max_steps=0, positions=positions, regularizers=(term,)
    )
    rows = next_token_rows(model, "a dog ran far away", "last:3", positions)
    assert len(rows) == 3
    ids = runtime.encode(model, "a dog ran far away")
    kls, ps, qs = [], [], []
    for row in rows:
        prefix = row.prompt_tokens
        assert prefix == ids[: len(prefix)]
        with torch.no_grad():
            logits = runtime.last_logits(model, [prefix])
            with steer(model, Steering(v, layer=LAYER, positions=positions)):
                steered_logits = runtime.last_logits(model, [prefix])
        check_logits(logits)
        check_logits(steered_logits)
        base, steered = logits.log_softmax(-1), steered_logits.log_softmax(-1)
        kls.append(float((base.exp() * (base - steered)).sum()))
        ps.append(base)
        qs.append(steered)
    # The engine's rows and these one-prefix forwards: another order (kl_mean_bound).
    bound = kl_mean_bound(torch.cat(ps), torch.cat(qs))
    assert abs(float(res.loss_history[0, -1]) - np.mean(kls)) <= bound


@pytest.mark.parametrize("fast", [True, False])
def test_term_is_zero_at_the_zero_vector(model, fast):
    term = SideEffect(NEUTRAL, weight=5.0, scored="all", chat=False)
    assert _value_at(model, torch.zeros(64), term, fast) == 0.0


def test_gradient_matches_autograd_through_a_plain_forward(model):
    term = SideEffect(NEUTRAL, weight=1.3, scored="all", chat=False)
    v0 = torch.randn(64, generator=torch.Generator().manual_seed(3))
    run = JobRun(model, Job(DP, LAYER, OptimizeConfig(init=v0, regularizers=(term,))), 0)
    group = LayerGroup(model, [run])
    (engine_grad,) = torch.autograd.grad(group.losses([0])[0][-1], run.params["v"])
    v = v0.clone().requires_grad_(True)
    (plain_grad,) = torch.autograd.grad(_direct(model, v, term), v)
    torch.testing.assert_close(engine_grad, plain_grad, rtol=1e-3, atol=1e-6)
    # and a central finite difference along the gradient
    d, h = plain_grad / plain_grad.norm(), 1e-2
    with torch.no_grad():
        fd = (_direct(model, v0 + h * d, term) - _direct(model, v0 - h * d, term)) / (2 * h)
    assert float(fd) == pytest.approx(float(plain_grad @ d), rel=2e-2)


def test_a_larger_weight_lowers_the_side_effect(model):
    dp = Datapoint("the cat sat", promote=[" dog dog dog"], chat=False)
    base = OptimizeConfig(lr=0.3, max_steps=25, progress=False)
    weights = [0.0, 30.0, 1000.0]
    jobs = [
        Job(dp, LAYER, replace(base, regularizers=(SideEffect(NEUTRAL, weight=w, chat=False),)))
        for w in weights
    ]
    kls = [
        side_effect_kl(model, NEUTRAL, Steering(r.vector), chat=False).mean
        for r in optimize_many(model, jobs)
    ]
    assert kls[0] > kls[1] > kls[2]
    assert kls[2] < 0.5 * kls[0]


@pytest.mark.parametrize("fast", [True, False])
def test_batched_equals_separate(model, fast):
    base = OptimizeConfig(lr=0.2, max_steps=5, fast=fast, progress=False)
    dog = Datapoint("a dog ran", promote=[" away"], suppress=[" home"], chat=False)
    jobs = [
        Job(DP, LAYER, replace(base, regularizers=(SideEffect(NEUTRAL, weight=2.0, chat=False),))),
        Job(dog, LAYER, base),
        Job(
            dog,
            LAYER,
            replace(
                base,
                seed=4,
                positions="prompt",
                regularizers=(
                    SideEffect(["hello"], scored="all", chat=False),
                    SideEffect(NEUTRAL, chat=False),
                ),
            ),
        ),
        Job(DP, [0, 2], replace(base, regularizers=(SideEffect(NEUTRAL, weight=0.5, chat=False),))),
    ]
    batched = optimize_many(model, jobs)
    for i, (job, got) in enumerate(zip(jobs, batched, strict=True)):
        alone = optimize_vector(model, job.datapoints, job.layer, job.config)
        assert got.labels == alone.labels
        assert got.loss_history.shape == alone.loss_history.shape
        assert got.loss_history.shape[1] == 1 + len(job.config.regularizers) + (
            job.datapoints is dog
        )
        # The same losses in another batch: the behaviour's within loss_bounds, each side-effect
        # term within its weight times KL_TINY32 (tests/tolerances.py); later rows, as in
        # tests/training/test_loop.py, allowed 10x for Adam's amplified coordinates.
        weights = [t.weight for t in job.config.regularizers]
        bounds = np.concatenate(
            [loss_bounds(model, job.datapoints), np.multiply(weights, KL_TINY32)]
        )
        assert_losses_close(got.loss_history[0], alone.loss_history[0], bounds)
        assert_losses_close(got.loss_history[1:], alone.loss_history[1:], 10 * bounds)
        # Adam's coordinates have no rounding bound (tests/tolerances.py): the direction, with
        # another job's vector as the case that must fail.
        other = batched[(i + 1) % len(batched)].vector.vector
        assert_same_direction(got.vector.vector, alone.vector.vector, other)


def test_target_loss_reads_the_behavior_only_and_plateau_the_total(model):
    term = SideEffect(
        NEUTRAL, weight=1e6, chat=False
    )  # huge term: the total is far above any target
    cfg = OptimizeConfig(lr=0.3, max_steps=5, regularizers=(term,), progress=False)
    start = optimize_vector(model, DP, LAYER, cfg, max_steps=0).loss_history[0]
    assert start[-1] > 1.0
    target = replace(cfg, stop=(TargetLoss(value=float(start[0]) + 0.1),))
    res = optimize_vector(model, DP, LAYER, target)
    assert res.stop_reason.startswith("target reached") and res.steps == 0
    per_completion = replace(
        cfg, stop=(TargetLoss(value=float(start[0]) + 0.1, per_completion=True),)
    )
    assert optimize_vector(model, DP, LAYER, per_completion).steps == 0
    plateau = replace(cfg, stop=(Plateau(eps=1e9),))
    assert optimize_vector(model, DP, LAYER, plateau).steps == 1


def test_output_constrained_phase_keeps_the_term_in_bounds(model):
    term = SideEffect(NEUTRAL, weight=1.0, chat=False)
    cfg = OptimizeConfig(
        lr=0.2,
        max_steps=15,
        regularizers=(term,),
        constraints=(NormCap(8.0),),
        output_constraint=OutputConstraint(max_steps=20),
        progress=False,
    )
    res = optimize_vector(model, DP, LAYER, cfg)
    before, after = res.norm_phase
    assert after <= before
    first_phase, final = res.loss_history[-2], res.loss_history[-1]
    # The phase's forward against the training loop's (another order): each completion's loss
    # within loss_bounds, the term within its weight times KL_TINY32 (tests/tolerances.py).
    slack = np.concatenate([loss_bounds(model, DP), [term.weight * KL_TINY32]])
    assert np.all(final <= first_phase + slack), (final, first_phase, slack)


def test_recorded_in_the_settings(model):
    res = optimize_vector(
        model,
        DP,
        LAYER,
        max_steps=1,
        regularizers=SideEffect("hi", weight=3, chat=False),
        progress=False,
    )
    (recorded,) = res.vector.provenance["hyperparameters"]["regularizers"]
    assert recorded["type"] == "SideEffect" and recorded["weight"] == 3
    assert recorded["prompts"] == ["hi"]


def test_errors_name_the_problem():
    with pytest.raises(SpecError, match="weight must be >= 0"):
        SideEffect(NEUTRAL, weight=-1.0, chat=False)
    with pytest.raises(SpecError, match="weight must be >= 0"):
        SideEffect(NEUTRAL, weight=float("nan"), chat=False)
    with pytest.raises(InputError, match="non-empty list of prompts"):
        SideEffect([], chat=False)
    with pytest.raises(InputError, match="non-empty text"):
        SideEffect(["ok", "  "], chat=False)
    with pytest.raises(SpecError, match="scores no position"):
        SideEffect(NEUTRAL, scored="generated", chat=False)
    with pytest.raises(SpecError, match="unknown position spec"):
        SideEffect(NEUTRAL, scored="middle", chat=False)
    with pytest.raises(SpecError, match="regularizers must be a tuple of SideEffect"):
        OptimizeConfig(regularizers=(NormCap(1.0),))


def test_scored_positions_outside_the_prompt_are_refused(model):
    with pytest.raises(SpecError, match="selects none of the"):
        optimize_vector(
            model,
            DP,
            LAYER,
            max_steps=0,
            regularizers=(SideEffect(["we"], scored=[5], chat=False),),
        )
