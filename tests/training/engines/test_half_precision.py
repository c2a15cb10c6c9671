"""Half-precision models (bf16, fp16) on the packed engine: the objective is computed in float32
from the model's half-precision logits, the vector stays float32 (cast to the residual's dtype
when applied, so its gradient is float32), and losses stay within a stated tolerance of the
same model in float32.

Tolerance, per completion of a 3-layer tiny model: ``|half - fp32| <= tol * max(|fp32|, 1 nat)``
with tol 1e-2 for bf16 and 2e-3 for fp16 (measured worst cases over seven families: 2.7e-3 and
3.6e-4); the gradient w.r.t. the vector keeps cosine > 0.99 with the fp32 one (measured >= 0.999).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from steerlens import Datapoint, optimize_vector
from steerlens.steering.interventions import Add
from steerlens.testing import tiny_family_model
from steerlens.training.data import tokenize
from steerlens.training.engines import PackedEngine, make_engine, steering_function
from steerlens.training.objectives import Objective

TOLERANCE = {torch.bfloat16: 1e-2, torch.float16: 2e-3}
FAMILIES = ["llama", "gemma2", "gpt2", "qwen3"]


def _datapoints():
    return [
        Datapoint(
            "the cat sat on the mat", promote=[" on the mat", " in"], suppress=[" xyz"], chat=False
        ),
        Datapoint("a dog ran far away", promote=[" away from home!"], negate=True, chat=False),
    ]


def _losses_and_grad(model, fast=True):
    data = tokenize(model, _datapoints(), "prompt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the packed path is taken: no fallback warning
        engine = make_engine(model, data, [1], fast=fast)
    assert isinstance(engine, PackedEngine) == fast
    v = (torch.randn(64, generator=torch.Generator().manual_seed(0)) * 0.5).requires_grad_(True)
    logits = engine.logits(steering_function(Add(v), 1.0, True))
    losses = Objective().losses(logits, engine.layout)
    losses.sum().backward()
    return logits.dtype, losses.detach(), v.grad


def _close(losses, ref, tol):
    return bool(((losses - ref).abs() <= tol * ref.abs().clamp(min=1.0)).all())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("family", FAMILIES)
def test_half_precision_losses_are_float32_and_close_to_float32(family, dtype):
    _, ref, ref_grad = _losses_and_grad(tiny_family_model(family, n_layers=3))
    half = tiny_family_model(family, n_layers=3, dtype=dtype)
    logits_dtype, losses, grad = _losses_and_grad(half)
    assert logits_dtype == dtype
    assert losses.dtype == torch.float32 and grad.dtype == torch.float32
    assert torch.isfinite(losses).all() and torch.isfinite(grad).all()
    assert _close(losses, ref, TOLERANCE[dtype])
    assert float(torch.cosine_similarity(grad, ref_grad, dim=0)) > 0.99
    _, hooked, _ = _losses_and_grad(half, fast=False)
    assert _close(losses, hooked, TOLERANCE[dtype])


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_optimize_vector_runs_end_to_end_in_bf16(family):
    model = tiny_family_model(family, n_layers=3, dtype=torch.bfloat16)
    res = optimize_vector(model, _datapoints(), 1, lr=0.1, max_steps=6)
    assert res.engine == "packed"
    assert res.vector.vector.dtype == torch.float32
    assert np.isfinite(res.loss_history).all()
    assert res.loss_history[-1].sum() < res.loss_history[0].sum()
