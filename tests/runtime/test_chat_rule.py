"""The chat rule: prompts are user messages in the chat template when the model has one."""

import pytest
import torch

from steerlens import Datapoint, Steering, SteeringVector, diff_of_means, generate, runtime
from steerlens.cli import build_parser
from steerlens.errors import InputError, ModelError
from steerlens.testing import tiny_model
from steerlens.training.data import tokenize


@pytest.fixture
def no_template():
    model = tiny_model()
    model.tokenizer.chat_template = None
    return model


def test_the_default_is_the_template_when_the_model_has_one(tiny, no_template):
    assert runtime.uses_chat(tiny, None) and not runtime.uses_chat(tiny, False)
    assert not runtime.uses_chat(no_template, None)
    formatted = runtime.chat_prompt(tiny, "Hi")
    assert runtime.format_prompts(tiny, ["Hi"]) == [formatted]
    assert runtime.format_prompts(no_template, ["Hi"]) == ["Hi"]  # raw, no error
    with pytest.raises(ModelError, match="pass chat=False"):
        runtime.format_prompts(no_template, ["Hi"], chat=True)
    with pytest.raises(InputError, match="chat must be True, False or None"):
        runtime.uses_chat(tiny, "yes")


def test_generate_formats_a_question_by_default_and_chat_false_keeps_it_raw(tiny):
    kw = {"max_new_tokens": 4}
    default = generate(tiny, "How do I bake a cake?", **kw)
    assert default == generate(tiny, "How do I bake a cake?", chat=True, **kw)
    templated = runtime.chat_prompt(tiny, "How do I bake a cake?")
    assert default == generate(tiny, templated, chat=False, **kw)
    assert generate(tiny, "How do I bake a cake?", chat=False, **kw) != default


def test_a_formatted_prompt_is_never_templated_twice(tiny):
    templated = runtime.chat_prompt(tiny, "Hi")
    with pytest.raises(InputError, match="pass chat=False"):
        generate(tiny, templated, max_new_tokens=2)
    with pytest.raises(InputError, match="pass chat=False"):
        tokenize(tiny, Datapoint(templated, promote=[" a"]))


def test_datapoint_follows_the_same_rule(tiny, no_template):
    (default,) = tokenize(tiny, Datapoint("How do I bake a cake?", promote=[" a"]))
    (raw,) = tokenize(tiny, Datapoint("How do I bake a cake?", promote=[" a"], chat=False))
    (made,) = tokenize(tiny, Datapoint.from_message(tiny, "How do I bake a cake?", promote=[" a"]))
    templated = runtime.chat_prompt(tiny, "How do I bake a cake?")
    assert default.prompt_tokens == made.prompt_tokens == runtime.encode(tiny, templated)
    assert raw.prompt_tokens == runtime.encode(tiny, "How do I bake a cake?")
    assert default.datapoint.prompt == templated and default.datapoint.chat is False
    (plain,) = tokenize(no_template, Datapoint("Hi", promote=[" a"]))
    assert plain.prompt_tokens == runtime.encode(no_template, "Hi")
    with pytest.raises(InputError, match="chat must be True, False or None"):
        Datapoint("Hi", promote=[" a"], chat="no")


def test_baselines_follow_the_same_rule(tiny):
    pos, neg = ["the cat sat", "a cat ran"], ["the dog sat", "a dog ran"]
    default = diff_of_means(tiny, pos, neg, 1)
    chat = diff_of_means(tiny, pos, neg, 1, chat=True)
    raw = diff_of_means(tiny, pos, neg, 1, chat=False)
    torch.testing.assert_close(default.directions[1], chat.directions[1], rtol=0, atol=0)
    assert not torch.allclose(default.directions[1], raw.directions[1])
    assert default.provenance["chat"] is True and raw.provenance["chat"] is False


@pytest.mark.parametrize("command", ["optimize", "generate", "caa", "sweep"])
def test_every_cli_command_that_takes_prompts_has_chat_and_no_chat(command):
    base = {
        "optimize": ["optimize", "--prompt", "hi", "--promote", " a", "-o", "v.safetensors"],
        "generate": ["generate", "hi"],
        "caa": ["caa", "--positive", "a", "--negative", "b", "-o", "v.safetensors"],
        "sweep": ["sweep", "v.safetensors", "--prompt", "hi"],
    }[command]
    parser = build_parser()
    assert parser.parse_args(base).chat is None  # the Python default: the chat rule
    assert parser.parse_args([*base, "--chat"]).chat is True
    assert parser.parse_args([*base, "--no-chat"]).chat is False
    if command == "optimize":
        assert parser.parse_args([*base, "--raw-prompt"]).chat is False


def test_a_vector_used_away_from_where_it_was_made_warns(tiny):
    from steerlens.errors import SteeringWarning

    v = SteeringVector.from_tensor(torch.ones(64), layer=1, model=tiny)
    with pytest.warns(SteeringWarning, match="made at layer 1 and is applied at layer 0"):
        generate(tiny, "hi", Steering(v, layer=0), max_new_tokens=1)
    with pytest.warns(SteeringWarning, match="strength 40 applies the vector at 40x"):
        generate(tiny, "hi", Steering(v, strength=40.0), max_new_tokens=1)
    with pytest.warns(SteeringWarning, match="strength -40"):
        generate(tiny, "hi", Steering(v, strength=-40.0), max_new_tokens=1)
    # As made, at a usual strength, or with a bare tensor: no note (warnings are errors here).
    generate(tiny, "hi", Steering(v, layer=1, strength=4.0), max_new_tokens=1)
    generate(tiny, "hi", Steering(torch.ones(64), layer=0, strength=40.0), max_new_tokens=1)


def test_from_message_refuses_what_it_cannot_format(tiny, no_template):
    with pytest.raises(ModelError, match=r"no chat template.*Datapoint\(prompt, chat=False\)"):
        Datapoint.from_message(no_template, "Hi", promote=[" a"])
    with pytest.raises(InputError, match="drop chat="):
        Datapoint.from_message(tiny, "Hi", promote=[" a"], chat=True)
    # The field and the constructor no longer share a name: a class-level chat is the default.
    assert Datapoint.chat is None and Datapoint("Hi", promote=[" a"], chat=True).chat is True
