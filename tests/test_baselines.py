"""CAA (difference of means), PCA of paired differences, and activation collection."""

from __future__ import annotations

import pytest
import torch
from tolerances import U32, activation_bound, rescale_bound

from steerlens import runtime
from steerlens.baselines import (
    collect_activations,
    diff_of_means,
    mean_activations,
    pca_direction,
    principal_direction,
    reduce_span,
    supports_stop_at_layer,
)
from steerlens.errors import LayerError, SpecError, SteerlensError

POS = ["the cat sat on the mat", "a dog", "in the house of the king", "P"]
NEG = ["the bird", "it is here now", "a", "the end of the story is near"]


def _manual(model, texts, layer, span):
    """One prompt at a time, full forward, no padding: the reduced activation of each text."""
    out = []
    for text in texts:
        prompt, completion = text if isinstance(text, tuple) else (text, None)
        ids = runtime.encode(model, prompt)
        full = ids + (runtime.encode(model, prompt + completion)[len(ids) :] if completion else [])
        with torch.no_grad():
            _, cache = model.run_with_cache(torch.tensor([full]))
        acts = cache[runtime.hook_name(layer)][0]
        start, stop = span(len(ids), len(full))
        out.append(acts[start:stop].double().mean(dim=0))
    return torch.stack(out)


def _means_bound(acts, n):
    """How far a float32 mean of ``n`` activations, computed in two orders, may be: each
    activation within `activation_bound` of its largest magnitude, and the mean's own float32
    sum of n terms and division within (n + 1) u of that magnitude (tests/tolerances.py)."""
    largest = float(acts.abs().max())
    return activation_bound(largest) + 2 * (n + 1) * U32 * largest


SPANS = {
    "last": lambda p, t: (p - 1, p),
    "mean": lambda p, t: (0, p),
    "completion": lambda p, t: (p, t),
}


@pytest.mark.parametrize("position", ["last", "mean"])
def test_caa_equals_a_manual_mean_difference(tiny, position):
    v = diff_of_means(tiny, POS, NEG, [0, 1], position=position, batch_size=3, chat=False)
    for layer in (0, 1):
        pos = _manual(tiny, POS, layer, SPANS[position])
        neg = _manual(tiny, NEG, layer, SPANS[position])
        expected = pos.mean(0) - neg.mean(0)
        # Padded batches against one prompt at a time: each mean within _means_bound.
        atol = 2 * _means_bound(torch.cat([pos, neg]), len(POS))
        torch.testing.assert_close(v.directions[layer].double(), expected, rtol=0, atol=atol)


def test_caa_over_completions_equals_a_manual_mean_difference(tiny):
    pos = [("Q: colour?\nA:", " red and blue"), ("Q: cat?\nA:", " yes")]
    neg = [("Q: colour?\nA:", " no"), ("Q: cat?\nA:", " the end of it")]
    v = diff_of_means(tiny, pos, neg, 1, position="completion", batch_size=2, chat=False)
    span = SPANS["completion"]
    acts_pos, acts_neg = _manual(tiny, pos, 1, span), _manual(tiny, neg, 1, span)
    expected = acts_pos.mean(0) - acts_neg.mean(0)
    atol = 2 * _means_bound(torch.cat([acts_pos, acts_neg]), len(pos))
    torch.testing.assert_close(v.directions[1].double(), expected, rtol=0, atol=atol)
    same = diff_of_means(
        tiny,
        [p for p, _ in pos],
        [p for p, _ in neg],
        1,
        position="completion",
        completions=([c for _, c in pos], [c for _, c in neg]),
        chat=False,
    )
    # Another batch size (16, not 2): the same sums in another order.
    torch.testing.assert_close(same.directions[1], v.directions[1], rtol=0, atol=atol)


@pytest.mark.parametrize("position", ["last", "mean", "completion"])
def test_padding_never_enters_the_means(tiny, position):
    texts = POS + NEG
    kw = {}
    if position == "completion":
        kw["completions"] = ["x", " the long completion here", " a", " b c d e f"] * 2
    batched = collect_activations(
        tiny, texts, [0, 1], position=position, batch_size=8, **kw, chat=False
    )
    single = collect_activations(
        tiny, texts, [0, 1], position=position, batch_size=1, **kw, chat=False
    )
    for layer in (0, 1):
        assert batched[layer].shape == (8, 64)
        # Padded or alone: the same sums in another order (activation_bound), while a pad
        # read into a mean moves it by about the activations' own size.
        atol = activation_bound(float(single[layer].abs().max()))
        torch.testing.assert_close(batched[layer], single[layer], rtol=0, atol=atol)
    means = mean_activations(tiny, texts, [0, 1], position=position, batch_size=3, **kw, chat=False)
    torch.testing.assert_close(means[1], single[1].mean(0), rtol=0, atol=_means_bound(single[1], 8))


def test_reduction_reads_only_the_span():
    acts = torch.full((2, 4, 3), float("nan"))
    acts[0, 1:3] = torch.tensor([[1.0, 2, 3], [3, 4, 5]])
    acts[1, 0] = torch.tensor([7.0, 8, 9])
    span = torch.tensor([[False, True, True, False], [True, False, False, False]])
    assert reduce_span(acts, span).tolist() == [[2.0, 3.0, 4.0], [7.0, 8.0, 9.0]]


def test_stops_the_forward_after_the_last_needed_layer(tiny):
    assert supports_stop_at_layer(tiny)


def test_chat_formats_prompts_with_the_template(tiny):
    a = diff_of_means(tiny, ["hi"], ["yo"], 1, chat=True)
    b = diff_of_means(
        tiny, [runtime.chat_prompt(tiny, "hi")], [runtime.chat_prompt(tiny, "yo")], 1, chat=False
    )
    assert torch.equal(a.directions[1], b.directions[1])  # the same texts, batches and order


def test_provenance(tiny):
    v = diff_of_means(tiny, POS, NEG, [1, 0, 1], position="mean", chat=False)
    assert v.layers == [0, 1]
    p = v.provenance
    assert p["method"] == "diff_of_means"
    assert (p["n_positive"], p["n_negative"], p["position"]) == (4, 4, "mean")
    assert p["examples"]["positive"] == POS[:3]
    assert v.model_id == runtime.model_id(tiny)
    w = pca_direction(tiny, POS, NEG, 1, chat=False)
    assert w.provenance["method"] == "pca_of_differences"
    assert w.provenance["paired"] is True


def _planted(n=60, d=64, seed=0, flip=False):
    g = torch.Generator().manual_seed(seed)
    direction = torch.randn(d, generator=g)
    direction /= direction.norm()
    scale = 1 + 2 * torch.rand(n, 1, generator=g)
    if flip:
        scale *= torch.where(torch.rand(n, 1, generator=g) < 0.5, -1.0, 1.0)
    return direction, scale * direction + 0.1 * torch.randn(n, d, generator=g)


def test_pca_recovers_a_planted_direction():
    direction, diffs = _planted()
    u = principal_direction(diffs)
    assert float(u.norm()) == pytest.approx(1.0, rel=0, abs=rescale_bound(64))
    assert float(u @ direction) > 0.99
    assert float(principal_direction(-diffs) @ direction) < -0.99


def test_centred_pca_recovers_a_planted_direction_with_random_signs():
    direction, diffs = _planted(flip=True)
    u = principal_direction(diffs, center=True)
    assert abs(float(u @ direction)) > 0.99
    assert float((diffs @ u).mean()) >= 0  # signed so that the pairs project positively


def test_pca_direction_on_the_model(tiny):
    v = pca_direction(tiny, POS, NEG, 1, chat=False)
    d = v.directions[1]
    acts_pos = collect_activations(tiny, POS, 1, chat=False)[1]
    acts_neg = collect_activations(tiny, NEG, 1, chat=False)[1]
    assert float((acts_pos @ d).mean()) > float((acts_neg @ d).mean())
    # One pair: the principal direction of one difference, scaled by its projection, is it.
    one = pca_direction(tiny, POS[:1], NEG[:1], 1, chat=False).directions[1]
    caa = diff_of_means(tiny, POS[:1], NEG[:1], 1, chat=False).directions[1]
    torch.testing.assert_close(one, caa, rtol=1e-4, atol=1e-5)


def test_bad_inputs(tiny):
    with pytest.raises(SteerlensError, match="same length"):
        diff_of_means(tiny, POS, NEG[:2], 1, paired=True, chat=False)
    with pytest.raises(SteerlensError, match="same length"):
        pca_direction(tiny, POS, NEG[:3], 1, chat=False)
    with pytest.raises(SteerlensError, match="positive set is empty"):
        diff_of_means(tiny, [], NEG, 1, chat=False)
    with pytest.raises(SteerlensError, match="negative set is empty"):
        diff_of_means(tiny, POS, [], 1, chat=False)
    with pytest.raises(LayerError, match="out of range"):
        diff_of_means(tiny, POS, NEG, [0, 5], chat=False)
    with pytest.raises(LayerError, match="out of range"):
        pca_direction(tiny, POS, NEG, -1, chat=False)
    with pytest.raises(LayerError, match="no layer"):
        diff_of_means(tiny, POS, NEG, [], chat=False)
    with pytest.raises(SpecError, match="unknown position"):
        diff_of_means(tiny, POS, NEG, 1, position="first", chat=False)  # type: ignore[arg-type]
    with pytest.raises(SteerlensError, match="pairs"):
        collect_activations(tiny, ["a"], 1, position="completion", chat=False)
    with pytest.raises(SteerlensError, match="position='completion'"):
        collect_activations(tiny, [("a", " b")], 1, chat=False)
    with pytest.raises(SteerlensError, match="2 prompts but 1 completions"):
        collect_activations(
            tiny, ["a", "b"], 1, position="completion", completions=["x"], chat=False
        )
    with pytest.raises(SteerlensError, match="empty"):
        collect_activations(tiny, ["a", "  "], 1, chat=False)
    with pytest.raises(SpecError, match="batch_size"):
        collect_activations(tiny, ["a"], 1, batch_size=0, chat=False)
    with pytest.raises(SteerlensError, match="all differences are zero"):
        principal_direction(torch.zeros(3, 4))


def test_mean_activations_takes_the_reading_keywords_and_refuses_others(tiny):
    import inspect

    from steerlens.baselines import READING_OPTIONS, collect_activations, mean_activations

    params = list(inspect.signature(collect_activations).parameters)
    assert list(READING_OPTIONS) == params[params.index("layer") + 1 :]
    prompts = ["the cat", "a dog", "in"]
    means = mean_activations(tiny, prompts, 1, position="mean", batch_size=2, chat=False)
    acts = collect_activations(tiny, prompts, 1, position="mean", chat=False)
    # Batches of 2 against one of 3: another order (_means_bound).
    torch.testing.assert_close(means[1], acts[1].mean(0), atol=_means_bound(acts[1], 3), rtol=0)
    with pytest.raises(SpecError, match=r"unknown keyword\(s\) 'pos'.*position"):
        mean_activations(tiny, prompts, 1, pos="mean", chat=False)


def test_bos_switch_matches_the_tokenizers_default_ids(tiny):
    """With bos=True, diff_of_means is the mean difference of activations computed on
    tokenizer(text).input_ids, the ids steering-vectors and repeng feed the model."""
    pos, neg = ["the cat sat", "a dog ran"], ["in the end", "the end"]

    def last_act(text, layer):
        ids = torch.tensor([tiny.tokenizer(text).input_ids])
        _, cache = tiny.run_with_cache(ids, names_filter=[f"blocks.{layer}.hook_resid_pre"])
        return cache[f"blocks.{layer}.hook_resid_pre"][0, -1]

    v = diff_of_means(tiny, pos, neg, 1, bos=True, chat=False)
    acts_pos = torch.stack([last_act(t, 1) for t in pos])
    acts_neg = torch.stack([last_act(t, 1) for t in neg])
    expected = acts_pos.mean(0) - acts_neg.mean(0)
    atol = 2 * _means_bound(torch.cat([acts_pos, acts_neg]), len(pos))
    torch.testing.assert_close(v.directions[1], expected, atol=atol, rtol=0)
    assert v.provenance["bos"] is True
    plain = diff_of_means(tiny, pos, neg, 1, chat=False)
    assert plain.provenance["bos"] is False
    assert not torch.allclose(plain.directions[1], v.directions[1])


def test_peer_layer_convention_decoder_output_k_is_our_layer_k_plus_1(tiny):
    """steering-vectors / repeng read the output of decoder block k (Hugging Face
    hidden_states[k + 1]) on tokenizer(text).input_ids: that is our
    blocks.{k+1}.hook_resid_pre with bos=True (docs/howto.md)."""
    pos, neg = ["the cat sat", "a dog ran"], ["in the end", "the end"]
    hf = tiny.original_model
    k = 0

    def block_output(text):
        ids = torch.tensor([tiny.tokenizer(text).input_ids])
        with torch.no_grad():
            out = hf(ids, output_hidden_states=True)
        return out.hidden_states[k + 1][0, -1]

    acts_pos = torch.stack([block_output(t) for t in pos])
    acts_neg = torch.stack([block_output(t) for t in neg])
    expected = acts_pos.mean(0) - acts_neg.mean(0)
    ours = diff_of_means(tiny, pos, neg, k + 1, bos=True, chat=False)
    # Hugging Face's forward and the Bridge's hooks: the same sums in other orders.
    atol = 2 * _means_bound(torch.cat([acts_pos, acts_neg]), len(pos))
    torch.testing.assert_close(ours.directions[k + 1], expected, atol=atol, rtol=0)


def test_long_readings_show_progress_and_short_ones_do_not(tiny, capsys):
    from steerlens.baselines import diff_of_means, pca_direction

    pos, neg = ["the cat", "the dog", "a cat"], ["a dog", "in the", "the"]
    diff_of_means(tiny, pos, neg, 1, batch_size=2, progress=True, chat=False)
    err = capsys.readouterr().err
    assert err.count("activations") >= 2 and "3/3" in err
    pca_direction(tiny, pos, neg, 1, batch_size=2, progress=True, chat=False)
    assert "activations" in capsys.readouterr().err
    diff_of_means(tiny, pos, neg, 1, batch_size=4, progress=True, chat=False)  # one batch: no bar
    assert "activations" not in capsys.readouterr().err
