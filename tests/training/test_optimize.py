"""``optimize_vector`` / ``evaluate_objective``: engines, gradients, constraints, stop rules,
determinism, the output-constrained phase, noise, and error handling (tiny model unless
marked slow)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from optimizer_cases import (
    datapoints,
    hand_losses,
    rand,
)
from tolerances import assert_losses_close, loss_bounds, rescale_bound

from steerlens import (
    Add,
    Clamp,
    Datapoint,
    NormCap,
    OptimizeConfig,
    SteeringVector,
    evaluate_objective,
    optimize_vector,
)
from steerlens import runtime as tl
from steerlens.errors import (
    LayerError,
    NonFiniteError,
    SpecError,
    SteerlensError,
    VectorShapeError,
)
from steerlens.training.constraints import Noise
from steerlens.training.data import tokenize
from steerlens.training.kinds import AddSteering, AffineSteering, ClampSteering
from steerlens.training.objectives import Objective


def test_the_optimizer_loss_is_evaluate_objective(tiny):
    dps = datapoints(tiny)
    res = optimize_vector(tiny, dps, 1, lr=0.1, max_steps=4)
    assert res.engine == "packed" and res.steps == 4
    assert res.loss_history.shape == (5, 6) and res.loss_history.dtype == np.float32
    assert len(res.labels) == 6 and res.labels[0].startswith("dp0 promote")
    ev = evaluate_objective(tiny, dps, 1, res.vector)
    assert list(ev.losses) == res.labels
    assert_losses_close(list(ev.losses.values()), res.loss_history[-1], loss_bounds(tiny, dps))
    assert res.final_losses == dict(zip(res.labels, res.loss_history[-1].tolist(), strict=True))
    # the same division of the same float32 history
    assert np.array_equal(res.losses("hartleys"), res.loss_history / math.log(10))
    prov = res.vector.provenance
    assert prov["loss_unit"] == "nats" and prov["steps"] == 4
    assert prov["datapoints"][1]["negate"] is True
    assert "nats" in repr(res)


def test_several_layers_and_affine_results_round_trip(tiny):
    dps = datapoints(tiny)[:2]
    two = optimize_vector(tiny, dps, [0, 1], lr=0.1, max_steps=3)
    assert two.vector.layers == [0, 1]
    assert torch.equal(two.vector.directions[0], two.vector.directions[1])
    ev = evaluate_objective(tiny, dps, [0, 1], two.vector.vector)
    bounds = loss_bounds(tiny, dps)
    assert_losses_close(list(ev.losses.values()), two.loss_history[-1], bounds)

    aff = optimize_vector(tiny, dps, 1, lr=0.1, max_steps=3, kind=AffineSteering(rank=2))
    left, right = aff.vector.affine[1]
    assert left.shape == right.shape == (2, 64)
    assert aff.vector.provenance["steering"] == "affine"
    ev = evaluate_objective(tiny, dps, 1, aff.vector)
    assert_losses_close(list(ev.losses.values()), aff.loss_history[-1], bounds)

    cl = optimize_vector(tiny, dps, 1, lr=0.1, max_steps=3, kind=ClampSteering(strength=2.0))
    ev = evaluate_objective(tiny, dps, 1, cl.vector.vector, kind=ClampSteering(strength=2.0))
    assert_losses_close(list(ev.losses.values()), cl.loss_history[-1], bounds)


def test_negated_datapoint_optimizes_minus_v(tiny):
    base = Datapoint("the cat sat", promote=[" on the mat"], suppress=[" in"], chat=False)
    neg = Datapoint(
        base.prompt, promote=base.promote, suppress=base.suppress, negate=True, chat=False
    )
    res = optimize_vector(tiny, neg, 1, lr=0.1, max_steps=5)
    at_minus = evaluate_objective(tiny, base, 1, -res.vector.vector)
    bounds = loss_bounds(tiny, base)
    assert_losses_close(list(at_minus.losses.values()), res.loss_history[-1], bounds)
    # Adam is sign-equivariant: optimizing the negated datapoint from u is optimizing the plain
    # one from -u, with the vector negated.
    u = rand(64, seed=8)
    a = optimize_vector(tiny, neg, 1, lr=0.1, max_steps=5, init=u)
    b = optimize_vector(tiny, base, 1, lr=0.1, max_steps=5, init=-u)
    # Exactly: the steering applied is the same, and negating the gradient and Adam's moments
    # rounds symmetrically.
    assert torch.equal(a.vector.vector, -b.vector.vector)
    assert np.array_equal(a.loss_history, b.loss_history)


def test_same_seed_same_vector_bitwise(tiny):
    dps = datapoints(tiny)
    a = optimize_vector(tiny, dps, 1, lr=0.1, max_steps=5, seed=11)
    b = optimize_vector(tiny, dps, 1, lr=0.1, max_steps=5, seed=11)
    c = optimize_vector(tiny, dps, 1, lr=0.1, max_steps=5, seed=12)
    assert torch.equal(a.vector.vector, b.vector.vector)
    assert np.array_equal(a.loss_history, b.loss_history)
    assert not torch.equal(a.vector.vector, c.vector.vector)
    assert float(torch.cosine_similarity(a.vector.vector, c.vector.vector, dim=0)) < 0.99
    # the global torch RNG does not leak in
    torch.manual_seed(999)
    d = optimize_vector(tiny, dps, 1, lr=0.1, max_steps=5, seed=11)
    assert torch.equal(a.vector.vector, d.vector.vector)


def test_starting_norm_and_init(tiny):
    dp = datapoints(tiny)[0]
    res = optimize_vector(tiny, dp, 1, max_steps=0, starting_norm=3.0)
    assert res.vector.norm() == pytest.approx(3.0, rel=rescale_bound(64), abs=0)
    u = rand(64, seed=21)
    res = optimize_vector(tiny, dp, 1, max_steps=0, init=u)
    assert torch.equal(res.vector.vector, u)
    sv = SteeringVector({1: u}, model_id=tl.model_id(tiny))
    res = optimize_vector(tiny, dp, 1, max_steps=0, init=sv)
    assert torch.equal(res.vector.vector, u)


def test_no_completions_and_empty_completion(tiny):
    with pytest.raises(SteerlensError, match="no promote and no suppress"):
        optimize_vector(tiny, Datapoint("the cat", chat=False), 1)
    with pytest.raises(SteerlensError, match=r"completion is empty|tokenises to nothing"):
        optimize_vector(tiny, Datapoint("the cat", promote=[""], chat=False), 1)
    with pytest.raises(SteerlensError, match="no datapoints given"):
        optimize_vector(tiny, [], 1)


def test_completion_that_tokenises_to_nothing(tiny, monkeypatch):
    real = tl.encode

    def fake(m, t, **kw):
        return [] if t.endswith("~") else real(m, t, **kw)

    monkeypatch.setattr(tl, "encode", fake)
    monkeypatch.setattr("steerlens.runtime.tokens.encode", fake)
    dp = Datapoint("the cat", promote=[" sat"], suppress=["~"], chat=False)
    with pytest.raises(SteerlensError, match="suppress completion '~' tokenises to nothing"):
        optimize_vector(tiny, dp, 1)


@pytest.mark.parametrize(
    ("layer", "error", "msg"),
    [
        (2, LayerError, "layer 2 is out of range"),
        (-1, LayerError, "layer -1 is out of range"),
        ([0, 5], LayerError, "layer 5 is out of range"),
        ([], LayerError, "no layer given"),
        ("1", LayerError, "layer must be an int"),
        (True, LayerError, "layer must be an int"),
        (1.0, LayerError, "layer must be an int"),
    ],
)
def test_bad_layer(tiny, layer, error, msg):
    dp = datapoints(tiny)[0]
    with pytest.raises(error, match=msg):
        optimize_vector(tiny, dp, layer)
    with pytest.raises(error, match=msg):
        evaluate_objective(tiny, dp, layer, torch.zeros(64))


@pytest.mark.parametrize("lr", [0.0, -0.1, float("nan")])
def test_bad_learning_rate(tiny, lr):
    with pytest.raises(SpecError, match="learning rate must be > 0"):
        optimize_vector(tiny, datapoints(tiny)[0], 1, lr=lr)
    with pytest.raises(SpecError, match="learning rate must be > 0"):
        OptimizeConfig(lr=lr)


def test_bad_numbers():
    for cap in (0.0, -1.0, float("nan")):
        with pytest.raises(SpecError, match="norm cap must be > 0"):
            NormCap(cap)
    with pytest.raises(SpecError, match="noise scale must be >= 0"):
        Noise(scale=-0.1)
    with pytest.raises(SpecError, match="max_steps must be an int >= 0"):
        OptimizeConfig(max_steps=-1)
    with pytest.raises(SpecError, match="starting_norm must be > 0"):
        OptimizeConfig(starting_norm=0.0)
    with pytest.raises(SpecError, match="affine rank must be >= 1"):
        AffineSteering(rank=0)
    with pytest.raises(SpecError, match="factor_norm_cap must be > 0"):
        AffineSteering(factor_norm_cap=0.0)


@pytest.mark.parametrize("kind", ["clamp", object(), Clamp(torch.ones(64)), None])
def test_contradictory_or_unknown_kind_is_refused(tiny, kind):
    with pytest.raises(SpecError, match=r"kind must be AddSteering\(\), ClampSteering"):
        optimize_vector(tiny, datapoints(tiny)[0], 1, kind=kind)


def test_steering_names_a_plan_not_a_kind(tiny):
    """``steering=`` is a plan everywhere; the optimizer's trained kind is ``kind=``."""
    with pytest.raises(SpecError, match=r"unknown keyword.*'steering'.*kind"):
        optimize_vector(tiny, datapoints(tiny)[0], 1, steering=AddSteering())


def test_unknown_option_and_bad_init(tiny):
    dp = datapoints(tiny)[0]
    with pytest.raises(SpecError, match="learning_rate"):
        optimize_vector(tiny, dp, 1, learning_rate=0.1)
    with pytest.raises(VectorShapeError, match="init vector has size 32"):
        optimize_vector(tiny, dp, 1, init=torch.zeros(32))
    bad = torch.zeros(64)
    bad[3] = float("nan")
    with pytest.raises(NonFiniteError, match="init vector has 1 NaN/inf"):
        optimize_vector(tiny, dp, 1, init=bad)


def test_non_finite_loss_mid_run_stops_and_returns_last_finite_vector(tiny, monkeypatch):
    dp = datapoints(tiny)[0]
    kw = {"lr": 0.1, "max_steps": 10, "seed": 4}
    reference = optimize_vector(tiny, dp, 1, **(kw | {"max_steps": 2}))
    calls = []
    real = Objective.losses

    def poisoned(self, logits, layout):
        out = real(self, logits, layout)
        calls.append(1)
        return out * float("nan") if len(calls) == 4 else out  # the loss at step 3

    monkeypatch.setattr(Objective, "losses", poisoned)
    with pytest.warns(UserWarning, match="non-finite loss at step 3"):
        res = optimize_vector(tiny, dp, 1, **kw)
    assert "non-finite loss at step 3" in res.stop_reason
    assert "step 2" in res.stop_reason
    assert torch.isfinite(res.vector.vector).all()
    assert torch.equal(res.vector.vector, reference.vector.vector)
    assert np.array_equal(res.loss_history, reference.loss_history)
    assert np.isfinite(res.loss_history).all()


@pytest.mark.filterwarnings("ignore:steerlens. non-finite loss")
def test_non_finite_loss_at_the_first_step_is_an_error(tiny):
    dp = datapoints(tiny)[0]
    with pytest.raises(NonFiniteError, match="at the start point"):
        optimize_vector(tiny, dp, 1, objective=Objective(coldness=3e38), max_steps=3)


def test_huge_learning_rate_keeps_the_vector_finite(tiny):
    with pytest.warns(UserWarning, match="non-finite loss"):
        res = optimize_vector(tiny, datapoints(tiny)[0], 1, lr=1e30, max_steps=3)
    assert torch.isfinite(res.vector.vector).all()
    assert np.isfinite(res.vector.norm())
    assert np.isfinite(res.loss_history).all()


def test_non_finite_gradient_stops_gracefully(tiny, monkeypatch):
    dp = datapoints(tiny)[0]
    real = Objective.losses

    def nan_gradient(self, logits, layout):
        out = real(self, logits, layout)
        # The value stays finite; the gradient through the unused branch is 0 * NaN = NaN.
        return torch.where(torch.ones_like(out, dtype=torch.bool), out, out * float("nan"))

    monkeypatch.setattr(Objective, "losses", nan_gradient)
    with pytest.warns(UserWarning, match="non-finite loss"):
        res = optimize_vector(tiny, dp, 1, max_steps=5)
    assert "non-finite" in res.stop_reason
    assert re.search(r"step \d+", res.stop_reason)
    assert torch.isfinite(res.vector.vector).all()


def test_a_start_vector_whose_norm_overflows_is_refused(tiny):
    dp = datapoints(tiny)[0]
    # Every entry is finite but the norm is inf: no finite vector could be returned.
    with pytest.raises(NonFiniteError, match="init vector has norm inf"):
        optimize_vector(tiny, dp, 1, init=torch.full((64,), 3e38), max_steps=5)


def test_boundary_merge_warns_and_scores_completion_tokens_alone(tiny):
    prompt, completion = "at t", "he end"  # "Ġt" + "he" -> " the" when tokenised jointly
    dp = Datapoint(prompt, promote=[completion], chat=False)
    with pytest.warns(UserWarning, match="merges with the end of its prompt"):
        (tdp,) = tokenize(tiny, dp)
    assert tdp.completions[0].boundary_merged
    assert tdp.completions[0].tokens == tl.encode(tiny, completion)
    assert tdp.prompt_tokens + tdp.completions[0].tokens != tl.encode(tiny, prompt + completion)
    v = rand(64, seed=6)
    with pytest.warns(UserWarning, match="merges with the end of its prompt"):
        ev = evaluate_objective(tiny, dp, 1, v)
    (got,) = ev.losses.values()
    with pytest.warns(UserWarning, match="merges with the end of its prompt"):
        (ref,) = hand_losses(tiny, dp, [1], lambda s: Add(s * v))
    with pytest.warns(UserWarning, match="merges with the end of its prompt"):
        bounds = loss_bounds(tiny, dp)
    assert_losses_close([got], [ref], bounds)
    with pytest.warns(UserWarning, match="merges with the end of its prompt"):
        res = optimize_vector(tiny, dp, 1, max_steps=1)
    assert res.loss_history.shape == (2, 1)


@pytest.mark.slow
def test_promotion_vector_on_smollm2(smol):
    dp = Datapoint.from_message(
        smol, "Tell me a fact about the ocean.", promote=["Arr matey! The ocean be deep."]
    )
    res = optimize_vector(smol, dp, 10, lr=0.3, max_steps=10)
    assert res.engine == "packed"
    first, last = float(res.loss_history[0, 0]), float(res.loss_history[-1, 0])
    assert last < 0.5 * first, res.loss_history[:, 0]
    assert res.vector.layers == [10] and res.vector.vector.shape == (smol.cfg.d_model,)
    assert torch.isfinite(res.vector.vector).all()


def test_objective_scorer_equals_evaluate_objective_for_many_vectors(tiny):
    from steerlens.training.optimize import ObjectiveScorer

    dps = datapoints(tiny)
    scorer = ObjectiveScorer(tiny, dps, 1, unit="bits")
    g = torch.Generator().manual_seed(3)
    for v in [None, *(torch.randn(64, generator=g) for _ in range(3))]:
        assert scorer(v).losses == evaluate_objective(tiny, dps, 1, v, unit="bits").losses


def test_unknown_setting_names_the_valid_ones(tiny):
    with pytest.raises(
        SpecError, match=r"OptimizeConfig got unknown keyword\(s\) 'learning_rate'.*lr"
    ):
        optimize_vector(tiny, Datapoint("a", promote=[" b"], chat=False), 1, learning_rate=0.1)


@pytest.mark.parametrize(
    "config",
    [
        OptimizeConfig(),
        OptimizeConfig(
            lr=0.2,
            betas=(0.8, 0.9),
            kind=ClampSteering(strength=2.0),
            constraints=(NormCap(5.0), Noise(0.01)),
            objective=Objective(coldness=0.7),
            positions="last:3",
        ),
        OptimizeConfig(kind=AffineSteering(rank=2)),
    ],
)
def test_settings_round_trip_through_their_dict(config):
    assert OptimizeConfig.from_dict(config.to_dict()) == config


def test_a_dict_that_cannot_be_rebuilt_is_refused():
    with pytest.raises(SpecError, match="tensor"):
        OptimizeConfig.from_dict(OptimizeConfig(init=torch.ones(4)).to_dict())
    with pytest.raises(SpecError, match="type 'Mystery'"):
        OptimizeConfig.from_dict({"kind": {"type": "Mystery"}})
    with pytest.raises(SpecError, match="unknown keyword"):
        OptimizeConfig.from_dict({"learning_rate": 0.1})
