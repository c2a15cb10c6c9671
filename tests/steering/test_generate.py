import pytest
import torch

import steerlens
from steerlens import runtime
from steerlens.errors import SteerlensError
from steerlens.runtime import TokenContext, left_pad, token_context
from steerlens.steering.steer import Steering, steer
from steerlens.testing import tiny_model


def _reference_greedy(model, prompt_ids, n_new, **steer_kwargs):
    """Greedy decoding with no KV cache: the whole sequence recomputed every step."""
    ids = list(prompt_ids)
    ctx = TokenContext(torch.tensor([0]), torch.tensor([len(prompt_ids)]), 0)
    plan = Steering(steer_kwargs.pop("steering"), **steer_kwargs)
    with steer(model, plan), token_context(ctx):
        for _ in range(n_new):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt_ids) :]


@pytest.mark.parametrize("positions", ["all", "prompt", "generated", "opening:2", "last:2", [0, 3]])
def test_cached_generation_respects_positions(tiny, positions):
    prompt = runtime.chat_prompt(tiny, "the cat")
    ids = runtime.encode(tiny, prompt)
    v = torch.randn(64) * 4
    expected = _reference_greedy(tiny, ids, 6, steering=v, layer=1, positions=positions)
    got = steerlens.generate(
        tiny, "the cat", Steering(v, layer=1, positions=positions), max_new_tokens=6, chat=True
    )
    eos = runtime.eos_token_ids(tiny)
    cut = next((i for i, t in enumerate(expected) if t in eos), len(expected))
    assert got == runtime.decode(tiny, expected[:cut])


def test_batched_equals_one_by_one_with_left_padding(tiny):
    prompts = ["a", "the longer prompt here", "in"]
    v = torch.randn(64)
    batched = steerlens.generate(
        tiny, prompts, Steering(v, layer=0, positions="prompt"), max_new_tokens=5, chat=True
    )
    single = [
        steerlens.generate(
            tiny, p, Steering(v, layer=0, positions="prompt"), max_new_tokens=5, chat=True
        )
        for p in prompts
    ]
    assert batched == single


def test_sampling_is_deterministic_for_a_seed(tiny):
    a = steerlens.generate(tiny, ["hi", "yo"], temperature=1.0, seed=3, max_new_tokens=8, chat=True)
    b = steerlens.generate(tiny, ["hi", "yo"], temperature=1.0, seed=3, max_new_tokens=8, chat=True)
    assert a == b


def test_left_pad_layout(tiny):
    tokens, mask, n_pad = left_pad(tiny, [[5, 6, 7], [8]])
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert n_pad.tolist() == [0, 2]
    assert tokens[1, -1] == 8


def test_bad_prompts(tiny):
    with pytest.raises(SteerlensError, match="prompt list is empty"):
        steerlens.generate(tiny, [], chat=True)
    with pytest.raises(SteerlensError, match="prompt 1 is empty"):
        steerlens.generate(tiny, ["ok", "  "], chat=True)
    with pytest.raises(SteerlensError, match="max_new_tokens"):
        steerlens.generate(tiny, "ok", max_new_tokens=0, chat=True)


def test_float64_steered_batch_equals_one_by_one_with_left_padding():
    # The float64 Bridge once decoded left-padded rows to NaN logits (argmax 0): its float32
    # softmax turned a pad's all-masked scores into -inf (steerlens.runtime.masking).
    model = tiny_model(dtype=torch.float64)
    prompts = ["a", "the longer prompt here", "in"]
    plan = Steering(torch.randn(64, dtype=torch.float64) * 4, layer=1)
    batched = steerlens.generate(model, prompts, plan, max_new_tokens=6, chat=True)
    single = [steerlens.generate(model, p, plan, max_new_tokens=6, chat=True) for p in prompts]
    assert batched == single
