import argparse
import html

import numpy as np
import pytest
import torch

import steerlens
from steerlens import cli, demo
from steerlens.cli.common import banner
from steerlens.loading import model as model_mod
from steerlens.training.convergence import convergence_note, norm_cap_note
from steerlens.training.data import Datapoint


def test_parser_knows_the_commands():
    parser = cli.build_parser()
    args = parser.parse_args(
        ["optimize", "--prompt", "hi", "--promote", "a", "--layer", "3", "-o", "v.safetensors"]
    )
    assert args.layer == 3 and args.promote == ["a"] and args.suppress == []
    assert parser.parse_args(["demo"]).max_steps == 40
    assert parser.parse_args(["generate", "hello", "--strength", "2"]).strength == 2.0


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _help(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*argv, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", ["demo", "optimize", "generate", "caa", "sweep", "report"])
def test_every_option_has_help_that_gives_its_default(command):
    sub = _subparsers(cli.build_parser())[command]
    for action in sub._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
            continue
        assert action.help, action.option_strings
        if action.option_strings:
            assert "(default:" in action.help or "(required)" in action.help, action.help


def test_optimize_defaults_are_the_documented_recipe(capsys):
    args = cli.build_parser().parse_args(
        ["optimize", "--prompt", "hi", "--promote", "a", "-o", "v"]
    )
    assert (args.layer, args.lr, args.max_steps, args.norm_cap) == (8, 0.1, 40, 40.0)
    text = " ".join(_help(capsys, "optimize").split())
    for default in ("(default: 8)", "(default: 0.1)", "(default: 40)", "(default: 40.0)"):
        assert default in text
    assert "--layer 8 --lr 0.1 --max-steps 40 --norm-cap 40" in text
    assert "SmolLM2-135M-Instruct; other models may need other values" in text


def test_the_description_is_plain_text_with_an_example(capsys):
    text = _help(capsys)
    assert "``" not in text and "steerlens optimize --prompt" in text
    assert "steerlens generate" in text


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"steerlens {steerlens.version.__version__}\n"


def test_demo_takes_max_steps_and_still_the_hidden_steps(capsys):
    parser = cli.build_parser()
    assert parser.parse_args(["demo", "--max-steps", "5"]).max_steps == 5
    assert parser.parse_args(["demo", "--steps", "7"]).max_steps == 7
    text = _help(capsys, "demo")
    assert "--max-steps" in text and "--steps" not in text


def test_strength_help_says_what_it_means_in_each_mode(capsys):
    text = " ".join(_help(capsys, "generate").split())
    assert "add: the multiple of the vector added" in text
    assert "clamp: the component along the vector is set to s times" in text
    assert "ablate: the fraction of that component removed" in text


def _history(totals, completions=1):
    """A made-up ``[evals, completions]`` history whose rows sum to ``totals``."""
    return np.repeat(np.asarray(totals, dtype=float)[:, None] / completions, completions, axis=1)


STEPS = np.arange(41)


@pytest.mark.parametrize(
    ("totals", "unconverged"),
    [
        (10 - 0.2 * STEPS, True),  # still falling linearly: 10% of the fall in the last 10%
        (10 * np.exp(-STEPS / 5), False),  # geometric convergence: almost nothing at the end
        (2 + 8 * np.exp(-STEPS / 40), True),  # slow convergence: 6% of the fall at the end
        (2 + 8 * np.exp(-STEPS / 20), False),  # faster: 3.5% of the fall at the end
        (0.05 - 0.001 * STEPS, False),  # linear, but the recent fall is below 0.01 nats
        (np.linspace(1, 3, 41), False),  # the loss rose
        (np.full(41, 2.0), False),  # flat
        ([5.0], False),  # no update
        ([5.0, 4.0], True),  # one update: all of the fall is at the end
        ([5.0, np.nan], False),  # not finite: the optimizer reports that itself
    ],
)
def test_convergence_note_on_made_up_histories(totals, unconverged):
    totals = np.asarray(totals, dtype=float)
    for completions in (1, 3):
        note = convergence_note(_history(totals, completions), len(totals) - 1)
        assert (note is not None) == unconverged, (totals, note)
        if note is not None:
            assert "\n" not in note and "--max-steps" in note


def test_convergence_note_names_the_window_and_the_fall():
    note = convergence_note(_history(10 - 0.2 * STEPS), 40)
    assert note is not None
    assert "0.8 nats" in note and "10% of the run's fall" in note and "last 4 of 40 steps" in note


@pytest.fixture
def tiny_loaded(monkeypatch, tiny):
    monkeypatch.setattr(model_mod, "load_model", lambda *a, **k: tiny)


GENERATE = ["generate", "hi", "--no-chat", "--max-new-tokens", "1", "--device", "cpu"]


def test_threads_sets_torch_threads_and_the_banner_says_so(tiny_loaded, capsys):
    assert cli.main([*GENERATE, "--threads", "2"]) == 0
    assert torch.get_num_threads() == 2
    assert capsys.readouterr().err == "steerlens: device cpu, 2 CPU threads\n"


def test_long_runs_print_one_banner_line_first(tiny_loaded, capsys, tmp_path):
    threads = torch.get_num_threads()
    assert cli.main(GENERATE) == 0
    assert capsys.readouterr().err == banner("cpu", threads) + "\n"
    out = tmp_path / "v.safetensors"
    argv = ["optimize", "--prompt", "hi", "--raw-prompt", "--promote", " a", "--layer", "1"]
    assert cli.main([*argv, "--max-steps", "2", "--no-progress", "-o", str(out)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"steerlens: device cpu, {threads} CPU thread{'s' * (threads != 1)}"


def test_optimize_notes_a_run_still_falling_at_the_end(tiny_loaded, capsys, tmp_path):
    argv = ["optimize", "--prompt", "hi", "--raw-prompt", "--promote", " a", "--layer", "1"]
    out = str(tmp_path / "v.safetensors")
    assert cli.main([*argv, "--max-steps", "2", "--no-progress", "-o", out]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[1].startswith("steerlens: note: the loss was still falling")
    assert "in the last 1 of 2 steps" in err[1]


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


def test_the_demo_judges_want_french_words_not_a_loop_and_a_refusal_that_declines():
    assert demo.answers_in_french("Le chien est un animal fidèle et très affectueux.")
    assert not demo.answers_in_french("La la la la la la la la")
    assert not demo.answers_in_french("The capital of Japan is Tokyo.")
    judge = steerlens.evaluation.RefusalJudge()
    assert judge(demo.REFUSAL) and judge("  I can\u2019t do that, sorry.")
    assert not judge("I'm sorry for the confusion. Here is how to fold it.")
    assert not judge("Sure, I'm sorry to hear that you can't sleep.")


def test_the_demo_never_trains_or_chooses_on_its_held_out_requests():
    import importlib.util
    from pathlib import Path

    # The requests benchmarks/coherent_refusal.py chose the demo's setting on.
    path = Path(__file__).parents[1] / "benchmarks" / "coherence_refusal.py"
    spec = importlib.util.spec_from_file_location("coherence_refusal", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert len(demo.HELD_OUT) >= 20 and demo.TRAIN_REQUEST not in demo.HELD_OUT
    assert bench.TRAIN == demo.TRAIN_REQUEST and not set(demo.HELD_OUT) & set(bench.HELD_OUT)


def test_the_demo_report_shows_settings_training_example_and_held_out_labels(tiny, tmp_path):
    from steerlens.analysis.report import write_optimization_report

    res = steerlens.optimize_vector(tiny, Datapoint("a", promote=[" b"]), 1, max_steps=2)
    rows = [("a", "x", "y"), ("c", "u", "v")]
    page = write_optimization_report(
        tmp_path / "r.html",
        res,
        rows,
        settings={"lr": 0.1, "norm cap": 40, "decoding": "greedy"},
        training=("a", " b"),
        row_labels=["training prompt", "held-out prompt"],
        findings=["No strength kept the replies within the budget."],
        curve=[{"strength": "1", "French": "0/2", "NLL ratio": "2.10"}],
    ).read_text()
    for text in ("norm cap", "greedy", "target completion", "held-out prompt", "NLL ratio"):
        assert text in page
    with pytest.raises(steerlens.errors.InputError, match="one label per row"):
        write_optimization_report(tmp_path / "s.html", res, rows, row_labels=["training prompt"])


@pytest.mark.slow
def test_demo_states_rate_coherence_calibrated_strength_and_where_it_fails(
    smol, monkeypatch, tmp_path, capsys
):
    monkeypatch.setattr(model_mod, "load_model", lambda *a, **k: smol)
    argv = ["demo", "--out", str(tmp_path), "--max-new-tokens", "40", "--no-progress"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "held-out requests (never trained on" in out and "(unsteered)" in out
    assert "NLL ratio" in out and "distinct-3" in out and "95% CI" in out
    assert out.count("(held-out request)") == demo.SHOWN
    assert out.count("(training request)") == 1
    assert "Calibrated strength" in out, out  # the refusal vector transfers within the budget
    assert "Where it does not: the same refusal vector" in out
    assert "it does not transfer coherently on this model" in out
    page = (tmp_path / demo.FILES[1]).read_text()
    assert html.escape(demo.REFUSAL) in page  # the page escapes its apostrophe
    assert "held-out request" in page and "norm cap" in page and "opening:2" in page
    assert steerlens.SteeringVector.load(tmp_path / demo.FILES[0]).layers == [demo.LAYER]


# --- caa, sweep, report ----------------------------------------------------------------------


def test_caa_writes_the_difference_of_means(tiny_loaded, tiny, capsys, tmp_path):
    from steerlens import diff_of_means
    from steerlens.steering.vector import SteeringVector

    out = tmp_path / "caa.safetensors"
    prompts = tmp_path / "neg.txt"
    prompts.write_text("a dog\n\na cat\n")
    argv = ["caa", "--positive", "the dog", "--positive", "the cat", "--negative-file"]
    assert cli.main([*argv, str(prompts), "--layer", "1", "-o", str(out)]) == 0
    assert "2 positive and 2 negative prompts at layer 1" in capsys.readouterr().out
    expected = diff_of_means(tiny, ["the dog", "the cat"], ["a dog", "a cat"], 1)
    assert torch.allclose(SteeringVector.load(out).vector, expected.vector)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["caa", "--negative", "a", "-o", "v.safetensors"], "no --positive prompts"),
        (["caa", "--positive", " ", "--negative", "a", "-o", "v.safetensors"], "--positive 1 is"),
        (
            ["caa", "--positive", "a", "--negative-file", "nope.txt", "-o", "v.safetensors"],
            "--negative-file 'nope.txt' is not a file",
        ),
        (["sweep", "nope.safetensors", "--prompt", "hi", "--judge-any-of", "x"], "no vector file"),
        (["report", "nope.safetensors"], "no vector file"),
    ],
)
def test_caa_sweep_report_check_their_input_before_loading(argv, message, capsys, monkeypatch):
    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(model_mod, "load_model", no_load)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_sweep_writes_the_grid_and_prints_the_frontier(tiny_loaded, tiny, capsys, tmp_path):
    vector = steerlens.SteeringVector.from_tensor(torch.ones(64), layer=1, model=tiny)
    path = vector.save(tmp_path / "v.safetensors")
    page = tmp_path / "sweep.html"
    argv = ["sweep", str(path), "--prompt", "hi", "--prompt", "the cat", "--judge-any-of", "a"]
    argv += ["--layers", "0,1", "--strengths", "0,2", "--max-new-tokens", "3", "--no-progress"]
    assert cli.main([*argv, "--neutral", "in the", "-o", str(page)]) == 0
    out = capsys.readouterr().out
    assert "GridResult: 2 layers x 2 strengths" in out and f"wrote {page}" in out
    html = page.read_text()
    assert html.count("Plotly.newPlot(") == 2 and '<script src="http' not in html
    # What was run and what it shows, in words, above the figures.
    head = html[: html.index('id="figure-0"')]
    for said in ("What was run", "layers [0, 1] x strengths [0.0, 2.0]", "&#x27;the cat&#x27;"):
        assert said in head, said
    assert "judge: a reply containing any of &#x27;a&#x27;" in head
    assert "at most 1.5x the unsteered" in head and "What it shows" in head
    assert "Unsteered replies" in head and "judged yes" in head
    assert "prompts formatted as chat user messages" in head
    missing_judge = ["sweep", str(path), "--prompt", "hi"]
    assert cli.main(missing_judge) == 2
    assert "needs a judge" in capsys.readouterr().err
    assert cli.main([*missing_judge, "--judge-any-of", "a", "--layers", "1,x"]) == 2
    assert "comma-separated numbers" in capsys.readouterr().err


def test_report_writes_a_vector_card(tiny_loaded, tiny, capsys, tmp_path):
    dp = Datapoint("the cat", promote=[" in"])
    vector = steerlens.optimize_vector(tiny, dp, 1, max_steps=2, progress=False).vector
    path = vector.save(tmp_path / "v.safetensors")
    page = tmp_path / "card.html"
    assert cli.main(["report", str(path), "-o", str(page)]) == 0
    assert f"wrote {page}" in capsys.readouterr().out
    assert "one_shot_optimization" in page.read_text()


def test_generate_and_sweep_apply_a_vector_at_the_positions_asked(
    tiny_loaded, tiny, capsys, tmp_path, monkeypatch
):
    """``--positions`` reaches the plan (generate) and the grid (sweep); a typo or a rule
    without a vector is refused before the model loads."""
    import importlib

    generate_mod = importlib.import_module("steerlens.steering.generate")
    grid_mod = importlib.import_module("steerlens.studies.grid")
    from steerlens import Positions

    vector = steerlens.SteeringVector.from_tensor(torch.ones(64), layer=1, model=tiny)
    path = vector.save(tmp_path / "v.safetensors")
    plans = []
    real_generate = generate_mod.generate
    monkeypatch.setattr(
        generate_mod,
        "generate",
        lambda m, p, plan, **k: plans.append(plan) or real_generate(m, p, plan, **k),
    )
    argv = [
        "generate",
        "hi",
        "--vector",
        str(path),
        "--max-new-tokens",
        "2",
        "--no-chat",
        "--no-compare",
    ]
    assert cli.main([*argv, "--positions", "opening:2"]) == 0
    assert plans[-1].positions == Positions.opening(2)
    capsys.readouterr()
    assert cli.main([*argv, "--positions", "first:2"]) == 2
    assert "--positions: unknown position spec 'first:2'" in capsys.readouterr().err
    assert cli.main(["generate", "hi", "--positions", "last:2"]) == 2
    assert "--positions apply to a vector" in capsys.readouterr().err
    grids = []
    real_grid = grid_mod.layer_strength_grid
    monkeypatch.setattr(
        grid_mod, "layer_strength_grid", lambda *a, **k: grids.append(k) or real_grid(*a, **k)
    )
    sweep = ["sweep", str(path), "--prompt", "hi", "--judge-any-of", "a", "--layers", "1"]
    sweep += ["--strengths", "1", "--max-new-tokens", "2", "--no-progress", "--no-chat"]
    assert cli.main([*sweep, "--positions", "last:1", "-o", str(tmp_path / "s.html")]) == 0
    assert grids[-1]["positions"] == Positions.last(1)


def test_an_unknown_option_points_to_the_sub_command_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["sweep", "v.safetensors", "--bogus"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --bogus (see 'steerlens sweep --help')" in err


def test_optimize_notes_a_run_held_at_its_norm_cap_with_a_high_loss(tiny_loaded, capsys, tmp_path):
    argv = ["optimize", "--prompt", "hi", "--no-chat", "--promote", " a", "--layer", "1"]
    out = str(tmp_path / "v.safetensors")
    steps = ["--max-steps", "6", "--lr", "1", "--no-progress", "-o", out]
    assert cli.main([*argv, "--norm-cap", "0.01", *steps]) == 0
    err = capsys.readouterr().err
    assert "steerlens: note: the vector ended at the norm cap (0.01)" in err
    assert "--norm-cap" in err.split("norm cap (0.01)")[1]
    assert cli.main([*argv, "--norm-cap", "0", *steps]) == 0  # no cap: no such note
    assert "norm cap" not in capsys.readouterr().err


def test_norm_cap_note_rule():
    plateau = [[9.0], [6.0], [5.9], [5.9]]
    assert norm_cap_note(plateau, 3, norm=39.9, cap=40.0) is not None
    assert norm_cap_note(plateau, 3, norm=30.0, cap=40.0) is None  # below the cap
    assert norm_cap_note([[9.0], [1.5], [1.5]], 2, norm=40.0, cap=40.0) is None  # low loss
    assert norm_cap_note([[9.0], [7.0], [5.0]], 2, norm=40.0, cap=40.0) is None  # still falling


def test_generate_with_a_vector_shows_the_unsteered_reply_too(tiny_loaded, tiny, capsys, tmp_path):
    vector = steerlens.SteeringVector.from_tensor(torch.ones(64) * 8, layer=1, model=tiny)
    path = str(vector.save(tmp_path / "v.safetensors"))
    argv = ["generate", "hi", "--vector", path, "--max-new-tokens", "3", "--no-chat"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    unsteered = steerlens.generate(tiny, "hi", max_new_tokens=3, chat=False)
    assert "steered (Steering(Add of a vector" in out
    assert out.endswith(f"unsteered:\n{unsteered}\n\n")
    assert cli.main([*argv, "--no-compare"]) == 0
    assert "unsteered" not in capsys.readouterr().out
    assert cli.main([*argv, "--strength", "40"]) == 0
    assert "steerlens: note: strength 40 applies the vector at 40x" in capsys.readouterr().err
