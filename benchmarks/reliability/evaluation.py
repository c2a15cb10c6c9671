"""Cases: evaluation (log-probabilities, judges, intervals, text statistics)."""

# mypy: ignore-errors
# (the cases pass wrong types on purpose)

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from steerlens import Steering
from steerlens import evaluation as ev

from .helpers import make, on_tiny
from .runner import Ctx, cases

# wilson_interval(k, n) arguments that are not counts, and what the error must name.
BAD_COUNTS = [(5, 0, "0"), (5, 3, "5"), (-1, 3, "-1"), (1.5, 3, "1.5")]


def _cl(prompts: Any = "the cat", completions: Any = " sat", **kw: Any) -> Callable[[Ctx], Any]:
    return on_tiny(ev.completion_logprobs, prompts, completions, **kw)


def _huge_steering(ctx: Ctx) -> Any:
    return _cl(steering=Steering(torch.ones(64), layer=1, strength=1e6))(ctx)


def _steering() -> Any:
    return Steering(torch.ones(64), layer=1)


# (name, run, ok: None where only an error is right, what the error must name)
CASES = cases(
    "evaluation",
    [
        (
            "completion_logprobs of 2 prompts x 3 completions",
            _cl(["a", "b"], [" x", " y", " z"]),
            lambda r: tuple(r.totals.shape) == (2, 3),
        ),
        ("completion_logprobs completion ''", _cl(completions=""), None, "empty"),
        ("completion_logprobs coldness=0", _cl(coldness=0.0), None, "coldness"),
        ("completion_logprobs coldness=nan", _cl(coldness=float("nan")), None, "coldness"),
        ("completion_logprobs unit='furlongs'", _cl(unit="furlongs"), None, "furlongs"),
        ("completion_logprobs batch_size=0", _cl(batch_size=0), None, "batch_size"),
        ("completion_logprobs prompts=[]", _cl([], []), lambda r: r.totals.numel() == 0, "empty"),
        (
            "completion_logprobs under NaN-free steering is finite",
            _huge_steering,
            lambda r: bool(torch.isfinite(r.totals).all()),
        ),
        (
            "success_rate with an unknown keyword",
            on_tiny(ev.success_rate, ["a"], ev.StringMatchJudge(["x"]), max_tokens=2),
            None,
            "max_tokens",
        ),
        (
            "success_rate with a str as judge",
            on_tiny(ev.success_rate, ["a"], "x", max_new_tokens=2),
            None,
            "judge",
        ),
        (
            "success_rate prompts=[]",
            on_tiny(ev.success_rate, [], ev.StringMatchJudge(["x"]), max_new_tokens=2),
            None,
            "prompt",
        ),
        (
            "a judge that answers 'no' (a truthy str)",
            on_tiny(ev.success_rate, ["a"], lambda t: "no", max_new_tokens=2),
            None,
            "'no'",
        ),
        ("StringMatchJudge([])", make(ev.StringMatchJudge, []), None, "phrase"),
        (
            "StringMatchJudge('abc') (a str, not a list)",
            make(ev.StringMatchJudge, "abc"),
            lambda j: list(j.phrases) == ["abc"],
            "str",
        ),
        (
            "StringMatchJudge(['']) (matches everything)",
            make(ev.StringMatchJudge, [""]),
            None,
            "empty",
        ),
        (
            "ModelJudge template without {text}",
            on_tiny(ev.ModelJudge, "Is it French?"),
            None,
            "{text}",
        ),
        *[
            (f"wilson_interval({k}, {n})", make(ev.wilson_interval, k, n), None, mention)
            for k, n, mention in BAD_COUNTS
        ],
        ("wilson_interval z=nan", make(ev.wilson_interval, 1, 3, float("nan")), None, "z"),
        ("beam_search k=0", on_tiny(ev.beam_search, "the cat", k=0, n_tokens=2), None, "k"),
        (
            "beam_search n_tokens=0",
            on_tiny(ev.beam_search, "the cat", k=2, n_tokens=0),
            None,
            "n_tokens",
        ),
        (
            "behavior_change_rates with a multi-token answer",
            on_tiny(
                ev.behavior_change_rates,
                _steering(),
                ["q"],
                ["q"],
                answers=("Absolutely", "Never"),
            ),
            None,
            "token",
        ),
        (
            "coherence prompts=[]",
            on_tiny(ev.coherence, [], _steering(), max_new_tokens=2),
            None,
            "prompt",
        ),
        ("distinct_n n=0", on_tiny(ev.distinct_n, ["a b c"], n=0), None, "n"),
        ("loop_rate repeats=0", on_tiny(ev.loop_rate, ["a b c"], repeats=0), None, "repeats"),
        ("distinct_n texts=[]", on_tiny(ev.distinct_n, []), None, "text"),
        ("mean_surprisal samples=[]", on_tiny(ev.mean_surprisal, [], "ctx"), None, "sample"),
        (
            "mean_surprisal unit='furlongs'",
            on_tiny(ev.mean_surprisal, ["a b"], "ctx", unit="furlongs"),
            None,
            "furlongs",
        ),
        (
            "mean_surprisal max_tokens=0",
            on_tiny(ev.mean_surprisal, ["a b"], "ctx", max_tokens=0),
            None,
            "max_tokens",
        ),
        (
            "reply_nll with 2 prompts and 1 reply",
            on_tiny(ev.reply_nll, ["a", "b"], [" x"]),
            None,
            "2",
        ),
        (
            "side_effect_kl prompts=[]",
            on_tiny(ev.side_effect_kl, [], _steering()),
            None,
            "prompt",
        ),
        (
            "information_complexity context=''",
            on_tiny(ev.information_complexity, ""),
            None,
            "empty",
        ),
        (
            "compare_samples with an empty side",
            on_tiny(ev.compare_samples, ["a b"], [], "ctx"),
            None,
            "sample",
        ),
    ],
)
