"""Bad input to the optimizer, data, generation and steering: each case is either correct or
a steerlens error that names the problem (issue "Nothing silent, nothing lost")."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import steerlens
from steerlens import Datapoint, OptimizeConfig, Positions, Steering, optimize_vector, steer
from steerlens.errors import (
    ContextWindowError,
    InputError,
    LayerError,
    NonFiniteError,
    SpecError,
    SteerlensError,
)
from steerlens.evaluation import completion_logprobs, success_rate
from steerlens.training.objectives import Objective

DP = Datapoint("the cat sat", promote=[" on the mat"], chat=False)


# -- optimizer settings ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"max_steps": 2.5}, "max_steps must be an int"),
        ({"max_steps": True}, "max_steps must be an int"),
        ({"seed": None}, "seed must be an int"),
        ({"seed": -1}, "seed must be an int >= 0"),
        ({"lr": float("inf")}, "learning rate must be > 0 and finite"),
        ({"starting_norm": float("nan")}, "starting_norm must be > 0"),
        ({"betas": (0.9, 1.5)}, "betas must be two numbers"),
        ({"objective": "promotion"}, "objective must be Objective"),
        ({"constraints": ("cap",)}, "constraints must be NormCap"),
    ],
)
def test_bad_optimizer_settings_are_refused(settings, match):
    with pytest.raises(SpecError, match=match):
        OptimizeConfig(**settings)


def test_a_dict_config_is_refused_not_ignored(tiny):
    with pytest.raises(SpecError, match="config must be an OptimizeConfig, got dict"):
        optimize_vector(tiny, DP, 1, {"lr": 0.1})  # type: ignore[arg-type]
    with pytest.raises(SpecError, match="config must be an OptimizeConfig, got dict"):
        optimize_vector(tiny, DP, 1, {})  # type: ignore[arg-type]


@pytest.mark.parametrize("coldness", [float("inf"), float("nan"), 0.0, -1.0])
def test_coldness_must_be_finite_and_positive(coldness):
    with pytest.raises(SpecError, match="coldness must be > 0 and finite"):
        Objective(coldness=coldness)


def test_the_returned_vector_always_has_a_finite_norm(tiny):
    # Entries near the float32 limit are finite, but their norm is inf.
    with pytest.raises(NonFiniteError, match="init vector has norm inf"):
        optimize_vector(tiny, DP, 1, init=torch.full((64,), 3e38), max_steps=3)
    with pytest.warns(UserWarning, match="non-finite loss"):
        res = optimize_vector(tiny, DP, 1, lr=1e30, max_steps=3)
    assert np.isfinite(res.vector.norm())


def test_the_model_weights_get_no_gradient(tiny):
    optimize_vector(tiny, DP, 1, lr=0.1, max_steps=2)
    assert all(p.grad is None for p in tiny.parameters())


# -- layers --------------------------------------------------------------------------------


def test_numpy_and_torch_integers_are_layers(tiny):
    a = optimize_vector(tiny, DP, np.int64(1), max_steps=1)
    b = optimize_vector(tiny, DP, torch.tensor(1), max_steps=1)
    c = optimize_vector(tiny, DP, np.array([0, 1]), max_steps=1)
    assert a.vector.layers == b.vector.layers == [1]
    assert c.vector.layers == [0, 1]
    with pytest.raises(LayerError, match="layer must be an int"):
        optimize_vector(tiny, DP, np.float64(1.0), max_steps=1)


# -- data ----------------------------------------------------------------------------------


def test_datapoint_inputs_get_clear_messages():
    with pytest.raises(InputError, match="prompt must be a str, got int"):
        Datapoint(123, promote=["x"], chat=False)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="prompt must be a str, got bytes"):
        Datapoint(b"the cat", promote=["x"], chat=False)  # type: ignore[arg-type]
    assert Datapoint("a", promote=None, suppress=["b"], chat=False).promote == ()  # type: ignore[arg-type]
    with pytest.raises(InputError, match="promote= must be a completion or a list"):
        Datapoint("a", promote=5, chat=False)  # type: ignore[arg-type]


def test_a_dict_of_datapoints_is_refused_with_the_fix(tiny):
    with pytest.raises(InputError, match=r"got a dict; pass list\(d.values\(\)\)"):
        optimize_vector(tiny, {"a": DP}, 1, max_steps=1)  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"expected steerlens\.Datapoint, got str"):
        optimize_vector(tiny, ["the cat"], 1, max_steps=1)  # type: ignore[list-item]


def test_a_datapoint_longer_than_the_context_is_refused(tiny):
    n_ctx = tiny.cfg.n_ctx
    long = Datapoint("a " * (n_ctx + 5), promote=[" b"], chat=False)
    with pytest.raises(ContextWindowError, match="context window"):
        optimize_vector(tiny, long, 1, max_steps=1)
    with pytest.raises(ContextWindowError, match="context window"):
        steerlens.evaluate_objective(tiny, long, 1, None)


def test_positions_that_select_no_prompt_token_are_refused(tiny):
    far = Datapoint("the cat", promote=[" sat"], positions=Positions.at([40]), chat=False)
    with pytest.raises(SpecError, match="select none of the"):
        optimize_vector(tiny, far, 1, max_steps=1)
    plan = Steering(torch.ones(64), layer=1, positions=[40])
    with pytest.raises(SpecError, match="select no token of prompt row"):
        steerlens.generate(tiny, "the cat", plan, max_new_tokens=2)
    with pytest.raises(SpecError, match="select no token of prompt row"):
        completion_logprobs(tiny, "the cat", " sat", steering=plan)
    # "generated" legitimately selects nothing in the prompt.
    steerlens.generate(
        tiny, "the cat", Steering(torch.ones(64), layer=1, positions="generated"), max_new_tokens=2
    )


# -- prompts and generation ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompts", "match"),
    [
        (None, "prompts must be a str or a list of str, got NoneType"),
        (b"the cat", "got bytes; decode the bytes first"),
        ([b"the cat"], r"prompt 0 is a bytes .*decode bytes first"),
        ({"a": "b"}, "got dict"),
        (5, "got int"),
    ],
)
def test_bad_prompts_get_clear_messages(tiny, prompts, match):
    with pytest.raises(InputError, match=match):
        steerlens.generate(tiny, prompts, max_new_tokens=2)


def test_prompt_sequences_that_are_not_lists_are_accepted(tiny):
    out = steerlens.generate(tiny, ("the cat", "a dog"), max_new_tokens=2)
    assert len(out) == 2
    out = steerlens.generate(tiny, np.array(["the cat", "a dog"]).tolist(), max_new_tokens=2)
    assert len(out) == 2


@pytest.mark.parametrize("batch_size", [0, -1, 1.5, True])
def test_batch_size_must_be_a_positive_int(tiny, batch_size):
    with pytest.raises(SpecError, match="batch_size must be an int >= 1"):
        steerlens.generate(tiny, ["a", "b"], max_new_tokens=2, batch_size=batch_size)
    with pytest.raises(SpecError, match="batch_size must be an int >= 1"):
        completion_logprobs(tiny, ["a"], [" b"], batch_size=batch_size)


@pytest.mark.parametrize("temperature", [float("nan"), float("inf"), -0.5])
def test_temperature_must_be_finite_and_non_negative(tiny, temperature):
    with pytest.raises(SpecError, match="temperature must be >= 0"):
        steerlens.generate(tiny, "a", max_new_tokens=2, temperature=temperature)


def test_a_prompt_that_fills_the_context_is_refused(tiny):
    with pytest.raises(ContextWindowError, match="no room to generate"):
        steerlens.generate(tiny, "a " * (tiny.cfg.n_ctx + 2), max_new_tokens=2)


def test_seeded_sampling_is_per_prompt(tiny):
    prompts = ["hi", "yo", "the cat"]
    kw = {"temperature": 1.0, "seed": 3, "max_new_tokens": 6}
    alone = [steerlens.generate(tiny, [p], **kw)[0] for p in prompts]
    one_by_one = steerlens.generate(tiny, prompts, batch_size=1, **kw)
    together = steerlens.generate(tiny, prompts, batch_size=3, **kw)
    other_mates = steerlens.generate(tiny, ["hi", "zz", "the cat"], **kw)
    assert one_by_one == together
    assert other_mates[0] == together[0] and other_mates[2] == together[2]
    assert alone[0] == together[0]  # index 0 either way
    with pytest.raises(SpecError, match="seed must be an int or None"):
        steerlens.generate(tiny, "hi", temperature=1.0, seed=1.5, max_new_tokens=2)


def test_sampling_without_a_seed_leaves_the_global_rng_alone(tiny):
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    steerlens.generate(tiny, "hi", temperature=1.0, max_new_tokens=3)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("strength", [float("nan"), float("inf"), [1.0, 2.0], "2"])
def test_bad_strengths_are_refused_before_anything_runs(strength):
    with pytest.raises(SpecError, match="strength must be"):
        Steering(torch.ones(64), layer=1, strength=strength)


def test_success_rate_refuses_unknown_generation_keywords(tiny):
    from steerlens.evaluation import StringMatchJudge

    with pytest.raises(SteerlensError, match="unknown keyword"):
        success_rate(tiny, ["a"], StringMatchJudge(["x"]), max_tokens=2)


def test_steering_handle_hooks_are_removed_after_an_error(tiny):
    tokens = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        base = tiny(tokens)
    with pytest.raises(SpecError), steer(tiny, Steering(torch.ones(64), layer=1, positions=[9])):
        steerlens.generate(tiny, "the cat", max_new_tokens=2, chat=False)
    with torch.no_grad():
        assert torch.equal(tiny(tokens), base)
