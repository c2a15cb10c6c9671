"""Decoding on the Hugging Face modules under a Bridge (`steerlens.runtime.plain`) gives the
Bridge's own steps, steered or not, in every tested family, and is used only when every hook
installed is on the residual stream between blocks.

Tolerance: both paths compute in float32 and add in other orders (a fused attention kernel
against the Bridge's step-by-step attention), so a logit may move by ``family_bound(L)``
(tests/tolerances.py; L the largest logit seen); `test_a_wrong_layer_exceeds_the_bound` shows a
real error moves logits by more.
"""

from __future__ import annotations

import pytest
import torch
from tolerances import family_bound

import steerlens
from steerlens import runtime
from steerlens.runtime import TokenContext, token_context
from steerlens.runtime.plain import PlainDecoder, plain_decoder
from steerlens.steering.steer import Steering, steer
from steerlens.testing import TINY_FAMILIES, tiny_family_model, tiny_model

# OPT's Bridge keeps hooks of its own inside each block, so its decoding stays on the Bridge.
PLAIN = sorted(f for f in TINY_FAMILIES if f != "opt")
PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17]]  # left-padded: rows differ


def _steps(model, step, n_steps=3):
    """Logits of ``n_steps`` decoding steps on `PROMPTS` through ``step``; each step appends the
    same tokens (the first row's argmax, for every row), so both paths see the same inputs."""
    tokens, mask, n_pad = runtime.left_pad(model, PROMPTS)
    end = torch.full_like(n_pad, tokens.shape[1])
    cache, n_cached, out = None, 0, []
    for _ in range(n_steps):
        with token_context(TokenContext(n_pad, end, offset=n_cached)):
            logits, cache = step(tokens, mask, cache, n_cached)
        out.append(logits)
        n_cached = tokens.shape[1]
        nxt = torch.full((tokens.shape[0], 1), int(logits[0].argmax()))
        tokens = torch.cat([tokens, nxt], dim=1)
        mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
    return torch.stack(out)


def _bridge_step(model):
    def step(tokens, mask, cache, n_cached):
        ctx = runtime.current_context(tokens.shape[0], tokens.shape[1], tokens.device)
        return runtime.next_logits(model, tokens, mask, cache, n_cached, ctx)

    return step


def _plain_step(model):
    decoder = plain_decoder(model)
    assert isinstance(decoder, PlainDecoder)
    return decoder.step


def _vector(model):
    return torch.randn(runtime.d_model(model), generator=torch.Generator().manual_seed(3)) * 4


def _plan(model, layer, positions="all"):
    return Steering(_vector(model), layer=layer, positions=positions)


def _hooks(model, where):
    """A steering block at ``blocks.1.hook_resid_pre`` (a plan, steering generated tokens
    only), a plain TransformerLens hook adding a vector at ``blocks.1.hook_resid_post``, or
    nothing."""
    if where == "resid_pre":
        return steer(model, _plan(model, 1, positions="generated"))
    v = _vector(model)
    hooks = [("blocks.1.hook_resid_post", lambda x, hook: x + v)] if where == "resid_post" else []
    return model.hooks(fwd_hooks=hooks)


@pytest.mark.parametrize("family", PLAIN)
@pytest.mark.parametrize("where", [None, "resid_pre", "resid_post"])
def test_plain_steps_equal_the_bridge_in_every_family(family, where):
    model = tiny_family_model(family, n_layers=3)
    with torch.no_grad(), _hooks(model, where):
        want = _steps(model, _bridge_step(model))
        got = _steps(model, _plain_step(model))
    with torch.no_grad():
        unsteered = _steps(model, _bridge_step(model))
    gap, bound = float((got - want).abs().max()), family_bound(float(want.abs().max()))
    assert gap <= bound, (family, where, gap, bound)
    if where is not None:  # the steering took effect on both paths
        assert float((want - unsteered).abs().max()) > 10 * bound


def test_a_wrong_layer_exceeds_the_bound():
    model = tiny_family_model("llama", n_layers=3)
    with torch.no_grad():
        with steer(model, _plan(model, 1)):
            right = _steps(model, _plain_step(model))
        with steer(model, _plan(model, 2)):
            wrong = _steps(model, _bridge_step(model))
    assert float((right - wrong).abs().max()) > 10 * family_bound(float(right.abs().max()))


def test_generate_is_unchanged_by_the_plain_path(monkeypatch):
    model = tiny_model()
    plan = _plan(model, 1, positions="prompt")
    prompts = ["the cat sat", "hi"]
    got = steerlens.generate(model, prompts, plan, max_new_tokens=6, chat=False)
    monkeypatch.setattr(runtime.decoding, "plain_decoder", lambda model: None)
    assert steerlens.generate(model, prompts, plan, max_new_tokens=6, chat=False) == got


@pytest.mark.parametrize(
    "hook",
    [
        "blocks.0.attn.hook_pattern",  # inside a block: only the Bridge fires it
        "blocks.1.hook_mlp_out",
        "ln_final.hook_normalized",
    ],
)
def test_a_hook_inside_the_blocks_keeps_the_bridge(hook):
    model = tiny_model()
    assert plain_decoder(model) is not None
    with model.hooks(fwd_hooks=[(hook, lambda x, hook: x)]):
        assert plain_decoder(model) is None
    assert plain_decoder(model) is not None


def test_a_bridge_with_hooks_of_its_own_inside_the_blocks_keeps_them():
    model = tiny_family_model("opt", n_layers=2)
    assert plain_decoder(model) is None


@pytest.mark.parametrize("where", ["model.layers.1", "model.layers.1.mlp", ""])
def test_a_pytorch_hook_on_a_module_keeps_the_bridge_and_takes_effect(where):
    """Another library's hook (steering-vectors, repeng) on the Hugging Face modules is never
    left out: decoding stays on the Bridge, which runs it."""
    model = tiny_model()
    prompts = ["the cat sat", "hi"]
    plain = steerlens.generate(model, prompts, max_new_tokens=4, chat=False)
    v = _vector(model)
    module = model.original_model.get_submodule(where)
    handle = module.register_forward_hook(
        lambda mod, args, out: out + v if isinstance(out, torch.Tensor) else out
    )
    try:
        assert plain_decoder(model) is None
        if where == "model.layers.1":
            steered = steerlens.generate(model, prompts, max_new_tokens=4, chat=False)
            assert steered != plain
    finally:
        handle.remove()
    assert plain_decoder(model) is not None


def test_a_backward_hook_keeps_the_bridge():
    model = tiny_model()
    with model.hooks(bwd_hooks=[("blocks.0.hook_resid_pre", lambda g, hook: None)]):
        assert plain_decoder(model) is None


def test_a_model_without_hugging_face_modules_has_no_plain_decoder():
    assert plain_decoder(torch.nn.Linear(2, 2)) is None


def test_the_plain_copy_leaves_the_bridge_unhooked():
    model = tiny_model()
    tokens = torch.tensor([[5, 6, 7]])
    before = model(tokens)

    def hooks():
        return [
            (n, dict(m._forward_hooks), dict(m._forward_pre_hooks))
            for n, m in model.original_model.named_modules()
        ]

    own = hooks()  # the Bridge's own (it captures block inputs with pre-hooks)
    with steer(model, _plan(model, 1)):
        decoder = plain_decoder(model)
        assert decoder is not None
        decoder.step(tokens, torch.ones_like(tokens), None, 0)
    # The copy's hooks are its own: the Bridge's modules, and the Hugging Face modules it
    # wraps, carry the same hooks as before once the steering block has closed.
    assert hooks() == own
    torch.testing.assert_close(model(tokens), before, rtol=0, atol=0)


def test_a_float64_model_decodes_left_padded_rows_finitely():
    model = tiny_model(dtype=torch.float64)
    with torch.no_grad():
        logits = _steps(model, _plain_step(model))
    assert bool(logits.isfinite().all())
