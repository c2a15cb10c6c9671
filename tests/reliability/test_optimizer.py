"""Optimizer settings, stop rules and training data: nonsense is refused when it is built, and
the model's weights are never differentiated (issue "Nothing silent, nothing lost", item 3;
cases found by benchmarks/reliability_sweep.py)."""

from __future__ import annotations

import pytest
import torch

from steerlens import Datapoint, OptimizeConfig, optimize_vector
from steerlens.errors import InputError, SpecError
from steerlens.training.kinds import ClampSteering
from steerlens.training.objectives import Objective
from steerlens.training.stopping import Plateau, TargetLoss

DP = Datapoint("the cat sat", promote=[" on the mat"], chat=False)


class _CtrlC(Plateau):
    """A stop rule that raises KeyboardInterrupt at its first check, as Ctrl-C would mid-run."""

    def check(self, history, targets=()):
        raise KeyboardInterrupt


def _weights_state(model):
    return [(p.grad is None, p.requires_grad) for p in model.parameters()]


def test_the_weights_stay_untouched_across_calls_and_after_ctrl_c(tiny):
    before = _weights_state(tiny)
    assert all(trainable for _, trainable in before)  # so the test can see a leak
    for _ in range(2):
        optimize_vector(tiny, DP, 1, max_steps=2)
        assert _weights_state(tiny) == before
    with pytest.raises(KeyboardInterrupt):
        optimize_vector(tiny, DP, 1, max_steps=3, stop=(_CtrlC(),))
    assert _weights_state(tiny) == before


def test_backward_differentiates_only_the_steering_parameters(tiny, monkeypatch):
    # Weight gradients would cost 1.6-1.9x per step for nothing: backward() must be asked for
    # the steering parameters alone.
    calls = []
    original = torch.Tensor.backward

    def spy(self, *args, **kwargs):
        calls.append(kwargs.get("inputs"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "backward", spy)
    optimize_vector(tiny, DP, 1, max_steps=2)
    weights = {id(p) for p in tiny.parameters()}
    assert calls and all(inputs for inputs in calls)
    assert not any(id(t) in weights for inputs in calls for t in inputs)


def test_a_non_finite_clamp_strength_is_refused():
    with pytest.raises(SpecError, match="ClampSteering strength must be a finite number"):
        ClampSteering(strength=float("nan"))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: TargetLoss(value=float("nan")), "TargetLoss value must be a finite number"),
        (lambda: TargetLoss(value=1.0, patience=0), "patience must be an int >= 1"),
        (lambda: Plateau(patience=0), "patience must be an int >= 1"),
        (lambda: Plateau(eps=-1.0), "eps must be a finite number > 0"),
    ],
)
def test_stop_rules_that_never_or_always_fire_are_refused(make, match):
    with pytest.raises(SpecError, match=match):
        make()


def test_stop_takes_one_rule_or_a_tuple_of_rules():
    assert OptimizeConfig(stop=Plateau()).stop == (Plateau(),)  # type: ignore[arg-type]
    with pytest.raises(SpecError, match="stop must be a tuple of stop rules"):
        OptimizeConfig(stop=("plateau",))  # type: ignore[arg-type]


def test_bad_positions_fail_when_the_config_is_built():
    with pytest.raises(SpecError, match="unknown position spec 'bogus'"):
        OptimizeConfig(positions="bogus")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"negate": "no"}, "negate must be True or False"),
        ({"promote_targets": [float("nan")]}, "promote_targets must hold finite numbers"),
        ({"promote_targets": ["x"]}, "promote_targets must hold finite numbers"),
    ],
)
def test_datapoint_flags_and_targets_are_checked(kwargs, match):
    with pytest.raises(InputError, match=match):
        Datapoint("a", promote=["b"], **kwargs, chat=False)
    assert Datapoint("a", promote=["b"], promote_targets=[None], chat=False).promote_targets == [
        None
    ]


def test_length_normalize_must_be_a_bool():
    with pytest.raises(SpecError, match="length_normalize must be True or False"):
        Objective(length_normalize="no")  # type: ignore[arg-type]
