"""steerlens on a model that is not a TransformerBridge: a minimal TL-3-style HookedRootModule
(``blocks.{l}.hook_resid_pre`` hook points, ``cfg``, ``tokenizer``, ``hooks()``), as a user's
``HookedTransformer`` would be. Exercises the hooked engine and uncached generation."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

import steerlens
from steerlens.steering.steer import Steering
from steerlens.testing import tiny_tokenizer


class _Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.hook_resid_pre = HookPoint()
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.qkv = nn.Linear(d, 3 * d)

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor | None) -> torch.Tensor:
        x = self.hook_resid_pre(x)
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        t = x.shape[1]
        blocked = torch.triu(torch.ones(t, t, dtype=torch.bool), 1)[None]
        if pad_mask is not None:
            blocked = blocked | pad_mask[:, None, :]
        # A large negative, not -inf: rows of padding see no key and must not become NaN.
        scores = (q @ k.transpose(1, 2) / k.shape[-1] ** 0.5).masked_fill(blocked, -1e9)
        x = x + scores.softmax(-1) @ v
        return x + self.mlp(x)


class MiniHooked(HookedRootModule):
    def __init__(self, d: int = 32, n_layers: int = 3) -> None:
        super().__init__()
        self.tokenizer = tiny_tokenizer()
        vocab = len(self.tokenizer)
        self.cfg = SimpleNamespace(
            n_layers=n_layers, d_model=d, model_name="mini-hooked", n_ctx=128
        )
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(128, d)
        self.blocks = nn.ModuleList([_Block(d) for _ in range(n_layers)])
        self.unembed = nn.Linear(d, vocab)
        self.setup()

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None):
        if attention_mask is None:
            positions = torch.arange(tokens.shape[1])[None].expand_as(tokens)
        else:
            positions = (attention_mask.cumsum(-1) - 1).clamp_min(0)
        x = self.embed(tokens) + self.pos(positions)
        pad = None if attention_mask is None else attention_mask == 0
        for block in self.blocks:
            x = block(x, pad)
        return self.unembed(x)


@pytest.fixture(scope="module")
def mini():
    torch.manual_seed(0)
    return MiniHooked().eval()


def test_steer_and_generate_on_a_plain_hooked_model(mini):
    v = torch.randn(32) * 5
    tokens = torch.tensor([[5, 6, 7]])
    base = mini(tokens)
    with steerlens.steer(mini, Steering(v, layer=1)):
        steered = mini(tokens)
    assert not torch.allclose(base, steered)
    assert torch.equal(mini(tokens), base)
    batched = steerlens.generate(
        mini, ["a", "the cat"], Steering(v, layer=1), max_new_tokens=4, chat=True
    )
    single = [
        steerlens.generate(mini, p, Steering(v, layer=1), max_new_tokens=4, chat=True)
        for p in ["a", "the cat"]
    ]
    assert batched == single


def test_optimizer_uses_the_hooked_engine(mini):
    dp = steerlens.Datapoint("the cat", promote=[" in"], suppress=["x"])
    res = steerlens.optimize_vector(mini, dp, 1, lr=0.1, max_steps=5)
    assert res.engine == "hooked"
    assert res.loss_history[-1].sum() < res.loss_history[0].sum()
    ev = steerlens.evaluate_objective(mini, dp, 1, res.vector)
    assert ev.total == pytest.approx(float(res.loss_history[-1].sum()), rel=1e-5)
