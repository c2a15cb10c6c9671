"""Per-row steering (`steer_rows`) and `generate_each`: each row gets what `steer` gives it."""

import pytest
import torch

import steerlens
from steerlens import runtime
from steerlens.errors import ModelMismatchError, SpecError
from steerlens.steering.generate import generate_each
from steerlens.steering.interventions import Ablate, Affine, Clamp
from steerlens.steering.steer import Steering, steer, steer_rows
from steerlens.steering.vector import SteeringVector


def _plans(model):
    g = torch.Generator().manual_seed(1)
    v = [torch.randn(64, generator=g) for _ in range(4)]
    return [
        Steering(v[0], layer=1, strength=2.0),
        None,
        Steering(v[1], layer=0, strength=-1.5, positions="last:2"),
        [Steering(v[2], layer=1, kind=Clamp, strength=0.5), Steering(v[3], layer=1)],
        Steering(v[0], layer=[0, 1], kind=Ablate, positions=[0, 2]),
        Steering(Affine(v[1][None] * 0.1, v[2][None] * 0.1), layer=0),
        SteeringVector.from_tensor(v[3], layer=1, model=model),
        Steering(v[0], layer=1, strength=2.0),  # the same plan as row 0 again
    ]


def test_each_row_gets_what_steer_gives_it(tiny):
    plans = _plans(tiny)
    tokens = torch.randint(3, 200, (len(plans), 5), generator=torch.Generator().manual_seed(0))
    with steer_rows(tiny, plans):
        together = tiny(tokens)
    for i, plan in enumerate(plans):
        with steer(tiny, plan):
            alone = tiny(tokens[i : i + 1])
        assert torch.allclose(together[i], alone[0], atol=1e-5), f"row {i}"


def test_unsteered_rows_are_exactly_unchanged(tiny):
    plans = _plans(tiny)
    tokens = torch.randint(3, 200, (len(plans), 4), generator=torch.Generator().manual_seed(2))
    base = tiny(tokens)
    with steer_rows(tiny, plans):
        out = tiny(tokens)
    assert torch.equal(out[1], base[1])
    assert not torch.allclose(out[0], base[0])


def test_hooks_are_removed_even_after_an_error(tiny):
    tokens = torch.tensor([[5, 6, 7], [8, 9, 10]])
    base = tiny(tokens)
    with pytest.raises(RuntimeError, match="boom"), steer_rows(tiny, _plans(tiny)[:2]):
        raise RuntimeError("boom")
    assert torch.equal(tiny(tokens), base)


def test_a_forward_with_another_number_of_rows_is_refused(tiny):
    with steer_rows(tiny, _plans(tiny)[:2]), pytest.raises(SpecError, match="2 steerings"):
        tiny(torch.tensor([[5, 6, 7]]))


@pytest.mark.parametrize("bad", [[], Steering(torch.ones(64), layer=1), "x"])
def test_steerings_must_be_a_list_per_row(tiny, bad):
    with pytest.raises(SpecError, match="steering"), steer_rows(tiny, bad):
        pass


def test_a_vector_for_another_model_is_refused(tiny):
    other = SteeringVector.from_tensor(torch.ones(64), layer=1, model_id="someone/else")
    with pytest.raises(ModelMismatchError), steer_rows(tiny, [None, other]):
        pass
    with pytest.raises(ModelMismatchError):
        generate_each(tiny, ["a"], [other], max_new_tokens=2)


def test_positions_selecting_no_token_name_the_row(tiny):
    plan = Steering(torch.ones(64), layer=1, positions=[5])
    tokens, mask = runtime.right_pad(tiny, [[5, 6, 7, 8, 9, 10], [5, 6]])
    ctx = runtime.TokenContext.prompts(mask.sum(dim=1))
    with (
        steer_rows(tiny, [None, plan]),
        runtime.token_context(ctx),
        pytest.raises(SpecError, match=r"row\(s\) \[1\]"),
    ):
        tiny(tokens, attention_mask=mask)


@pytest.mark.parametrize("chat", [False, True])
def test_generate_each_equals_generate_per_steering(tiny, chat):
    v = torch.randn(64, generator=torch.Generator().manual_seed(3)) * 3
    steerings = [
        None,
        Steering(v, layer=1, strength=2.0),
        Steering(v, layer=0, strength=-1.0, positions="prompt"),
        Steering(v, layer=1, positions="generated"),
    ]
    prompts = ["a", "the longer prompt here", "in"]
    replies = generate_each(
        tiny, prompts, steerings, max_new_tokens=6, chat=chat, batch_size=5, progress=False
    )
    for s, plan in enumerate(steerings):
        expected = steerlens.generate(tiny, prompts, plan, max_new_tokens=6, chat=chat)
        assert replies[s] == expected, f"steering {s}"


def test_generate_each_samples_as_generate_does_with_a_seed(tiny):
    plan = Steering(torch.ones(64), layer=1, strength=2.0)
    prompts = ["hi", "yo there"]
    replies = generate_each(tiny, prompts, [plan, None], max_new_tokens=5, temperature=1.0, seed=7)
    assert replies[0] == steerlens.generate(
        tiny, prompts, plan, max_new_tokens=5, temperature=1.0, seed=7
    )
    assert replies[1] == steerlens.generate(
        tiny, prompts, max_new_tokens=5, temperature=1.0, seed=7
    )
