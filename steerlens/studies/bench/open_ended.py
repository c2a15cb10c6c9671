"""Open-ended behaviours in the benchmark: the same methods and the same equal-cost
calibration, measured by judging generated replies.

A training item is a request and the reply that shows the behaviour, so a one-shot vector
promotes that reply after the chat-formatted request, and CAA takes the difference of the mean
activations over the target reply's tokens and over the unsteered model's own reply to the same
request. Each vector is applied at the behaviour's position rule (``"opening:2"`` by default)
at its equal-cost multiplier, the test requests' greedy replies are judged (the judged rate with
its Wilson interval, and SteeringSafety effectiveness against the unsteered rate), and the
unsteered model's NLL of the steered replies over that of its own replies says what fluency
the behaviour cost (the reply NLL ratio).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from steerlens import runtime
from steerlens.baselines import collect_activations
from steerlens.datasets import OpenEndedBehaviour, OpenItem
from steerlens.evaluation.coherence import reply_nll
from steerlens.evaluation.judges import judge_texts, named_judge
from steerlens.evaluation.rates import RateResult
from steerlens.evaluation.scorer import PromptScorer
from steerlens.steering.generate import generate, generate_each
from steerlens.steering.positions import Positions, as_positions
from steerlens.steering.vector import SteeringVector
from steerlens.studies.bench import metrics
from steerlens.studies.bench.cells import CellRun, unit_plans
from steerlens.studies.bench.methods import Method, Setup
from steerlens.studies.bench.results import CellResult
from steerlens.training.data import Datapoint


@dataclass
class OpenSetup(Setup):
    """`Setup` for an open-ended behaviour: datapoints promote an item's target reply, and
    the contrasts are target reply minus the model's own reply."""

    behaviour: OpenEndedBehaviour  # type: ignore[assignment]

    def datapoints(self, item: OpenItem) -> list[Datapoint]:  # type: ignore[override]
        """The request, chat-formatted, promoting the target reply (steered at every
        position while training, as the demo's refusal vector is)."""
        return [Datapoint(item.request, promote=[item.target], chat=True)]

    def contrast(self, n: int) -> torch.Tensor:
        """Per training request (up to ``n``), the mean of ``blocks.{layer}.hook_resid_pre``
        over the target reply's tokens minus that over the unsteered model's own greedy reply
        (``[requests, d_model]``; shared with the setups at ``contrast_layers``)."""
        if (n, self.layer) not in self.contrasts:
            items = [self.behaviour.train[i] for i in self.order[:n]]
            requests = [i.request for i in items]
            length = max(len(runtime.encode(self.model, i.target)) for i in items)
            own = generate(self.model, requests, chat=True, max_new_tokens=length)
            layers = sorted({self.layer, *self.contrast_layers})
            pairs = [(r, i.target) for r, i in zip(requests, items, strict=True)]
            pairs += [(r, o if o.strip() else ".") for r, o in zip(requests, own, strict=True)]
            acts = collect_activations(self.model, pairs, layers, position="completion", chat=True)
            for layer in layers:
                a = acts[layer]
                self.contrasts[(n, layer)] = (a[: len(items)] - a[len(items) :]).float()
        return self.contrasts[(n, self.layer)]

    def provenance(self) -> dict[str, Any]:
        return {
            "benchmark_behaviour": self.behaviour.name,
            "position": "target reply's tokens vs the model's own reply",
        }


@dataclass
class OpenCellRun(CellRun):
    """One open-ended behaviour at one layer: builds, calibrates, generates and judges."""

    behaviour: OpenEndedBehaviour  # type: ignore[assignment]
    setup_type: ClassVar[type[Setup]] = OpenSetup

    def run(self, methods: Sequence[Method]) -> CellResult:
        """Every phase of this cell, timed."""
        lap = self.laps()
        vectors = self.build(methods, lap)
        multipliers = self.calibrate(vectors)
        lap("calibration")
        replies = self.replies(vectors, multipliers)
        lap("generation")
        judge = named_judge(self.behaviour.judge)
        requests = self._requests()
        where = f"the benchmark's {self.behaviour.name!r} replies"
        rates = [RateResult.from_outcomes(judge_texts(judge, r, where=where)) for r in replies]
        nll = [self._nll(requests, r) for r in replies]
        lap("judging")
        best = self.pick_best(methods, vectors, multipliers, lap)
        rows = [
            {
                "behaviour": self.behaviour.name,
                "layer": self.layer,
                "method": name,
                "vector": label,
                "kind": "open-ended",
                "norm": vector.norm(),
                "multiplier": self._strength(multipliers[label]),
                "budget_reached": multipliers[label] is not None,
                "rate_base": rates[0].rate,
                "rate_steered": rates[1 + i].rate,
                "rate_ci_low": rates[1 + i].ci_low,
                "rate_ci_high": rates[1 + i].ci_high,
                "effectiveness": metrics.effectiveness(rates[1 + i].rate, rates[0].rate),
                "nll_ratio": nll[1 + i] / nll[0],
                "sample_reply": replies[1 + i][0],
            }
            for i, ((name, label), vector) in enumerate(vectors.items())
        ]
        return self.result(vectors, rows, best, {}, lap.times)

    def _requests(self) -> list[str]:
        return list(self.behaviour.test[: self.settings.test_items])

    def _nll(self, requests: Sequence[str], replies: Sequence[str]) -> float:
        """The unsteered model's mean per-token NLL of the replies (empty ones skipped)."""
        values = reply_nll(self.model, requests, replies, chat=True).values
        return float(np.mean(values)) if values else float("nan")

    def replies(
        self,
        vectors: dict[tuple[str, str], SteeringVector],
        multipliers: dict[str, float | None],
    ) -> list[list[str]]:
        """The test requests' greedy replies, unsteered first, then one list per vector at its
        equal-cost multiplier (all decoded in shared batches)."""
        strengths = [self._strength(multipliers[label]) for _, label in vectors]
        plans = unit_plans(self._units(vectors), self.layer, strengths, self.positions)
        return generate_each(
            self.model,
            self._requests(),
            [None, *plans],
            max_new_tokens=self.settings.reply_tokens,
            chat=True,
            batch_size=self.settings.batch_size,
        )

    def best_of(
        self, vectors: dict[tuple[str, str], SteeringVector], multipliers: dict[str, float | None]
    ) -> str | None:
        """The single-example vector under which the validation requests' target replies
        (training items that are none of the E examples) are most likely per token, at its
        equal-cost multiplier: a choice that needs no generation and no judge."""
        singles, items = self.validation(vectors)
        if not singles or not items:
            return None
        rows, completions = [], []
        for item in items:
            prompt = runtime.chat_prompt(self.model, item.request)
            ids = runtime.encode(self.model, prompt)
            tokens, _ = runtime.completion_tokens(
                self.model, ids, prompt, item.target, label="target"
            )
            rows.append(ids)
            completions.append(tokens)
        scorer = PromptScorer(
            self.model,
            rows,
            self.positions,
            self.shared.layers,
            completions=completions,
            batch_size=self.settings.batch_size,
        )
        strengths = [self._strength(multipliers[label]) for _, label in singles]
        plans = unit_plans(self._units(singles), self.layer, strengths, self.positions)
        totals = scorer.completion_logprobs(plans).double().numpy()
        per_token = totals / np.asarray([len(c) for c in completions], dtype=np.float64)
        labels = [label for _, label in singles]
        return labels[int(np.argmax(per_token.mean(axis=1)))]


def open_positions(behaviour: OpenEndedBehaviour) -> Positions:
    """The behaviour's position rule as `Positions` (``"opening:2"`` by default).

    Example:
        >>> from steerlens.datasets import load_open_ended
        >>> open_positions(load_open_ended("french")).to_dict()["kind"]
        'opening'
    """
    return as_positions(behaviour.positions)


__all__ = ["OpenCellRun", "OpenSetup", "open_positions"]
