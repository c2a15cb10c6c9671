"""StudySpec: TOML round trips, deterministic unit names, and bad specs refused clearly."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steerlens.errors import InputError, LayerError, SpecError
from steerlens.studies.spec import (
    Example,
    JudgeSpec,
    OptimizerSettings,
    StudySpec,
    load_study_model,
)
from steerlens.training.config import OptimizeConfig

SPECS = Path(__file__).parent / "specs"


def _spec(**overrides) -> StudySpec:
    base = {
        "examples": [Example(prompt="the cat", promote=[" sat"])],
        "layers": [1],
        "model": "tiny",
    }
    return StudySpec(**(base | overrides))


@pytest.mark.parametrize("name", ["tiny.toml", "mixed.toml"])
def test_spec_files_round_trip_through_toml(name, tmp_path):
    spec = StudySpec.from_toml(SPECS / name)
    again = StudySpec.from_toml(spec.save_toml(tmp_path / "again.toml"))
    assert again == spec and again.spec_hash == spec.spec_hash
    assert StudySpec.from_dict(spec.to_dict()) == spec


def test_the_fixture_spec_reads_as_written():
    spec = StudySpec.from_toml(SPECS / "tiny.toml")
    assert spec.model == "tiny" and spec.layers == (0, 1) and spec.name == "tiny-french"
    assert spec.examples[1] == Example(
        prompt="Tell me about cats.", promote=(" le chat",), suppress=(" the cat",), name="cats"
    )
    assert spec.evaluation.judge == JudgeSpec(any_of=(" la ", " le "))
    config = spec.config(spec.units()[0])
    assert isinstance(config, OptimizeConfig)
    assert (config.lr, config.max_steps, config.progress) == (0.1, 3, False)


def test_units_are_the_product_with_deterministic_unique_names():
    spec = StudySpec.from_toml(SPECS / "mixed.toml")
    names = [u.name for u in spec.units()]
    assert names == [
        "ex0-L1-s0-promotion",
        "ex0-L1-s0-suppression",
        "ex0-L1-s0-mixed",
        "ex0-L1-s1-promotion",
        "ex0-L1-s1-suppression",
        "ex0-L1-s1-mixed",
    ]
    assert names == [u.name for u in StudySpec.from_toml(SPECS / "mixed.toml").units()]
    tiny = StudySpec.from_toml(SPECS / "tiny.toml")
    assert [u.name for u in tiny.units()][-2:] == ["cats-L0-s0-promotion", "cats-L1-s0-promotion"]


def test_objectives_pick_the_completions(tiny):
    spec = StudySpec.from_toml(SPECS / "mixed.toml")
    dps = {u.objective: spec.datapoint(tiny, u) for u in spec.units()[:3]}
    assert (dps["promotion"].promote, dps["promotion"].suppress) == ((" sat",), ())
    assert (dps["suppression"].promote, dps["suppression"].suppress) == ((), (" ran",))
    assert (dps["mixed"].promote, dps["mixed"].suppress) == ((" sat",), (" ran",))
    config = spec.config(spec.units()[4])
    assert config.seed == 1 and config.constraints[0].max_norm == 5.0
    assert config.objective.suppression == "logprob" and config.objective.coldness == 1.0


def test_chat_formats_the_prompt_with_the_model(tiny):
    spec = _spec(chat=True)
    dp = spec.datapoint(tiny, spec.units()[0])
    assert dp.prompt.startswith("<|im_start|>user\nthe cat")


def test_the_hash_changes_with_any_setting():
    spec = _spec()
    assert _spec().spec_hash == spec.spec_hash
    changed = dataclasses.replace(spec, optimizer=OptimizerSettings(lr=0.5))
    assert changed.spec_hash != spec.spec_hash
    assert _spec(layers=[0]).spec_hash != spec.spec_hash


@settings(max_examples=30, deadline=None)
@given(st.text(min_size=1).filter(str.strip), st.text(min_size=1))
def test_any_text_round_trips_through_toml(prompt, completion):
    spec = _spec(examples=[Example(prompt=prompt, promote=[completion])])
    assert StudySpec.from_toml_text(spec.to_toml()) == spec


def test_an_empty_example_list_is_refused_with_the_fix(tmp_path):
    with pytest.raises(InputError, match=r"no examples; add at least one.*\[\[examples\]\]"):
        _spec(examples=[])
    path = tmp_path / "s.toml"
    path.write_text('model = "tiny"\nlayers = [1]\n')
    with pytest.raises(InputError, match="no examples"):
        StudySpec.from_toml(path)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"layers": [1, 1]}, r"two units are both named 'ex0-L1-s0-promotion'.*remove"),
        ({"seeds": [3, 3]}, r"both named 'ex0-L1-s3-promotion'"),
        (
            {
                "examples": [
                    Example(prompt="a", promote=["b"], name="same"),
                    Example(prompt="c", promote=["d"], name="same"),
                ]
            },
            r"both named 'same-L1-s0-promotion'.*different names",
        ),
    ],
)
def test_duplicate_unit_names_are_refused(overrides, match):
    with pytest.raises(SpecError, match=match):
        _spec(**overrides)


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        ({"layers": []}, SpecError, r"layers is empty"),
        ({"layers": [-1]}, SpecError, r"layers must be a list of ints >= 0"),
        ({"objectives": ["promote"]}, SpecError, r"unknown objective 'promote'.*promotion"),
        ({"model": "gpt2"}, SpecError, r"unknown study model 'gpt2'.*'hub:<name>'"),
        ({"objectives": ["suppression"]}, InputError, r"no suppress completions.*remove"),
    ],
)
def test_bad_settings_name_the_problem_and_the_fix(overrides, error, match):
    with pytest.raises(error, match=match):
        _spec(**overrides)


def test_an_example_name_must_fit_in_a_file_name():
    with pytest.raises(SpecError, match=r"example name 'a/b' is not usable in file names"):
        Example(prompt="a", promote=["b"], name="a/b")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('model = "tiny"\nlayer = [1]\n', r"unknown keyword\(s\) 'layer'.*layers"),
        ('layers = [1]\n[optimizer]\nrate = 1\n[[examples]]\nprompt="a"\npromote=["b"]\n', "rate"),
        ("layers = [1\n", r"not valid TOML"),
        ('layers = [1]\n[optimizer]\nlr = -1\n[[examples]]\nprompt="a"\npromote=["b"]\n', "lr"),
        (
            'layers = [1]\n[evaluation]\nprompts = ["x"]\n[[examples]]\nprompt="a"\n'
            'promote=["b"]\n',
            r"no judge; add \[evaluation.judge\]",
        ),
        (
            'layers = [1]\n[evaluation.judge]\ntype = "llm"\nany_of = ["x"]\n[[examples]]\n'
            'prompt="a"\npromote=["b"]\n',
            r"unknown judge type 'llm'.*string_match",
        ),
    ],
)
def test_bad_spec_files_are_refused_with_the_key(text, match):
    with pytest.raises(SpecError, match=match):
        StudySpec.from_toml_text(text)


def test_a_missing_spec_file_is_named(tmp_path):
    with pytest.raises(InputError, match=r"no study spec file at .*nope.toml"):
        StudySpec.from_toml(tmp_path / "nope.toml")


def test_layers_are_checked_against_the_model():
    spec = _spec(layers=[1, 5, 7])
    with pytest.raises(LayerError, match=r"layers 5, 7 .*has 2 layers \(0-1\).*between 0 and 1"):
        spec.check_layers(2)
    spec.check_layers(8)


def test_model_names_build_models():
    assert load_study_model("tiny").cfg.d_model == 64
    with pytest.raises(SpecError, match="unknown study model"):
        load_study_model("hub:")
