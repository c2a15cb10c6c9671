"""OptimizerSettings: the one flat form of the optimizer's settings that studies, the benchmark,
the demo and the CLI build their OptimizeConfig from."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

import steerlens.studies
import steerlens.studies.spec
from steerlens import cli, demo
from steerlens.cli.common import settings_of
from steerlens.errors import SpecError
from steerlens.studies.bench.settings import BenchSettings
from steerlens.studies.spec import StudySpec
from steerlens.training import RECIPE_LAYER, NormCap, Objective, OptimizeConfig
from steerlens.training.settings import OptimizerSettings

SPECS = Path(__file__).parents[1] / "studies" / "specs"


def test_the_studies_name_is_the_same_class():
    assert steerlens.studies.OptimizerSettings is OptimizerSettings
    assert steerlens.studies.spec.OptimizerSettings is OptimizerSettings


def test_defaults_are_the_optimize_configs():
    built = OptimizerSettings().config(seed=3)
    assert built == OptimizeConfig(seed=3)


def test_config_builds_the_cap_and_the_objective():
    s = OptimizerSettings(lr=0.2, max_steps=5, norm_cap=8, coldness=1.0, suppression_loss="logprob")
    got = s.config(seed=1, progress=False)
    assert got == OptimizeConfig(
        lr=0.2,
        max_steps=5,
        seed=1,
        constraints=(NormCap(8.0),),
        objective=Objective(coldness=1.0, suppression="logprob"),
        progress=False,
    )
    assert OptimizerSettings(norm_cap=None).config().constraints == ()


def test_dict_round_trip_and_json_types():
    s = OptimizerSettings(lr=1, norm_cap=3)
    data = s.to_dict()
    assert data["lr"] == 1.0 and isinstance(data["lr"], float) and data["norm_cap"] == 3.0
    assert OptimizerSettings.from_dict(data) == s
    assert OptimizerSettings.from_dict({"lr": 0.5, "norm_cap": None}) == OptimizerSettings(lr=0.5)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"rate": 1}, r"unknown keyword\(s\) 'rate'"),
        ({"lr": "fast"}, r"optimizer.lr must be a number, got 'fast'"),
        ({"lr": -1.0}, r"learning rate must be > 0"),
        ({"length_normalize": 1}, r"length_normalize must be true or false"),
        ([("lr", 1)], r"optimizer must be a table"),
    ],
)
def test_bad_settings_name_the_key(data, match):
    with pytest.raises(SpecError, match=match):
        OptimizerSettings.from_dict(data)


def test_the_recipe_is_one_object_the_cli_and_the_demo_share():
    recipe = OptimizerSettings.recipe()
    assert (recipe.lr, recipe.max_steps, recipe.norm_cap) == (0.1, 40, 40.0)
    assert recipe == demo.RECIPE and demo.LAYER == RECIPE_LAYER == 8
    args = cli.build_parser().parse_args(["optimize", "--prompt", "p", "--promote", "a", "-o", "v"])
    assert settings_of(args) == recipe
    assert settings_of(args).config(seed=args.seed) == recipe.config()


def test_the_cli_reads_a_zero_cap_as_none():
    args = argparse.Namespace(lr=0.3, max_steps=7, norm_cap=0.0)
    assert settings_of(args) == dataclasses.replace(
        OptimizerSettings.recipe(), lr=0.3, max_steps=7, norm_cap=None
    )


def test_cli_help_comes_from_the_settings():
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: a.help for a in sub.choices["optimize"]._actions}
    for name in ("lr", "max_steps", "norm_cap"):
        assert helps[name].startswith(OptimizerSettings.help(name)), name
    with pytest.raises(SpecError, match=r"no setting 'rate'.*lr, max_steps"):
        OptimizerSettings.help("rate")


def test_the_benchmarks_default_optimizer_is_the_recipe_with_30_steps():
    expected = OptimizeConfig(lr=0.1, max_steps=30, constraints=(NormCap(40.0),))
    assert BenchSettings().optimizer == expected
    assert BenchSettings().optimizer.to_dict() == expected.to_dict()


# Hashes of the spec files before OptimizerSettings moved to steerlens.training: study folders
# written then must still match their specs.
@pytest.mark.parametrize(
    ("name", "spec_hash"),
    [
        ("tiny.toml", "5ff2ed9f00f0bb908757d5468e64c69ed2559dff9e6679430931f7cf7af98889"),
        ("mixed.toml", "875752806e5e265b8bcc2501a1dd533f082910e6a3cd05d907e2d7344b4a4e4e"),
        ("report.toml", "4dfb88b0cc8be9dc662760026e5c1b4c5b35bec1586cdcc338fb34bb3a5a8ed6"),
    ],
)
def test_earlier_spec_files_keep_their_hash(name, spec_hash):
    assert StudySpec.from_toml(SPECS / name).spec_hash == spec_hash


def test_a_study_unit_trains_without_a_progress_bar():
    spec = StudySpec.from_toml(SPECS / "tiny.toml")
    assert spec.config(spec.units()[0]).progress is False
