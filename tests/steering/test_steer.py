"""`steer`: hooks that change the residual stream exactly as the interventions' formulas say.

Tolerance: none. The steered forward runs the unsteered one's operations up to the hook, and the
hook computes the formula the tests repeat on the same float32 inputs, so every comparison is
exact (a different order would change them in the last bits, and be a change of the formula).
"""

import pytest
import torch

import steerlens
from steerlens import Add, Clamp, Steering, steer
from steerlens.errors import LayerError, NonFiniteError, SpecError, VectorShapeError
from steerlens.steering.interventions import Affine
from steerlens.steering.positions import Positions

TOKENS = torch.tensor([[5, 40, 41, 42, 7, 9]])


def _resid(model, layer, tokens=TOKENS):
    name = f"blocks.{layer}.hook_resid_pre"
    _, cache = model.run_with_cache(tokens, names_filter=name)
    return cache[name]


def _n_hooks(model):
    unique = {id(hp): hp for hp in model.hook_dict.values()}  # aliases share a HookPoint
    return sum(len(hp.fwd_hooks) for hp in unique.values())


def test_add_changes_the_residual_exactly(tiny):
    v = torch.randn(64)
    base = _resid(tiny, 1)
    with steer(tiny, Steering(v, layer=1, strength=2.5)):
        steered = _resid(tiny, 1)
    assert torch.equal(steered, base + 2.5 * v)


def test_hooks_are_removed_even_when_the_body_raises(tiny):
    baseline = tiny(TOKENS)
    before = _n_hooks(tiny)
    with pytest.raises(RuntimeError, match="boom"), steer(tiny, Steering(torch.randn(64), layer=0)):
        assert _n_hooks(tiny) == before + 1
        raise RuntimeError("boom")
    assert _n_hooks(tiny) == before
    assert torch.equal(tiny(TOKENS), baseline)


def test_strength_zero_and_subtraction(tiny):
    v = torch.randn(64)
    baseline = tiny(TOKENS)
    with steer(tiny, Steering(v, layer=1, strength=0.0)):
        assert torch.equal(tiny(TOKENS), baseline)  # x + 0 v is x
    with steer(tiny, Steering(v, layer=1, strength=-1.0)):
        minus = _resid(tiny, 1)
    assert torch.equal(minus, _resid(tiny, 1) - v)  # x + (-1) v is x - v


def test_positions_restrict_the_change(tiny):
    v = torch.randn(64)
    base = _resid(tiny, 1)
    with steer(tiny, Steering(v, layer=1, positions="last:2")):
        out = _resid(tiny, 1)
    diff = (out - base).norm(dim=-1)[0]
    assert torch.all(diff[:-2] == 0) and torch.all(diff[-2:] > 0)


def test_several_vectors_and_layers_at_once(tiny):
    v, w = torch.randn(64), torch.randn(64)
    base0, base1 = _resid(tiny, 0), _resid(tiny, 1)
    sv = steerlens.SteeringVector({0: v, 1: w}, model_id=tiny.cfg.model_name)
    with steer(tiny, [sv, Steering(Clamp(v), layer=0, strength=3.0)]):
        r0 = _resid(tiny, 0)
    expected = Clamp(v).apply(base0 + v, 3.0)
    assert torch.equal(r0, expected)
    with steer(tiny, Steering(w, layer=[0, 1])):
        assert torch.equal(_resid(tiny, 0), base0 + w)
    assert torch.equal(_resid(tiny, 1), base1)


def test_gradients_flow_to_the_vector(tiny):
    v = torch.zeros(64, requires_grad=True)
    with steer(tiny, Steering(Add(v), layer=1)):
        tiny(TOKENS)[0, -1].logsumexp(-1).backward()
    assert v.grad is not None and v.grad.norm() > 0


def test_bad_input_gets_clear_errors(tiny):
    with pytest.raises(LayerError, match=r"model has 2 layers \(0-1\); pass a layer between"):
        with steer(tiny, Steering(torch.randn(64), layer=2)):
            pass
    with pytest.raises(VectorShapeError, match="size 65 but the model's d_model is 64"):
        with steer(tiny, Steering(torch.randn(65), layer=0)):
            pass
    with (
        pytest.raises(NonFiniteError),
        steer(tiny, Steering(torch.full((64,), float("nan")), layer=0)),
    ):
        pass
    with pytest.raises(SpecError, match=r"kind must be steerlens\.Add, Clamp or Ablate"):
        Steering(torch.randn(64), layer=0, kind=Affine)
    with pytest.raises(SpecError, match="strength must be finite"):
        Steering(torch.randn(64), layer=0, strength=float("nan"))
    with pytest.raises(SpecError, match="strength must be one number"):
        Steering(torch.randn(64), layer=0, strength=[1.0, 2.0])
    with pytest.raises(SpecError, match="unknown position spec"):
        with steer(tiny, Steering(torch.randn(64), layer=0, positions="middle")):
            pass
    with pytest.raises(SpecError, match="needs a layer"):
        Steering(torch.randn(64))
    with pytest.raises(SpecError, match="does not say where to steer"), steer(tiny, torch.ones(64)):
        pass
    with pytest.raises(SpecError, match="cannot steer with a str"):
        with steer(tiny, Steering("happy", layer=0)):
            pass


def test_positions_object_is_accepted(tiny):
    with steer(tiny, Steering(torch.randn(64), layer=0, positions=Positions.at([0]))) as handle:
        assert handle.steerings[0].positions == Positions.at([0])


def test_import_steerlens_does_not_import_plotly_and_front_door_is_short():
    import subprocess
    import sys

    code = (
        "import sys, steerlens; assert 'plotly' not in sys.modules, 'plotly imported'; "
        "assert len(steerlens.__all__) <= 20; steerlens.layer_sweep; "
        "assert 'plotly' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
