"""Per model family, on tiny random models built offline from each family's config: the packed
engine (through the family's adapter) gives the hooked engine's losses and gradients, with
several groups of different lengths, negated datapoints, any layer and any positions; cached
steered generation equals uncached; a family without an adapter takes the hooked path with one
notice.

Tolerance: tests/tolerances.py derives it. Both engines compute in float32 and add in other
orders; these models (weights std 0.2) amplify rounding up to 16x, so a log-probability may move
by ``family_bound(L)`` (``FAMILY_GAIN`` times the plain bound, L the largest logit seen) and a
completion's loss by its token count times that; `test_rounding_gain_is_below_the_bound` checks
the premise and `test_a_wrong_layer_or_position_exceeds_the_bound` that a real error exceeds it.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from tolerances import FAMILY_GAIN, family_bound, rounding_gain

import steerlens
from steerlens import Datapoint, runtime
from steerlens.runtime import TokenContext, token_context
from steerlens.steering.interventions import Add, Affine, Clamp
from steerlens.steering.steer import Steering, steer
from steerlens.testing import TINY_FAMILIES, tiny_family_model, tiny_model
from steerlens.training.data import score_layout, tokenize
from steerlens.training.engines import (
    HookedEngine,
    NoAdapterNotice,
    PackedEngine,
    make_engine,
    steering_function,
)
from steerlens.training.engines import make as make_module
from steerlens.training.engines.families import adapter_for, registered
from steerlens.training.objectives import Objective

FAST = [f for f in TINY_FAMILIES if f != "opt"]
SLIDING = {"mistral", "qwen2", "phi3", "gemma2", "gemma3"}
D = 64


@pytest.fixture(scope="module", params=FAST)
def family(request):
    return request.param, tiny_family_model(request.param, n_layers=3)


def _datapoints(model):
    """Three datapoints in two groups of different packed lengths (so rows are padded), one
    negated, one in the chat template; prompts longer than the sliding window (4)."""
    return [
        Datapoint(
            "the cat sat on the mat", promote=[" on the mat", " in"], suppress=[" xyz"], chat=False
        ),
        Datapoint("a dog ran far away", promote=[" away from home!"], negate=True, chat=False),
        Datapoint.from_message(model, "Hi there", promote=["Hello there"], suppress=["No"]),
    ]


GROUPS = [0, 1, 1]


def _rand(*shape, seed, scale):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def _intervention(kind, params):
    if kind == "add":
        return Add(params["v"])
    if kind == "clamp":
        return Clamp(params["v"])
    return Affine(params["left"], params["right"], params["v"])


def _params(kind, seed):
    out = {"v": _rand(D, seed=seed, scale=0.5)}
    if kind == "affine":
        out |= {"left": _rand(2, D, seed=seed + 1, scale=0.3)}
        out |= {"right": _rand(2, D, seed=seed + 2, scale=0.3)}
    return out


def _losses_and_grads(engine, data, kind, chosen):
    """Per-completion losses of the chosen groups (group g steered by its own parameters,
    seeded by g), the gradient of their sum w.r.t. every chosen group's parameters, and the
    largest |logit|."""
    params = {
        g: {k: t.requires_grad_(True) for k, t in _params(kind, 10 * g).items()} for g in chosen
    }
    strength = 2.0 if kind == "clamp" else 1.0
    fns = {g: steering_function(_intervention(kind, p), strength, True) for g, p in params.items()}
    rows = [t for t, g in zip(data, GROUPS, strict=True) if g in chosen]
    logits = engine.logits(fns)
    losses = Objective().losses(logits, score_layout(rows, torch.device("cpu")))
    losses.sum().backward()
    grads = torch.cat([p.grad.flatten() for g in chosen for p in params[g].values()])
    return losses.detach(), grads, float(logits.detach().abs().max())


def _bounds(data, chosen, largest_logit):
    """Per completion of the chosen groups: its token count times `family_bound` (module
    docstring); and the gradient's, relative to its largest coordinate. The backward pass runs
    the same reductions transposed, amplified alike, and a log-softmax's gradient is below one
    whatever the logits, so the gradient gets the bound with L = 1."""
    rows = [t for t, g in zip(data, GROUPS, strict=True) if g in chosen]
    tokens = np.array([len(c.tokens) for t in rows for c in t.completions])
    return tokens * family_bound(largest_logit), family_bound(1.0)


def _gaps(a, b, ga, gb):
    """Per completion, how far two engines' losses are; and their gradients', relative to the
    largest coordinate."""
    loss = (a.double() - b.double()).abs().numpy()
    return loss, float((ga - gb).abs().max() / gb.abs().max())


CASES = {
    "add-mid": ("add", [1], None),
    "add-layer0-prompt": ("add", [0], "prompt"),
    "add-mid-last2": ("add", [1], "last:2"),
    "clamp-layer0": ("clamp", [0], None),
    "clamp-mid-prompt": ("clamp", [1], "prompt"),
    "affine-mid-last2": ("affine", [1], "last:2"),
    "affine-layer0-and-mid": ("affine", [0, 1], None),
}


def _engines(model, positions, layers):
    data = tokenize(model, _datapoints(model), positions)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback, no notice
        packed = make_engine(model, data, layers, groups=GROUPS)
    hooked = make_engine(model, data, layers, fast=False, groups=GROUPS)
    assert isinstance(packed, PackedEngine) and isinstance(hooked, HookedEngine)
    return data, packed, hooked


@pytest.mark.parametrize("case", list(CASES))
def test_packed_losses_and_gradients_equal_hooked(family, case):
    name, model = family
    kind, layers, positions = CASES[case]
    data, packed, hooked = _engines(model, positions, layers)
    for chosen in ([0, 1], [1]):  # every group, and a subset (group 1 alone)
        lp, gp, _ = _losses_and_grads(packed, data, kind, chosen)
        lh, gh, largest = _losses_and_grads(hooked, data, kind, chosen)
        assert float(gh.abs().max()) > 0
        loss_bounds, grad_bound = _bounds(data, chosen, largest)
        loss_gap, grad_gap = _gaps(lp, lh, gp, gh)
        assert np.all(loss_gap <= loss_bounds), (name, chosen, loss_gap / loss_bounds)
        assert grad_gap <= grad_bound, (name, chosen, grad_gap / grad_bound)


def test_rounding_gain_is_below_the_bound(family):
    """The premise of `family_bound`: this family's model amplifies a relative error of its
    residual stream by less than ``FAMILY_GAIN`` (measured on a float64 copy)."""
    name, _ = family
    model = tiny_family_model(name, n_layers=3, dtype=torch.float64)
    tokens = torch.tensor([runtime.encode(model, "the cat sat on the mat, a dog ran far away")])
    assert rounding_gain(model, tokens) < FAMILY_GAIN


@pytest.mark.parametrize(
    ("case", "wrong"),
    [("add-mid-last2", ([1], "last:3")), ("add-mid", ([2], None))],
    ids=["one-position-more", "next-layer"],
)
def test_a_wrong_layer_or_position_exceeds_the_bound(family, case, wrong):
    """The bound is no blanket: steering one more position moves the gradient past it (and the
    losses for most families), steering the next layer moves the losses past it."""
    name, model = family
    kind, layers, positions = CASES[case]
    data, _, hooked = _engines(model, positions, layers)
    _, shifted, _ = _engines(model, wrong[1], wrong[0])
    lh, gh, largest = _losses_and_grads(hooked, data, kind, [0, 1])
    ls, gs, _ = _losses_and_grads(shifted, data, kind, [0, 1])
    loss_bounds, grad_bound = _bounds(data, [0, 1], largest)
    loss_gap, grad_gap = _gaps(ls, lh, gs, gh)
    assert grad_gap > 10 * grad_bound, (name, grad_gap / grad_bound)
    if wrong[0] != layers:
        assert np.any(loss_gap > loss_bounds), (name, (loss_gap / loss_bounds).max())


def test_steering_and_negation_matter(family):
    _, model = family
    _, packed, _ = _engines(model, None, [1])
    v = _rand(D, seed=3, scale=0.5)

    def losses(vector, any_negated):
        fn = steering_function(Add(vector), 1.0, any_negated)
        return Objective().losses(packed.logits(fn), packed.layout)

    with torch.no_grad():
        base, plus, plain = losses(0 * v, True), losses(v, True), losses(v, False)
    assert not torch.allclose(base, plus, rtol=1e-3)
    # Only the negated datapoint's completion (the fourth) changes when negation is honoured;
    # the others are exactly equal: their sign is 1.0, and x + 1.0 * s * v is x + s * v.
    differs = plus != plain
    assert differs.tolist() == [False, False, False, True, False, False]


def test_sliding_window_is_shorter_than_the_packed_rows(family):
    name, model = family
    _, packed, _ = _engines(model, None, [1])
    adapter = adapter_for(model)
    windows = {adapter.window(i) for i in range(adapter.n_layers)}
    if name in SLIDING:
        assert min(w for w in windows if w is not None) < packed.position_ids.max()
        # the window cuts the tree mask: it allows fewer pairs than the plain tree
        w = min(w for w in windows if w is not None)
        tree = packed.masks.get(None)
        n_tree = int((tree == 0).sum()) if tree is not None else None
        assert n_tree is None or int((packed.masks[w] == 0).sum()) < n_tree
    else:
        assert windows == {None}


def _reference_greedy(model, prompt_ids, n_new, plan):
    """Greedy decoding without a KV cache: the whole sequence recomputed every step."""
    ids = list(prompt_ids)
    ctx = TokenContext(torch.tensor([0]), torch.tensor([len(prompt_ids)]), 0)
    with steer(model, plan), token_context(ctx):
        for _ in range(n_new):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt_ids) :]


@pytest.mark.parametrize("positions", ["all", "prompt", "last:2"])
def test_cached_steered_generation_equals_uncached(family, positions):
    _, model = family
    v = _rand(D, seed=7, scale=4.0)
    plan = Steering(v, layer=1, positions=positions)
    ids = runtime.encode(model, runtime.chat_prompt(model, "the cat"))
    expected = _reference_greedy(model, ids, 6, plan)
    got = steerlens.generate(model, "the cat", plan, max_new_tokens=6, chat=True)
    eos = runtime.eos_token_ids(model)
    cut = next((i for i, t in enumerate(expected) if t in eos), len(expected))
    assert got == runtime.decode(model, expected[:cut])


def test_every_tested_family_has_an_adapter():
    names = {TINY_FAMILIES[f][1] for f in FAST}
    assert names <= set(registered())
    assert type(adapter_for(tiny_model())).__name__ == "LlamaAdapter"


def test_a_family_without_an_adapter_takes_the_hooked_path_with_one_notice(monkeypatch):
    monkeypatch.setattr(make_module, "_NOTICED", set())
    model = tiny_family_model("opt")
    assert adapter_for(model) is None
    data = tokenize(model, _datapoints(model), None)
    with pytest.warns(NoAdapterNotice, match="OPTForCausalLM"):
        first = make_engine(model, data, [1])
    assert isinstance(first, HookedEngine)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per family per process
        assert isinstance(make_engine(model, data, [1]), HookedEngine)


def test_optimize_on_a_family_without_an_adapter_notes_it_once(monkeypatch):
    monkeypatch.setattr(make_module, "_NOTICED", set())
    model = tiny_family_model("opt")
    dp = Datapoint("the cat sat", promote=[" on"], chat=False)
    with pytest.warns(NoAdapterNotice) as caught:
        first = steerlens.optimize_vector(model, dp, 1, lr=0.1, max_steps=2)
        steerlens.optimize_vector(model, dp, 0, lr=0.1, max_steps=2)
    assert len([w for w in caught if issubclass(w.category, NoAdapterNotice)]) == 1
    assert first.engine == "hooked"


def test_a_configuration_the_adapter_cannot_serve_takes_the_hooked_path(monkeypatch):
    monkeypatch.setattr(make_module, "_NOTICED", set())
    model = tiny_family_model("gemma3", use_bidirectional_attention=True)
    assert adapter_for(model) is None
    data = tokenize(model, _datapoints(model), None)
    with pytest.warns(NoAdapterNotice, match="Gemma3ForCausalLM"):
        assert isinstance(make_engine(model, data, [1]), HookedEngine)


def test_the_fast_path_runs_the_family_modules_without_changing_the_model(family):
    """The packed engine runs unwrapped Hugging Face modules (no bridge hooks, fused attention
    where the family allows it) that share the model's parameters; the model, its config and
    its hooks are untouched."""
    from steerlens.training.engines.families.base import FROZEN_ATTENTION, unwrapped

    _, model = family
    hf = model.original_model
    before = hf.config._attn_implementation
    adapter = adapter_for(model)
    shadow = adapter.hf
    modules = list(shadow.modules())
    assert not any(hasattr(m, "original_component") for m in modules)
    assert not any(type(m).__name__ == "HookPoint" for m in modules)
    # Shared, never copied (the Bridge may add its own, e.g. split q/k/v of a fused qkv).
    assert {id(p) for p in shadow.parameters()} <= {id(p) for p in hf.parameters()}
    assert hf.config._attn_implementation == before
    softcap = getattr(hf.config, "attn_logit_softcapping", None)
    expected = "eager" if softcap else FROZEN_ATTENTION
    assert {m.config._attn_implementation for m in modules if "config" in vars(m)} == {expected}
    # The model still fires its hook points, and a second shadow is independent of the first.
    seen = []
    hook = (runtime.hook_name(1), lambda x, hook: seen.append(1))
    with model.hooks(fwd_hooks=[hook]):
        model(torch.tensor([[1, 2, 3]]))
    assert seen == [1]
    assert unwrapped(hf) is not shadow


def test_soft_capped_attention_keeps_the_eager_kernel():
    model = tiny_family_model("gemma2", n_layers=2)
    assert model.original_model.config.attn_logit_softcapping
    assert adapter_for(model).attention(model.original_model.config) == "eager"


def test_a_prompt_before_its_first_steered_token_is_computed_once(family):
    """With ``last:2`` every prompt token before its last two is frozen: its keys and values
    are computed at construction, and each step runs only the other positions."""
    _, model = family
    _, tail, _ = _engines(model, "last:2", [1])
    _, whole, _ = _engines(model, None, [1])
    assert tail.kv and not whole.kv
    assert tail.h_start.shape[1] < whole.h_start.shape[1]


def test_frozen_prefix_attention_equals_sdpa_over_the_concatenated_keys():
    """Grouped-query attention over frozen keys and the block's own, without concatenating or
    repeating them, gives what PyTorch's kernel gives on the concatenation (repeated per
    query head), under an additive mask that hides some keys."""
    from steerlens.training.engines.families.base import frozen_prefix_attention

    gen = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    b, heads, kv, q, n, d = 2, 6, 2, 3, 5, 4
    query, key, value = rand(b, heads, q, d), rand(b, kv, q, d), rand(b, kv, q, d)
    fk, fv = rand(b, kv, n, d), rand(b, kv, n, d)
    hidden = torch.rand(b, 1, q, n + q, generator=gen) < 0.3
    hidden[..., n:] = False  # every query sees its own keys
    mask = torch.zeros(b, 1, q, n + q, dtype=torch.float64).masked_fill(hidden, -1e9)
    out, _ = frozen_prefix_attention(None, query, key, value, mask, scaling=0.7, frozen=(fk, fv))
    keys = torch.cat([fk, key], dim=2).repeat_interleave(heads // kv, dim=1)
    values = torch.cat([fv, value], dim=2).repeat_interleave(heads // kv, dim=1)
    want = torch.nn.functional.scaled_dot_product_attention(
        query, keys, values, attn_mask=mask, scale=0.7
    )
    torch.testing.assert_close(out, want.transpose(1, 2), atol=1e-12, rtol=0)
