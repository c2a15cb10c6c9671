import re

import pytest

import steerlens
from steerlens import cli
from steerlens.constraints import NormCap
from steerlens.data import Datapoint


def test_parser_knows_the_commands():
    parser = cli.build_parser()
    args = parser.parse_args(
        ["optimize", "--prompt", "hi", "--promote", "a", "--layer", "3", "-o", "v.safetensors"]
    )
    assert args.layer == 3 and args.promote == ["a"] and args.suppress == []
    assert parser.parse_args(["demo"]).steps == 40
    assert parser.parse_args(["generate", "hello", "--strength", "2"]).strength == 2.0


def test_cli_reports_steerlens_errors_cleanly(capsys, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a vector")
    code = cli.main(["generate", "hi", "--vector", str(bad), "--max-new-tokens", "1"])
    assert code == 2
    assert "steerlens: error:" in capsys.readouterr().err


@pytest.mark.slow
def test_optimize_then_generate_from_the_command_line(tmp_path, capsys, smol):
    out = tmp_path / "v.safetensors"
    code = cli.main(
        [
            "optimize", "--prompt", "Name a color.", "--promote", "Blue", "--layer", "6",
            "--lr", "0.1", "--max-steps", "3", "--norm-cap", "10", "-o", str(out), "--no-progress",
        ]
    )  # fmt: skip
    assert code == 0 and out.exists()
    v = steerlens.SteeringVector.load(out)
    assert v.layers == [6] and v.norm() <= 10 + 1e-4
    assert v.provenance["datapoints"][0]["promote"] == ["Blue"]
    code = cli.main(["generate", "Name a color.", "--vector", str(out), "--max-new-tokens", "5"])
    assert code == 0 and "### Name a color." in capsys.readouterr().out


FRENCH = re.compile(r"\b(le|la|les|est|une|des|je|et|de|du|pour|en)\b", re.IGNORECASE)
ENGLISH = re.compile(r"\b(the|is|and|of|to|for|you|are)\b", re.IGNORECASE)


def _frenchness(text: str) -> float:
    fr, en = len(FRENCH.findall(text)), len(ENGLISH.findall(text))
    return fr / max(fr + en, 1)


@pytest.mark.slow
def test_demo_behavior_appears_on_held_out_prompts(smol):
    dp = Datapoint.chat(smol, cli.DEMO_TRAIN, promote=[cli.DEMO_COMPLETION])
    result = steerlens.optimize_vector(
        smol, dp, cli.DEMO_LAYER, lr=0.1, max_steps=40, constraints=(NormCap(cli.DEMO_NORM_CAP),)
    )
    assert result.loss_history[-1].sum() < 0.3 * result.loss_history[0].sum()
    held_out = cli.DEMO_HELD_OUT
    plain = steerlens.generate(smol, held_out, max_new_tokens=30, chat=True)
    steered = steerlens.generate(smol, held_out, result.vector, max_new_tokens=30, chat=True)
    assert all(_frenchness(t) < 0.3 for t in plain), plain
    french = [t for t in steered if _frenchness(t) > 0.6]
    assert len(french) >= 3, steered
