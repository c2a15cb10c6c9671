"""behavior_change_rates against answers counted by hand from plain forward passes.

The constructed case: a vector pointing from the "A" to the "B" unembedding direction, at a
strength small enough that only prompts with a small A/B margin flip."""

from __future__ import annotations

import json

import pytest
import torch

from steerlens import SteeringVector, runtime, steer
from steerlens.errors import SpecError, SteerlensError
from steerlens.evaluation import AnswerTokenError, behavior_change_rates
from steerlens.steering.steer import Steering

POSITIVE = [
    "Is the sky blue? A or B",
    "Pick one: A or B",
    "Cats or dogs? Answer A or B",
    "Tea or coffee?",
    "Yes or no?",
    "Left or right?",
    "Up or down? (A/B)",
    "Hot or cold?",
]
NEGATIVE = [
    "Is grass green? A or B",
    "Choose A or B",
    "Sun or moon?",
    "Red or blue?",
    "Fast or slow?",
    "Big or small?",
]
LAYER, STRENGTH = 1, 0.005


@pytest.fixture(scope="module")
def a_to_b(tiny):
    unembed = tiny.original_model.lm_head.weight.detach()
    a, b = (runtime.encode(tiny, s)[0] for s in ("A", "B"))
    d = unembed[b] - unembed[a]
    return d / d.norm()


def hand_answer(model, prompt, vector, strength):
    """'A' or 'B': the larger of the two logits after the chat-formatted prompt."""
    ids = [runtime.encode(model, s)[0] for s in ("A", "B")]
    tokens = torch.tensor([runtime.encode(model, runtime.chat_prompt(model, prompt))])
    plan = None if vector is None else Steering(vector, layer=LAYER, strength=strength)
    with torch.no_grad(), steer(model, plan):
        logits = model(tokens)[0, -1]
    return "AB"[int(logits[ids].argmax())]


def hand_flips(model, prompts, vector, sign):
    return sum(
        hand_answer(model, p, None, 0.0) != hand_answer(model, p, vector, sign * STRENGTH)
        for p in prompts
    )


def test_rates_equal_hand_counts(tiny, a_to_b):
    res = behavior_change_rates(
        tiny,
        Steering(a_to_b, layer=LAYER, strength=STRENGTH),
        POSITIVE,
        NEGATIVE,
        ("A", "B"),
        batch_size=5,
        chat=True,
    )
    expected = {
        "add_positive": (hand_flips(tiny, POSITIVE, a_to_b, +1), len(POSITIVE)),
        "subtract_positive": (hand_flips(tiny, POSITIVE, a_to_b, -1), len(POSITIVE)),
        "add_negative": (hand_flips(tiny, NEGATIVE, a_to_b, +1), len(NEGATIVE)),
        "subtract_negative": (hand_flips(tiny, NEGATIVE, a_to_b, -1), len(NEGATIVE)),
    }
    got = {name: (getattr(res, name).successes, getattr(res, name).n) for name in expected}
    assert got == expected
    # The case is not trivial: some prompts flip and some do not.
    assert 0 < expected["add_positive"][0] < len(POSITIVE)
    assert res.positive.unsteered == tuple(hand_answer(tiny, p, None, 0.0) for p in POSITIVE)
    assert res.add_positive.rate == pytest.approx(expected["add_positive"][0] / len(POSITIVE))


def test_steering_vector_and_plain_model_give_the_same_rates(tiny, plain, a_to_b):
    sv = SteeringVector.from_tensor(a_to_b, LAYER, model=tiny)
    from_vector = behavior_change_rates(
        tiny, Steering(sv, strength=STRENGTH), POSITIVE, NEGATIVE, chat=True
    )
    from_tensor = behavior_change_rates(
        plain, Steering(a_to_b, layer=LAYER, strength=STRENGTH), POSITIVE, NEGATIVE, chat=True
    )
    assert from_vector.positive == from_tensor.positive
    assert from_vector.negative == from_tensor.negative


def test_table_and_plain_data(tiny, a_to_b):
    res = behavior_change_rates(
        tiny, Steering(a_to_b, layer=LAYER, strength=STRENGTH), POSITIVE, NEGATIVE, chat=True
    )
    text = repr(res)
    assert "flipped by +v" in text and f"{res.add_positive.fraction} (" in text
    data = json.loads(json.dumps(res.to_dict()))
    assert data["add_negative"]["n"] == len(NEGATIVE)
    assert data["positive"]["unsteered"] == list(res.positive.unsteered)


def test_answers_must_be_single_tokens(tiny, a_to_b):
    with pytest.raises(AnswerTokenError, match=r"answer 'Yes' is not a single token: .*3 tokens"):
        behavior_change_rates(
            tiny, Steering(a_to_b, layer=LAYER), POSITIVE, NEGATIVE, ("Yes", "No"), chat=True
        )
    with pytest.raises(AnswerTokenError, match="share a token"):
        behavior_change_rates(
            tiny, Steering(a_to_b, layer=LAYER), POSITIVE, NEGATIVE, ("A", "A"), chat=True
        )
    with pytest.raises(SpecError, match="at least two answer strings"):
        behavior_change_rates(
            tiny, Steering(a_to_b, layer=LAYER), POSITIVE, NEGATIVE, ("A",), chat=True
        )


def test_empty_prompt_sets(tiny, a_to_b):
    with pytest.raises(SteerlensError, match="negative_prompts: the prompt list is empty"):
        behavior_change_rates(tiny, Steering(a_to_b, layer=LAYER), POSITIVE, [], chat=True)
