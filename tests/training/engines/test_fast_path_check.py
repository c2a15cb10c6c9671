"""The fast-path check runs once per (model, layer set, kind of layout) and runs again whenever
the model changes: its dtype, its weights, the hooks attached to it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import steerlens.training.engines.make as make_module
from steerlens import Datapoint, OptimizeConfig, optimize_vector
from steerlens.testing import tiny_family_model, tiny_model
from steerlens.training.data import tokenize
from steerlens.training.engines import (
    HookedEngine,
    PackedEngine,
    forget_checks,
    make_engine,
)

DP = Datapoint("the cat sat on", promote=[" the mat"], suppress=[" a hat"])


@pytest.fixture
def runs(monkeypatch):
    """The packed engines the check has been run on (the real check, counted)."""
    seen: list[PackedEngine] = []
    real = make_module.fast_path_agrees

    def counted(model, packed, hooked, group):
        seen.append(packed)
        return real(model, packed, hooked, group)

    monkeypatch.setattr(make_module, "fast_path_agrees", counted)
    return seen


def build(model, layers=(1,), positions=None):
    return make_engine(model, tokenize(model, [DP], positions), list(layers))


def test_a_second_engine_for_the_same_model_and_layers_skips_the_check(runs):
    model = tiny_model()
    first, second = build(model), build(model)
    assert isinstance(first, PackedEngine) and isinstance(second, PackedEngine)
    assert len(runs) == 1


def test_other_layers_or_another_kind_of_layout_are_checked_again(runs):
    model = tiny_model()
    build(model, [1])
    build(model, [0])
    build(model, [0, 1])
    build(model, [1], "last:1")  # frozen prefixes: attention reads cached keys
    build(model, [1], "last:1")
    assert len(runs) == 4


def test_a_change_of_dtype_runs_the_check_again(runs):
    model = tiny_model()
    build(model)
    model.to(torch.float64)
    assert isinstance(build(model), PackedEngine)
    build(model)
    assert len(runs) == 2


def test_weights_changed_in_place_run_the_check_again(runs):
    model = tiny_model()
    build(model)
    with torch.no_grad():
        model.original_model.model.layers[1].mlp.down_proj.weight.mul_(0.5)
    build(model)
    model.original_model.model.layers[0].mlp.up_proj.weight = torch.nn.Parameter(
        torch.zeros_like(model.original_model.model.layers[0].mlp.up_proj.weight)
    )
    build(model)
    assert len(runs) == 3


def test_forget_checks_runs_the_check_again(runs):
    model = tiny_model()
    build(model)
    forget_checks(model)
    build(model)
    assert len(runs) == 2


def test_a_hook_attached_after_a_passed_check_is_caught():
    # The hook changes what the model computes, and the packed path cannot see it: the cached
    # verdict must not hide that.
    model = tiny_model()
    assert isinstance(build(model), PackedEngine)
    model.blocks[0].hook_resid_pre.add_hook(lambda x, hook: x * 2.0)
    try:
        with pytest.warns(UserWarning, match="does not reproduce"):
            engine = build(model)
        assert isinstance(engine, HookedEngine)
    finally:
        model.reset_hooks()
    assert isinstance(build(model), PackedEngine)


def test_hooks_in_a_context_are_checked_and_the_verdict_before_them_comes_back(runs):
    model = tiny_model()
    build(model)
    with model.hooks(fwd_hooks=[("blocks.1.hook_resid_pre", lambda x, hook: x)]):
        assert isinstance(build(model), PackedEngine)  # a hook that changes nothing passes
    build(model)
    assert len(runs) == 3


def test_a_failed_verdict_is_kept_and_warned_at_every_engine(monkeypatch):
    calls = []

    def disagrees(model, packed, hooked, group):
        calls.append(1)
        return False

    monkeypatch.setattr(make_module, "fast_path_agrees", disagrees)
    model = tiny_model()
    for _ in range(2):
        with pytest.warns(UserWarning, match="does not reproduce"):
            assert isinstance(build(model), HookedEngine)
    assert len(calls) == 1


def test_results_are_equal_with_and_without_the_kept_verdict():
    model = tiny_model()
    config = OptimizeConfig(lr=0.1, max_steps=4, seed=1)
    first = optimize_vector(model, DP, 1, config)  # runs the check
    kept = optimize_vector(model, DP, 1, config)  # skips it
    forget_checks(model)
    again = optimize_vector(model, DP, 1, config)  # runs it again
    assert first.engine == kept.engine == again.engine == "packed"
    np.testing.assert_array_equal(first.loss_history, kept.loss_history)
    np.testing.assert_array_equal(first.loss_history, again.loss_history)
    assert torch.equal(first.vector.vector, kept.vector.vector)
    for r in (first, kept, again):
        assert 0.0 < r.setup_time_s < r.wall_time_s


def test_the_kind_of_layout_names_the_windows_reached_and_shared_rows(runs):
    model = tiny_family_model("mistral")  # a 4-token sliding window
    short = Datapoint("ab", promote=["c"], chat=False)  # farthest reach back: 1 position
    long = Datapoint("the cat sat on", promote=[" the mat"], chat=False)
    kinds = [
        PackedEngine(model, tokenize(model, data), [1]).layout_kind(0)
        for data in ([short], [long], [short, short])
    ]
    assert [k.windows_reached for k in kinds] == [(), (4,), ()]
    assert [k.shared_rows for k in kinds] == [False, False, True]
    assert not any(k.frozen_prefix for k in kinds)
    make_engine(model, tokenize(model, [short]), [1])
    make_engine(model, tokenize(model, [long]), [1])  # reaches past the window: checked again
    make_engine(model, tokenize(model, [long, long]), [1])  # several prompts in a row: again
    assert len(runs) == 3


def test_a_changed_config_runs_the_check_again(runs):
    model = tiny_family_model("mistral")
    build(model)
    model.original_model.config.sliding_window = 3
    build(model)
    assert len(runs) == 2
