"""Padding, scoring and decoding in the runtime agree with plain one-row forward passes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tolerances import FAMILY_GAIN, TINY32, U32, check_logits, logprob_bound

from steerlens import runtime
from steerlens.analysis.scale import residual_norms
from steerlens.errors import ContextWindowError, ContextWindowWarning, InputError, SpecError
from steerlens.testing import tiny_family_model, tiny_model


def _plain_logprobs(model, ids, n_prompt):
    with torch.no_grad():
        logits = model(torch.tensor([ids]))[0].double()
    lp = torch.log_softmax(logits, -1)
    rows = torch.arange(n_prompt - 1, len(ids) - 1)
    return lp[rows, torch.tensor(ids[n_prompt:])]


def test_left_and_right_pad_layouts(tiny):
    tokens, mask, n_pad = runtime.left_pad(tiny, [[5, 6, 7], [8]])
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert n_pad.tolist() == [0, 2]
    assert tokens[1, -1] == 8
    tokens, mask = runtime.right_pad(tiny, [[5, 6, 7], [8]])
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert tokens[1, 0] == 8


def test_score_rows_equals_one_plain_forward_per_row(tiny):
    rows = [([5, 6, 7, 8, 9], 2), ([10, 11], 1), ([12, 13, 14], 1)]
    got = runtime.score_rows(tiny, rows, batch_size=2)
    # Padded rows in batches of two against one row alone: float32 sums in another order, each
    # log-probability within TINY32 (tests/tolerances.py).
    for (ids, p), lp in zip(rows, got, strict=True):
        torch.testing.assert_close(lp.double(), _plain_logprobs(tiny, ids, p), atol=TINY32, rtol=0)


def test_score_rows_refuses_a_row_with_nothing_to_score(tiny):
    with pytest.raises(InputError, match="one token to score"):
        runtime.score_rows(tiny, [([5, 6], 2)])


def test_last_logits_equals_plain_forward(tiny):
    rows = [[5, 6, 7], [8], [9, 10]]
    got = runtime.last_logits(tiny, rows, batch_size=2)
    with torch.no_grad():
        want = torch.cat([tiny(torch.tensor([r]))[:, -1] for r in rows]).float()
    # Logits of another batch: half of TINY32, no log-softmax to double it (tests/tolerances.py).
    check_logits(want)
    torch.testing.assert_close(got, want, atol=TINY32 / 2, rtol=0)


def test_decoder_is_greedy_and_keeps_the_end_of_turn_token(tiny, monkeypatch):
    prompt = [5, 6, 7]
    (ids,) = runtime.decode_tokens(tiny, [prompt], max_new_tokens=4)
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(4):
            seq.append(int(tiny(torch.tensor([seq]))[0, -1].argmax()))
    assert ids == seq[3:]
    # Declare the first decoded token an end-of-turn token: decoding stops after it, keeping it.
    monkeypatch.setattr("steerlens.runtime.decoding.eos_token_ids", lambda m: {ids[0]})
    assert runtime.decode_tokens(tiny, [prompt], max_new_tokens=4) == [[ids[0]]]


def test_decoder_refuses_bad_settings_and_full_contexts(tiny):
    with pytest.raises(SpecError, match="max_new_tokens"):
        runtime.decode_tokens(tiny, [[5]], max_new_tokens=0)
    with pytest.raises(SpecError, match="temperature"):
        runtime.decode_tokens(tiny, [[5]], max_new_tokens=1, temperature=float("nan"))
    n_ctx = runtime.n_ctx(tiny)
    with pytest.raises(ContextWindowError, match="no room to generate"):
        runtime.decode_tokens(tiny, [[5] * n_ctx], max_new_tokens=1)


def test_a_generation_cut_by_the_context_window_says_so(tiny):
    n_ctx = runtime.n_ctx(tiny)
    with pytest.warns(ContextWindowWarning, match=r"stopped after 2 of max_new_tokens=10"):
        out = runtime.decode_tokens(tiny, [[5] * (n_ctx - 2), [6]], max_new_tokens=10)
    assert [len(o) <= 2 for o in out] == [True, True]


def test_kl_divergence_is_zero_for_equal_distributions_and_positive_otherwise():
    p = torch.log_softmax(torch.randn(3, 10), -1)
    q = torch.log_softmax(torch.randn(3, 10), -1)
    # The second argument is normalised again in float32: log_softmax(log p) moves each entry by
    # the rounding of a 10-term logsumexp, (10 + 1) u, and of the subtraction, u |log p|; the
    # p-weighted sum of those moves, with its own rounding, is below twice that.
    bound = 2 * (10 + 1 + float(p.abs().max())) * U32
    assert float(runtime.kl_divergence(p, p).abs().max()) <= bound
    assert bool((runtime.kl_divergence(p, q) > 0).all())


def test_format_prompts_refuses_a_system_message_without_chat(tiny):
    with pytest.raises(InputError, match="system= is only used with chat formatting"):
        runtime.format_prompts(tiny, ["hi"], chat=False, system="be brief")
    plain = tiny_model()
    plain.tokenizer.chat_template = None
    with pytest.raises(InputError, match="this model has no chat template; drop system="):
        runtime.format_prompts(plain, ["hi"], system="be brief")


def test_the_bos_rule(tiny):
    text = "the cat"
    assert runtime.encode(tiny, text) == tiny.tokenizer(text, add_special_tokens=False).input_ids
    assert runtime.encode(tiny, text, bos=True) == tiny.tokenizer(text).input_ids
    chat = runtime.chat_prompt(tiny, "Hi")  # opens with the BOS token itself
    assert runtime.encode(tiny, chat, bos=True) == runtime.encode(tiny, chat)
    ids = runtime.encode(tiny, text, bos=True)
    tokens, merged = runtime.completion_tokens(tiny, ids, text, " sat")
    assert not merged and tokens == runtime.encode(tiny, " sat")


def test_a_prompt_that_is_already_chat_formatted_is_not_templated_again(tiny):
    once = runtime.chat_prompt(tiny, "Hi")
    with pytest.raises(InputError, match=r"already holds the chat template's '<\|im_start\|>'"):
        runtime.format_prompts(tiny, [once], chat=True)
    assert runtime.format_prompts(tiny, [once], chat=False) == [once]


def test_float64_left_padded_decoding_equals_each_row_alone():
    # A float64 model's masked scores are -inf in the Bridge's float32 softmax: a left pad's
    # query saw no key and went NaN, and the next layer spread it to the row's real tokens.
    model = tiny_model(dtype=torch.float64)
    rows = [[5, 6, 7, 8, 9, 10], [7, 3], [11, 12, 13]]
    tokens, mask, n_pad = runtime.left_pad(model, rows)
    ctx = runtime.TokenContext(n_pad, torch.full_like(n_pad, tokens.shape[1]), 0)
    with torch.no_grad():
        batched, _ = runtime.next_logits(model, tokens, mask, None, 0, ctx)
        for i, ids in enumerate(rows):
            alone = model(torch.tensor([ids]))[0, -1]
            check_logits(alone)
            # Only the attention softmax rounds in float32, over at most len(ids) keys.
            bound = logprob_bound(len(rows[0]))
            torch.testing.assert_close(
                batched[i].log_softmax(-1), alone.log_softmax(-1), atol=bound, rtol=0
            )


@pytest.mark.parametrize("family", ["mistral", "gemma2"])
def test_float64_sliding_window_right_padded_rows_equal_each_row_alone(family):
    # Under a sliding window a pad more than a window past a right-padded row's end sees no
    # key: its float32 softmax went NaN and the next layer spread it to the real tokens (the
    # hooked engine's forward, and activations read past layer 1).
    model = tiny_family_model(family, dtype=torch.float64)
    rows = [list(range(5, 17)), [5, 6]]
    tokens, mask = runtime.right_pad(model, rows)
    at = [(i, p) for i, ids in enumerate(rows) for p in range(len(ids))]
    ctx = runtime.TokenContext.prompts(torch.tensor([len(r) for r in rows]))
    with torch.no_grad():
        batched = runtime.logits_at(
            model,
            tokens,
            mask,
            torch.tensor([i for i, _ in at]),
            torch.tensor([p for _, p in at]),
            ctx,
        )
        alone = torch.cat([model(torch.tensor([ids]))[0] for ids in rows])
    largest = float(alone.abs().max())
    # Only the attention softmax rounds in float32, over at most 12 keys; the family's layers
    # amplify that by less than FAMILY_GAIN (tests/tolerances.py).
    bound = FAMILY_GAIN * logprob_bound(len(rows[0]), largest)
    torch.testing.assert_close(batched.log_softmax(-1), alone.log_softmax(-1), atol=bound, rtol=0)
    deep = tiny_family_model(family, n_layers=3, dtype=torch.float64)
    norms = residual_norms(deep, ["the cat sat on the mat and then the dog ran far", "a"])
    assert np.isfinite(norms.typical).all()


def test_finite_scores_hooks_only_float64_models_and_removes_them():
    model = tiny_model(dtype=torch.float64)
    with runtime.finite_scores(model):
        assert model.blocks[0].attn.hook_attn_scores.fwd_hooks
    assert not model.blocks[0].attn.hook_attn_scores.fwd_hooks
    model32 = tiny_model()
    with runtime.finite_scores(model32):
        assert not model32.blocks[0].attn.hook_attn_scores.fwd_hooks
