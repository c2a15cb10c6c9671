"""Per-row steering (`steer_rows`) and `generate_each`: each row gets what `steer` gives it.

Tolerance: tests/tolerances.py derives it. A row in a batch of eight and the same row alone run
the same float32 operations, but the kernels may add in another order for another batch size;
logits of two orders differ by at most ``2 (n + 3) u L``, half of ``TINY32`` (no log-softmax
doubles it here), with every logit below ``TINY_LOGITS`` (checked).
"""

import pytest
import torch
from tolerances import TINY32, check_logits

import steerlens
from steerlens import runtime
from steerlens.errors import ModelMismatchError, SpecError
from steerlens.steering.generate import generate_each
from steerlens.steering.interventions import Ablate, Affine, Clamp
from steerlens.steering.steer import Steering, steer, steer_rows
from steerlens.steering.vector import SteeringVector


def _vectors():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(64, generator=g) for _ in range(4)]


def _plans(model):
    v = _vectors()
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


LOGITS = TINY32 / 2  # logits of one row batched or alone (module docstring)


def _tokens(n_rows, seed=0):
    return torch.randint(3, 200, (n_rows, 5), generator=torch.Generator().manual_seed(seed))


def test_each_row_gets_what_steer_gives_it(tiny):
    plans = _plans(tiny)
    tokens = _tokens(len(plans))
    with torch.no_grad(), steer_rows(tiny, plans):
        together = tiny(tokens)
    check_logits(together)
    for i, plan in enumerate(plans):
        with torch.no_grad(), steer(tiny, plan):
            alone = tiny(tokens[i : i + 1])
        gap = float((together[i] - alone[0]).abs().max())
        assert gap <= LOGITS, f"row {i}: {gap:.2g} > {LOGITS:.2g}"


@pytest.mark.parametrize("row", [2, 0], ids=["one-position-more", "another-layer"])
def test_a_row_steered_one_position_off_or_at_another_layer_exceeds_the_bound(tiny, row):
    """The bound is no blanket: row 2 under ``last:3`` for its ``last:2``, or row 0 at layer 0
    for its layer 1, moves the row's logits far past it."""
    v = _vectors()
    wrong = {
        2: Steering(v[1], layer=0, strength=-1.5, positions="last:3"),
        0: Steering(v[0], layer=0, strength=2.0),
    }[row]
    tokens = _tokens(len(_plans(tiny)))
    with torch.no_grad(), steer_rows(tiny, _plans(tiny)):
        together = tiny(tokens)
    with torch.no_grad(), steer(tiny, wrong):
        alone = tiny(tokens[row : row + 1])
    assert float((together[row] - alone[0]).abs().max()) > 10 * LOGITS


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
