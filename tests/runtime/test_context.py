"""The runtime owns where the prompt lies: an outer ``steer()`` block's position rules apply
inside every steerlens forward (generate, beam search, completion log-probs, judges' scoring)
exactly as when the same steering is passed to the function."""

from __future__ import annotations

import pytest
import torch

import steerlens
from steerlens import runtime, steer
from steerlens.errors import SteerlensError
from steerlens.evaluation import beam_search, completion_logprobs
from steerlens.runtime import TokenContext, current_context, token_context
from steerlens.steering.steer import Steering

RULES = ["all", "prompt", "generated", "last:2", [0, 2], slice(1, 3)]


def _vector():
    return torch.randn(64, generator=torch.Generator().manual_seed(7)) * 4


@pytest.mark.parametrize("positions", RULES, ids=str)
def test_generate_inside_outer_steer_equals_steering_argument(tiny, positions):
    prompts = ["the cat", "a much longer prompt than that"]
    v = _vector()
    passed = steerlens.generate(
        tiny, prompts, Steering(v, layer=1, positions=positions), max_new_tokens=6, chat=True
    )
    with steer(tiny, Steering(v, layer=1, positions=positions)):
        outer = steerlens.generate(tiny, prompts, max_new_tokens=6, chat=True)
    assert outer == passed


@pytest.mark.parametrize("positions", RULES, ids=str)
def test_beam_search_inside_outer_steer_equals_steering_argument(tiny, positions):
    v = _vector()
    passed = beam_search(
        tiny, "the cat", k=3, n_tokens=3, steering=Steering(v, layer=1, positions=positions)
    )
    with steer(tiny, Steering(v, layer=1, positions=positions)):
        outer = beam_search(tiny, "the cat", k=3, n_tokens=3)
    assert [h.tokens for h in outer] == [h.tokens for h in passed]
    # The same forward passes on the same rows either way: equal, not close.
    assert [h.logprob for h in outer] == [h.logprob for h in passed]


@pytest.mark.parametrize("positions", RULES, ids=str)
def test_completion_logprobs_inside_outer_steer_equals_steering_argument(tiny, positions):
    v = _vector()
    prompts, completions = ["the cat", "in a"], [" sat on", " the end"]
    passed = completion_logprobs(
        tiny, prompts, completions, steering=Steering(v, layer=1, positions=positions)
    )
    with steer(tiny, Steering(v, layer=1, positions=positions)):
        outer = completion_logprobs(tiny, prompts, completions)
    assert torch.equal(outer.totals, passed.totals)  # the same forward passes either way


def test_generated_positions_steer_generated_tokens_inside_outer_steer(tiny):
    v = _vector()
    plain = steerlens.generate(tiny, "the cat", max_new_tokens=6, chat=True)
    with steer(tiny, Steering(v, layer=1, positions="generated")):
        steered = steerlens.generate(tiny, "the cat", max_new_tokens=6, chat=True)
    assert steered != plain  # before the runtime owned the context, "generated" never applied


def test_plain_forward_inside_steer_counts_every_token_as_prompt(tiny):
    tokens = torch.tensor([[5, 6, 7, 8]])
    v = _vector()
    with torch.no_grad():
        with steer(tiny, Steering(v, layer=1, positions="prompt")):
            prompt_rule = tiny(tokens)
        with steer(tiny, Steering(v, layer=1)):
            all_rule = tiny(tokens)
    torch.testing.assert_close(prompt_rule, all_rule)


def test_context_is_restored_after_an_error():
    ctx = TokenContext.whole_input(1, 3, torch.device("cpu"))
    with pytest.raises(RuntimeError), token_context(ctx):
        raise RuntimeError("boom")
    got = current_context(2, 5, torch.device("cpu"))
    assert got.prompt_end.tolist() == [5, 5]


def test_context_of_another_batch_size_is_refused():
    ctx = TokenContext.whole_input(1, 3, torch.device("cpu"))
    with token_context(ctx), pytest.raises(SteerlensError, match="batch of 2 rows"):
        current_context(2, 3, torch.device("cpu"))


def test_nested_contexts_restore_the_outer_one():
    outer = TokenContext.prompts(torch.tensor([4]))
    inner = TokenContext.prompts(torch.tensor([2]))
    with token_context(outer):
        with token_context(inner):
            assert current_context(1, 9, torch.device("cpu")) is inner
        assert current_context(1, 9, torch.device("cpu")) is outer
    assert runtime.current_context(1, 9, torch.device("cpu")).prompt_end.tolist() == [9]
