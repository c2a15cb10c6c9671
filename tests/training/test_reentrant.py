import pytest
import torch
from tolerances import TINY32, U32, check_logits, kl_floor, kl_total_bound, rescale_bound

import steerlens
from steerlens import Datapoint, NormCap, OptimizeConfig, runtime, steer
from steerlens.errors import LayerError, SpecError, SteerlensError
from steerlens.steering.interventions import Clamp
from steerlens.steering.steer import Steering
from steerlens.testing import tiny_model
from steerlens.training.kinds import ClampSteering
from steerlens.training.reentrant import (
    RankOneResult,
    ReentrantResult,
    reentrant_steering,
)

PROMPT = "the cat"
DP = Datapoint(PROMPT, promote=[" in the"], chat=False)
EARLY = OptimizeConfig(lr=0.1, max_steps=5)
LATE = OptimizeConfig(lr=0.1, max_steps=8, constraints=(NormCap(3.0),))


@pytest.fixture(scope="module", params=["vector", "rank_one"])
def result(request, tiny) -> ReentrantResult:
    return reentrant_steering(
        tiny, DP, 0, 1, invasive=request.param, n_tokens=5, early_config=EARLY, late_config=LATE
    )


def test_second_stage_lowers_the_kl(tiny, result):
    assert result.kl_history.shape == (result.steps + 1,)
    assert result.final_kl < result.initial_kl
    assert result.kl_per_token.shape == (len(result.continuation_tokens),)
    # The late vector's distributions, computed as reentrant_steering does; the module's
    # fixture ran before the one-thread fixture, so its float32 sums may be in another order.
    prompt_ids, cont = runtime.encode(tiny, PROMPT), result.continuation_tokens
    p, m = len(prompt_ids), len(cont)
    with torch.no_grad(), steer(tiny, result.late_vector):
        logits = tiny(torch.tensor([prompt_ids + cont]))
    check_logits(logits)
    final = torch.log_softmax(logits[0, p - 1 : p - 1 + m].float(), dim=-1)
    target = result.target_logprobs
    mine = runtime.kl_divergence(target, final).numpy()
    for k in range(len(cont)):  # each token's KL within kl_total_bound (tests/tolerances.py)
        bound = kl_total_bound(target[k : k + 1], final[k : k + 1])
        assert abs(result.kl_per_token[k] - mine[k]) <= bound, (k, result.kl_per_token, mine)
    # The history's last KL comes from the optimizer's engine: the same terms, another order.
    gap = abs(float(result.kl_per_token.sum()) - result.final_kl)
    assert gap <= kl_total_bound(target, final), (gap, kl_total_bound(target, final))
    # KL >= 0 up to the rounding of its float32 log-softmaxes (kl_floor).
    floor = kl_floor(target, final).numpy()
    assert (result.kl_per_token >= floor).all(), (result.kl_per_token, floor)
    assert "KL" in repr(result) and "nats" in repr(result)


def test_recorded_distributions_are_the_steered_forwards(tiny, result):
    prompt_ids = runtime.encode(tiny, PROMPT)
    cont = result.continuation_tokens
    p, m = len(prompt_ids), len(cont)
    assert 1 <= m <= 5
    tokens = torch.tensor([prompt_ids + cont])
    with torch.no_grad(), steer(tiny, result.early.vector):
        logits = tiny(tokens)
    check_logits(logits)
    expected = torch.log_softmax(logits[0, p - 1 : p - 1 + m].float(), dim=-1)
    assert result.target_logprobs.dtype == torch.float32
    assert not result.target_logprobs.requires_grad
    # The optimizer's recorded forward and this plain one add the same float32 terms in
    # another order: each log-probability within TINY32 (tests/tolerances.py).
    assert torch.allclose(result.target_logprobs, expected, atol=TINY32, rtol=0)
    # y' is the greedy continuation: each token is the argmax of the distribution before it,
    # and it is what steerlens.generate gives under the same invasive steering.
    assert result.target_logprobs.argmax(-1).tolist() == cont
    text = steerlens.generate(
        tiny, PROMPT, result.early.vector, chat=False, max_new_tokens=5, temperature=0
    )
    assert text == result.continuation


def test_clamp_invasive_vector_is_recorded_as_it_was_optimized(tiny):
    early = OptimizeConfig(lr=0.1, max_steps=3, kind=ClampSteering(strength=2.0))
    res = reentrant_steering(tiny, DP, 0, 1, n_tokens=3, early_config=early, late_config=LATE)
    prompt_ids = runtime.encode(tiny, PROMPT)
    p, m = len(prompt_ids), len(res.continuation_tokens)
    with torch.no_grad(), steer(tiny, Steering(res.early.vector, kind=Clamp, strength=2.0)):
        logits = tiny(torch.tensor([prompt_ids + res.continuation_tokens]))
    check_logits(logits)
    expected = torch.log_softmax(logits[0, p - 1 : p - 1 + m].float(), dim=-1)
    assert torch.allclose(res.target_logprobs, expected, atol=TINY32, rtol=0)  # as above


def test_kl_is_scored_on_the_generated_token_ids(tiny):
    # With v' = 0 and no update, the KL must be KL(p_k || unsteered model) at exactly the
    # positions predicting y', computed here by hand.
    late = OptimizeConfig(max_steps=0, init=torch.zeros(64))
    res = reentrant_steering(tiny, DP, 0, 1, n_tokens=4, early_config=EARLY, late_config=late)
    prompt_ids = runtime.encode(tiny, PROMPT)
    p, m = len(prompt_ids), len(res.continuation_tokens)
    with torch.no_grad():
        logits = tiny(torch.tensor([prompt_ids + res.continuation_tokens]))
    check_logits(logits)
    logq = torch.log_softmax(logits[0, p - 1 : p - 1 + m].float(), dim=-1)
    logp = res.target_logprobs
    kl = (logp.exp() * (logp - logq)).sum()
    assert res.steps == 0 and res.kl_history.shape == (1,)
    # The engine's KL and this one add the same float32 terms in other orders (kl_total_bound).
    bound = kl_total_bound(logp, logq)
    assert abs(res.final_kl - float(kl)) <= bound
    # A real error, the positions shifted by one, is far outside the bound.
    shifted = torch.log_softmax(logits[0, p - 2 : p - 2 + m].float(), dim=-1)
    assert abs(res.final_kl - float((logp.exp() * (logp - shifted)).sum())) > 10 * bound


def test_rank_one_factors_stay_unit_norm_and_act_as_x_plus_uxv(tiny):
    res = reentrant_steering(
        tiny, DP, 0, 1, invasive="rank_one", n_tokens=2, early_config=EARLY, late_config=LATE
    )
    early = res.early
    assert isinstance(early, RankOneResult)
    assert early.steps == 5
    # Renormalised in float32 after each step: unit up to rescale_bound (tests/tolerances.py).
    assert float(early.u.norm()) == pytest.approx(1.0, rel=0, abs=rescale_bound(64))
    assert float(early.v.norm()) == pytest.approx(1.0, rel=0, abs=rescale_bound(64))
    assert early.loss_history[-1].sum() < early.loss_history[0].sum()
    assert torch.count_nonzero(early.vector.directions[0]) == 0  # no bias, no learned scale
    tokens = torch.tensor([[5, 40, 41, 42]])
    name = "blocks.0.hook_resid_pre"
    _, base = tiny.run_with_cache(tokens, names_filter=name)
    with steer(tiny, early.vector):
        _, steered = tiny.run_with_cache(tokens, names_filter=name)
    x, u, v = base[name], early.u, early.v
    # (x @ u^T) @ v as a matrix product against a vector product: the dot product of d terms
    # in two orders (2 d u sum |x u| |v|), then a product and a sum rounded on each side.
    bound = 2 * (64 + 2) * U32 * ((x.abs() @ u.abs())[..., None] * v.abs() + x.abs())
    assert ((steered[name] - (x + (x @ u)[..., None] * v)).abs() <= bound).all()


def test_norm_cap_holds_for_the_late_vector(tiny):
    late = OptimizeConfig(lr=1.0, max_steps=4, constraints=(NormCap(0.5),))
    res = reentrant_steering(tiny, DP, 0, 1, n_tokens=3, early_config=EARLY, late_config=late)
    assert res.late_vector.norm() <= 0.5 * (1 + rescale_bound(64))  # the cap's own rounding
    assert res.late_vector.layers == [1]


def test_provenance(tiny, result, tmp_path):
    prov = result.late_vector.provenance
    assert prov["method"] == "reentrant"
    assert prov["early_layer"] == 0 and prov["late_layer"] == 1
    assert prov["invasive"] == result.invasive
    assert prov["n_tokens"] == 5
    assert prov["final_kl"] == result.final_kl  # the same float, kept as it is
    assert prov["kl_unit"] == "nats" and prov["loss_unit"] == "nats"
    assert prov["continuation_tokens"] == result.continuation_tokens
    assert prov["datapoint"]["prompt"] == PROMPT
    assert prov["steps"] == result.steps and prov["stop_reason"] == result.stop_reason
    loaded = steerlens.SteeringVector.load(result.late_vector.save(tmp_path / "v.safetensors"))
    assert loaded.provenance["final_kl"] == result.final_kl  # JSON keeps a float exactly
    assert loaded.provenance["kl_unit"] == "nats"


def test_four_layer_model_and_determinism():
    model = tiny_model(n_layers=4)
    late = OptimizeConfig(lr=0.1, max_steps=3)
    a = reentrant_steering(model, DP, 1, 3, n_tokens=2, early_config=EARLY, late_config=late)
    b = reentrant_steering(model, DP, 1, 3, n_tokens=2, early_config=EARLY, late_config=late)
    assert a.late_vector.layers == [3] and a.early.vector.layers == [1]
    assert torch.equal(a.late_vector.vector, b.late_vector.vector)
    assert a.continuation_tokens == b.continuation_tokens


def test_bad_input(tiny):
    with pytest.raises(LayerError, match="late_layer 2 is out of range"):
        reentrant_steering(tiny, DP, 0, 2)
    with pytest.raises(LayerError, match="early_layer -1 is out of range"):
        reentrant_steering(tiny, DP, -1, 1)
    with pytest.raises(SteerlensError, match=r"early_layer \(1\) must be below late_layer \(1\)"):
        reentrant_steering(tiny, DP, 1, 1)
    with pytest.raises(SteerlensError, match=r"early_layer \(1\) .* late_layer \(0\)"):
        reentrant_steering(tiny, DP, 1, 0)
    with pytest.raises(SpecError, match="n_tokens must be an int >= 1"):
        reentrant_steering(tiny, DP, 0, 1, n_tokens=0)
    with pytest.raises(SpecError, match="unknown invasive kind"):
        reentrant_steering(tiny, DP, 0, 1, invasive="matrix")  # type: ignore[arg-type]
    with pytest.raises(SpecError, match="constraints"):
        reentrant_steering(
            tiny,
            DP,
            0,
            1,
            invasive="rank_one",
            early_config=OptimizeConfig(constraints=(NormCap(1.0),)),
        )
    with pytest.raises(SpecError, match="AddSteering"):
        reentrant_steering(tiny, DP, 0, 1, late_config=OptimizeConfig(kind=ClampSteering()))
    with pytest.raises(SteerlensError, match="Datapoint"):
        reentrant_steering(tiny, [DP], 0, 1)  # type: ignore[arg-type]
