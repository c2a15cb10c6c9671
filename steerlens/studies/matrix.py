"""Does a vector trained on one example generalize? The generalization matrix.

`generalization_matrix` applies every vector to every example's prompt (and to held-out
prompts) and measures, per ``(vector, prompt)`` cell:

- ``logprob_change``: the target log-prob change, ``log P(promote | prompt, steered) -
  log P(promote | prompt)`` (nats; with several promote completions, the mean of their total
  log-probs), for prompts that have promote completions;
- ``judged``: whether a judge accepts the greedy steered reply (with ``judge=``);
- ``side_effect_kl``: per vector, ``KL(unsteered || steered)`` of the next token after
  neutral prompts, mean over prompts (with ``neutral_prompts=``).

All ``vectors x prompts`` rows run together, each under its own steering
(`steerlens.evaluation.completion_logprobs_many`, `steerlens.evaluation.next_token_kl`,
`steerlens.steering.generate_each`): a few forward passes score the whole matrix.
`GeneralizationMatrix.ranking` answers "which training example transfers best": the vectors
ordered by their mean effect on the prompts they were *not* trained on.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from steerlens import runtime
from steerlens.errors import InputError, SpecError
from steerlens.evaluation.judges import Judge, judge_texts
from steerlens.evaluation.many import completion_logprobs_many, next_token_kl
from steerlens.io.plain import prompt_label, short, table, to_plain
from steerlens.steering.generate import generate_each
from steerlens.steering.steer import (
    RowSteering,
    Steering,
    SteeringLike,
    as_plans,
    check_row_steerings,
)
from steerlens.steering.vector import SteeringVector
from steerlens.training.data import Datapoint

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

Kind = Literal["example", "held_out"]
MATRIX_METRICS = ("logprob_change", "judged")


# -- scoring under per-row steering -------------------------------------------------------------


def check_examples(examples: Sequence[Datapoint], *, what: str = "examples") -> list[Datapoint]:
    """``examples`` as a list of datapoints that each have promote completions, or an error."""
    if isinstance(examples, Datapoint):
        examples = [examples]
    if isinstance(examples, (str, Mapping)) or not isinstance(examples, Sequence):
        raise InputError(
            f"{what} must be a list of steerlens.Datapoint, got {type(examples).__name__}; "
            "build each with Datapoint(prompt, promote=[...])."
        )
    if not examples:
        raise InputError(f"{what} is empty; pass at least one steerlens.Datapoint.")
    for i, dp in enumerate(examples):
        if not isinstance(dp, Datapoint):
            raise InputError(
                f"{what}[{i}] is a {type(dp).__name__} ({dp!r:.60}), not a steerlens.Datapoint; "
                "build it with Datapoint(prompt, promote=[...])."
            )
        if not dp.promote:
            raise InputError(
                f"{what}[{i}] (prompt {dp.prompt[:40]!r}) has no promote completions, so it has "
                "no target log-prob to measure; give it promote=[...]."
            )
    return list(examples)


@dataclass(frozen=True)
class TargetLogprobs:
    """Target log-probs of examples under several steerings; what `target_logprobs` returns.

    The target log-prob of an example is the mean, over its promote completions, of the
    completion's total log-prob after the prompt (nats).

    Attributes:
        steered: ``[steerings, examples]``: under each steering.
        unsteered: ``[examples]``: without steering.
    """

    steered: Float[Tensor, "steerings examples"]
    unsteered: Float[Tensor, " examples"]

    @property
    def changes(self) -> Float[Tensor, "steerings examples"]:
        """``steered - unsteered``: the target log-prob change (nats)."""
        return self.steered - self.unsteered[None, :]


@torch.no_grad()
def target_logprobs(
    model: Any,
    steerings: Sequence[RowSteering],
    examples: Sequence[Datapoint],
    *,
    batch_size: int = 32,
    progress: bool | None = None,
) -> TargetLogprobs:
    """The target log-prob of every example under every steering and unsteered (nats,
    float64). All ``steerings x examples x promote completions`` rows run together, each under
    its own steering, ``batch_size`` rows per forward pass
    (`steerlens.evaluation.completion_logprobs_many`).

    Args:
        model: a TransformerLens model.
        steerings: a list; each a `steerlens.Steering` plan, a ``SteeringVector``, a list of
            these, or ``None`` (unsteered).
        examples: datapoints with promote completions; their prompts are used as written.
            The prompt's tokens are "prompt" for position rules, the completion's "generated".
            Their ``suppress``, ``negate`` and ``positions`` are not used: each steering is
            applied as given.
        batch_size: rows per forward pass.
        progress: a progress bar when there is more than one batch.

    Example:
        >>> import torch
        >>> from steerlens import Datapoint, Steering
        >>> from steerlens.testing import tiny_model
        >>> model = tiny_model()
        >>> plan = Steering(torch.ones(64), layer=1)
        >>> res = target_logprobs(model, [None, plan], [Datapoint("a", promote=" b")])
        >>> tuple(res.changes.shape), float(res.changes[0, 0])
        ((2, 1), 0.0)
    """
    items = [dp.for_model(model) for dp in check_examples(examples)]
    plans = check_row_steerings(steerings)
    runtime.check_batch_size(batch_size)
    # One (prompt, completion) pair per promote completion, tokenised here so that messages
    # name the example; steering 0 is unsteered.
    prompts: list[list[int]] = []
    completions: list[list[int]] = []
    for e, dp in enumerate(items):
        prompt_tokens = runtime.encode(model, dp.prompt)
        if not prompt_tokens:
            raise InputError(f"example {e}'s prompt {dp.prompt!r} tokenises to nothing.")
        for c, text in enumerate(dp.promote):
            tokens, _ = runtime.completion_tokens(
                model,
                prompt_tokens,
                dp.prompt,
                text,
                label=f"promote completion {c}",
                where=f"example {e}",
            )
            runtime.check_fits(
                model,
                len(prompt_tokens) + len(tokens),
                f"example {e}'s prompt with its promote completion {c}",
                "use a shorter prompt or completion",
            )
            prompts.append(prompt_tokens)
            completions.append(tokens)
    totals = completion_logprobs_many(
        model, prompts, completions, [None, *plans], batch_size=batch_size, progress=progress
    ).double()
    counts = [len(dp.promote) for dp in items]
    per_example = torch.stack([part.mean(dim=1) for part in totals.split(counts, dim=1)], dim=1)
    return TargetLogprobs(steered=per_example[1:], unsteered=per_example[0])


# -- the matrix ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class MatrixRow:
    """One ``(vector, prompt)`` cell of a `GeneralizationMatrix` (a row of its tidy table).

    ``own`` marks the prompt the vector was trained on; ``logprob_change`` is ``None`` for a
    prompt without promote completions, ``judged``/``reply`` without a judge, and
    ``side_effect_kl`` (the vector's, on the neutral prompts) without ``neutral_prompts``.
    """

    vector: str
    prompt: str
    kind: Kind
    own: bool
    logprob_change: float | None
    judged: bool | None
    reply: str | None
    side_effect_kl: float | None


@dataclass(frozen=True)
class GeneralizationMatrix:
    """Every vector on every prompt; what `generalization_matrix` returns.

    Attributes:
        vectors: the vector names, in the order given.
        prompts: the example prompts, then the held-out prompts.
        kinds: ``"example"`` or ``"held_out"`` per prompt.
        own: ``[vectors, prompts]``: the prompt is one the vector was trained on.
        logprob_change: ``[vectors, prompts]``: target log-prob change (nats); NaN for a
            prompt without promote completions.
        unsteered_logprob: ``[prompts]``: the unsteered target log-prob (NaN: none).
        judged: ``[vectors, prompts]``: the judge's verdict on the steered reply (or ``None``).
        replies: ``replies[v][p]``: the greedy steered reply (or ``None``).
        baseline_judged: ``[prompts]``: the verdict on the unsteered reply (or ``None``).
        baseline_replies: the unsteered replies (or ``None``).
        side_effect_kl: ``[vectors]``: mean ``KL(unsteered || steered)`` after the neutral
            prompts (nats; or ``None``).
        strength: the multiplier every vector was applied with.
        unit: the unit of log-probs and KL (``"nats"``).
    """

    vectors: tuple[str, ...]
    prompts: tuple[str, ...]
    kinds: tuple[Kind, ...]
    own: Bool[Tensor, "vectors prompts"]
    logprob_change: Float[Tensor, "vectors prompts"]
    unsteered_logprob: Float[Tensor, " prompts"]
    judged: Bool[Tensor, "vectors prompts"] | None
    replies: tuple[tuple[str, ...], ...] | None
    baseline_judged: Bool[Tensor, " prompts"] | None
    baseline_replies: tuple[str, ...] | None
    side_effect_kl: Float[Tensor, " vectors"] | None
    strength: float
    unit: str = "nats"

    @property
    def rows(self) -> tuple[MatrixRow, ...]:
        """The tidy table: one `MatrixRow` per vector x prompt, vector-major."""
        out = []
        for v, name in enumerate(self.vectors):
            kl = None if self.side_effect_kl is None else float(self.side_effect_kl[v])
            for p, prompt in enumerate(self.prompts):
                change = float(self.logprob_change[v, p])
                out.append(
                    MatrixRow(
                        vector=name,
                        prompt=prompt,
                        kind=self.kinds[p],
                        own=bool(self.own[v, p]),
                        logprob_change=None if math.isnan(change) else change,
                        judged=None if self.judged is None else bool(self.judged[v, p]),
                        reply=None if self.replies is None else self.replies[v][p],
                        side_effect_kl=kl,
                    )
                )
        return tuple(out)

    def to_rows(self) -> list[dict[str, Any]]:
        """The tidy table as plain dicts (one per vector x prompt), ready for JSON or CSV."""
        return [to_plain(r) for r in self.rows]

    @classmethod
    def from_rows(
        cls, rows: Sequence[MatrixRow | Mapping[str, Any]], *, strength: float = 1.0
    ) -> GeneralizationMatrix:
        """The matrix back from its tidy table (`rows` / `to_rows`, e.g. read from a study
        folder): vector-major, every vector with the same prompts in the same order.

        The unsteered log-probs and replies are not in the table: ``unsteered_logprob`` is
        NaN and ``baseline_judged`` / ``baseline_replies`` are ``None``.

        Example:
            >>> row = dict(vector="v", prompt="Hi", kind="example", own=True,
            ...            logprob_change=0.5, judged=None, reply=None, side_effect_kl=None)
            >>> GeneralizationMatrix.from_rows([row]).ranking()
            [('v', nan)]
        """
        plain = [to_plain(r) if isinstance(r, MatrixRow) else dict(r) for r in rows]
        if not plain:
            raise InputError("no matrix rows; pass the rows of at least one (vector, prompt).")
        names: list[str] = []
        by_vector: dict[str, list[dict[str, Any]]] = {}
        for row in plain:
            missing = [f for f in ("vector", "prompt", "kind", "own") if f not in row]
            if missing:
                raise InputError(
                    f"a matrix row lacks {missing}; pass MatrixRow objects or to_rows() dicts."
                )
            if row["vector"] not in by_vector:
                names.append(row["vector"])
                by_vector[row["vector"]] = []
            by_vector[row["vector"]].append(row)
        first = by_vector[names[0]]
        prompts = [r["prompt"] for r in first]
        for name in names[1:]:
            if [r["prompt"] for r in by_vector[name]] != prompts:
                raise InputError(
                    f"vector {name!r} has other prompts than vector {names[0]!r}; every vector "
                    "needs a row for each prompt, in the same order (sort by prompt index)."
                )
        table = [by_vector[name] for name in names]

        def column(key: str) -> list[list[Any]]:
            return [[r.get(key) for r in vector_rows] for vector_rows in table]

        def nan(x: Any) -> float:
            return math.nan if x is None else float(x)

        judged, replies = column("judged"), column("reply")
        has_judge = any(j is not None for row in judged for j in row)
        kl = [nan(vector_rows[0].get("side_effect_kl")) for vector_rows in table]
        return cls(
            vectors=tuple(names),
            prompts=tuple(prompts),
            kinds=tuple(r["kind"] for r in first),
            own=torch.tensor([[bool(o) for o in row] for row in column("own")]),
            logprob_change=torch.tensor(
                [[nan(x) for x in row] for row in column("logprob_change")], dtype=torch.float64
            ),
            unsteered_logprob=torch.full((len(prompts),), torch.nan, dtype=torch.float64),
            judged=torch.tensor([[bool(j) for j in row] for row in judged]) if has_judge else None,
            replies=tuple(tuple(str(t or "") for t in row) for row in replies)
            if has_judge
            else None,
            baseline_judged=None,
            baseline_replies=None,
            side_effect_kl=None
            if any(math.isnan(k) for k in kl)
            else torch.tensor(kl, dtype=torch.float64),
            strength=float(strength),
        )

    def to_pandas(self) -> pd.DataFrame:
        """The tidy table as a ``pandas.DataFrame`` (one row per vector x prompt)."""
        import pandas as pd

        return pd.DataFrame(self.to_rows())

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, floats, strings) for saving as JSON."""
        return to_plain(self)

    def _values(self, metric: str) -> Float[Tensor, "vectors prompts"]:
        if metric not in MATRIX_METRICS:
            raise SpecError(
                f"unknown metric {metric!r}; use one of {', '.join(map(repr, MATRIX_METRICS))}."
            )
        if metric == "judged":
            if self.judged is None:
                raise SpecError(
                    "this matrix has no judged replies; pass judge= (and held_out=) to "
                    "generalization_matrix."
                )
            return self.judged.double()
        return self.logprob_change.double()

    def transfer(self, metric: str = "logprob_change") -> Float[Tensor, " vectors"]:
        """Each vector's mean ``metric`` over the prompts it was *not* trained on (NaN where
        there are none); ``"judged"`` gives the fraction of replies judged True."""
        values = self._values(metric)
        usable = ~self.own & ~values.isnan()
        kept = torch.where(usable, values, torch.zeros_like(values))
        return kept.sum(dim=1) / usable.sum(dim=1)  # 0 / 0 is NaN: no other prompt

    def ranking(self, metric: str = "logprob_change") -> list[tuple[str, float]]:
        """``(vector, mean transfer)`` pairs, best first: which training example's vector
        transfers best to the *other* prompts (see `transfer`); vectors without other
        prompts come last."""
        scores = self.transfer(metric).tolist()
        order = sorted(
            range(len(self.vectors)),
            key=lambda v: (math.isnan(scores[v]), -scores[v] if not math.isnan(scores[v]) else 0),
        )
        return [(self.vectors[v], scores[v]) for v in order]

    def plot(self, metric: str = "logprob_change") -> go.Figure:
        """A heatmap of ``metric`` (``"logprob_change"`` or ``"judged"``): vectors x prompts,
        with each vector's own training prompt marked "own" and every vector's row labelled.
        Prompts without a value for ``metric`` (held-out prompts have no target completion, so
        no log-prob change) are left out, and the title says so.

        Example:
            >>> rows = [dict(vector="v", prompt=p, kind=k, own=p == "a", logprob_change=x,
            ...              judged=j, reply=None, side_effect_kl=None)
            ...         for p, k, x, j in (("a", "example", 2.0, True), ("q", "held_out", None,
            ...                                                             False))]
            >>> fig = GeneralizationMatrix.from_rows(rows).plot()
            >>> list(fig.data[0].x), "1 held-out prompt" in fig.layout.title.text
            (["0: 'a'"], True)
        """
        import plotly.graph_objects as go

        from steerlens.analysis.plots import style_figure

        values = self._values(metric)
        shown = [p for p in range(len(self.prompts)) if not values[:, p].isnan().all()]
        labels = [
            f"{p}: {short(prompt_label(self.prompts[p]), 28)}"
            + (" (held out)" if self.kinds[p] == "held_out" else "")
            for p in shown
        ]
        z = [[None if math.isnan(row[p]) else row[p] for p in shown] for row in values.tolist()]
        marks = [["own" if row[p] else "" for p in shown] for row in self.own.tolist()]
        if metric == "judged":
            colour: dict[str, Any] = {"colorscale": "Blues", "zmin": 0.0, "zmax": 1.0}
            title, bar = "Judged steered replies", "judged"
        else:
            colour = {"colorscale": "RdBu", "zmid": 0.0}
            title, bar = "Target log-prob change", f"change ({self.unit})"
        fig = go.Figure(
            go.Heatmap(
                z=z,
                x=labels,
                y=list(self.vectors),
                text=marks,
                texttemplate="%{text}",
                colorbar={"title": {"text": bar}},
                hovertemplate="vector %{y}<br>prompt %{x}<br>%{z:.3f}<extra></extra>",
                **colour,
            )
        )
        # Every row labelled, however many vectors: plotly thins category ticks to fit.
        fig.update_yaxes(autorange="reversed", dtick=1)
        fig.update_layout(height=max(400, 160 + 22 * len(self.vectors)))
        left = len(self.prompts) - len(shown)
        if left:
            plural = "s" if left > 1 else ""
            if metric == "logprob_change":
                title += f"; {left} held-out prompt{plural} left out (no target completion)"
            else:
                title += f"; {left} prompt{plural} left out (not judged)"
        return style_figure(fig, f"{title} (strength {self.strength:g})", "prompt", "vector")

    def __repr__(self) -> str:
        n_held = sum(k == "held_out" for k in self.kinds)
        head = (
            f"GeneralizationMatrix({len(self.vectors)} vectors x {len(self.prompts)} prompts: "
            f"{len(self.prompts) - n_held} examples, {n_held} held out; strength "
            f"{self.strength:g}, {self.unit})\n"
        )
        own_values = torch.where(self.own, self.logprob_change.double(), torch.nan)
        own_mean = own_values.nanmean(dim=1).tolist()
        transfer = dict(zip(self.vectors, self.transfer().tolist(), strict=True))
        judged = None if self.judged is None else self.transfer("judged").tolist()
        header = ["vector", "own change", "transfer change"]
        if judged is not None:
            header.append("judged (others)")
        if self.side_effect_kl is not None:
            header.append("side-effect KL")
        rows = []
        for name, _ in self.ranking():
            v = self.vectors.index(name)
            row = [short(name, 24), _num(own_mean[v]), _num(transfer[name])]
            if judged is not None:
                row.append(_num(judged[v], ".2f"))
            if self.side_effect_kl is not None:
                row.append(_num(float(self.side_effect_kl[v])))
            rows.append(row)
        return head + table(header, rows)


def _num(x: float, fmt: str = "+.4f") -> str:
    return "-" if math.isnan(x) else format(x, fmt)


def _check_vectors(
    model: Any, vectors: Mapping[str, SteeringLike | Sequence[SteeringLike]], strength: float
) -> tuple[list[str], list[list[Steering]]]:
    if not isinstance(vectors, Mapping):
        raise SpecError(
            f"vectors must be a mapping name -> SteeringVector (or Steering plan), got "
            f"{type(vectors).__name__}; e.g. {{'example 0': vector}}."
        )
    if not vectors:
        raise SpecError("vectors is empty; pass at least one name -> SteeringVector.")
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real):
        raise SpecError(f"strength must be a number, got {strength!r}.")
    if not math.isfinite(strength):
        raise SpecError(f"strength must be finite, got {strength}.")
    names, plans = [], []
    for name, value in vectors.items():
        if not isinstance(name, str):
            raise SpecError(f"vector names must be strings, got {name!r}; use str(name).")
        scaled = [plan.scaled(float(strength)) for plan in as_plans(value)]
        for plan in scaled:
            plan.applied(model)  # wrong model / layer / size: refused before any work
        names.append(name)
        plans.append(scaled)
    return names, plans


def _trained_prompts(plans: Sequence[Steering]) -> set[str]:
    """The prompts of the datapoints recorded in the plans' vectors' provenance."""
    out = set()
    for plan in plans:
        if isinstance(plan.what, SteeringVector):
            for dp in plan.what.provenance.get("datapoints", None) or []:
                if isinstance(dp, Mapping) and isinstance(dp.get("prompt"), str):
                    out.add(dp["prompt"])
    return out


def _own_prompts(
    names: Sequence[str],
    plans: Sequence[Sequence[Steering]],
    trained_on: Mapping[str, str | Sequence[str]] | None,
) -> list[set[str]]:
    if trained_on is None:
        return [_trained_prompts(p) for p in plans]
    if not isinstance(trained_on, Mapping):
        raise SpecError(
            f"trained_on must map vector names to their training prompt(s), got "
            f"{type(trained_on).__name__}."
        )
    unknown = sorted(set(trained_on) - set(names))
    if unknown:
        raise SpecError(
            f"trained_on names {unknown} that are not in vectors ({list(names)}); use the same "
            "names as vectors=."
        )
    own = []
    for name, p in zip(names, plans, strict=True):
        given = trained_on.get(name)
        if given is None:
            own.append(_trained_prompts(p))
        else:
            own.append({given} if isinstance(given, str) else set(given))
    return own


def _held_out(held_out: Sequence[str | Datapoint] | None) -> list[str | Datapoint]:
    if held_out is None:
        return []
    if isinstance(held_out, (str, Datapoint)):
        return [held_out]
    items = list(held_out)
    for i, item in enumerate(items):
        if isinstance(item, str):
            if not item.strip():
                raise InputError(f"held_out[{i}] is an empty prompt; give the prompt text.")
        elif not isinstance(item, Datapoint):
            raise InputError(
                f"held_out[{i}] is a {type(item).__name__}; pass prompt strings or "
                "steerlens.Datapoint (with promote completions, to measure log-probs too)."
            )
    return items


def generalization_matrix(
    model: Any,
    vectors: Mapping[str, SteeringLike | Sequence[SteeringLike]],
    examples: Sequence[Datapoint],
    *,
    held_out: Sequence[str | Datapoint] | None = None,
    judge: Judge | None = None,
    neutral_prompts: Sequence[str] | None = None,
    trained_on: Mapping[str, str | Sequence[str]] | None = None,
    strength: float = 1.0,
    max_new_tokens: int = 48,
    batch_size: int = 16,
    progress: bool | None = None,
) -> GeneralizationMatrix:
    """Apply every vector to every example's prompt (and held-out prompts) and measure the
    target log-prob change, the judged behavior and the side effects.

    Each example's prompt is formatted by its ``chat`` (`steerlens.Datapoint`); held-out
    prompt strings are used as written (format them with `steerlens.runtime.chat_prompt`).

    Args:
        model: a TransformerLens model.
        vectors: name -> ``SteeringVector`` or `steerlens.Steering` plan (or a list of these),
            e.g. one vector trained on each example.
        examples: datapoints with promote completions; each prompt's target log-prob change
            is measured under every vector.
        held_out: more prompts: strings (judged only) or datapoints (judged and scored).
        judge: ``text -> bool`` (e.g. `steerlens.evaluation.StringMatchJudge`): greedy
            steered replies to every example and held-out prompt are judged.
        neutral_prompts: prompts where the behavior should not change, for the side-effect KL.
        trained_on: name -> the prompt(s) that vector was trained on; by default read from
            the vector's provenance (``provenance["datapoints"][*]["prompt"]``).
        strength: the multiplier of every vector (a plan's own strength times this).
        max_new_tokens: the longest reply to judge.
        batch_size: rows (each a vector x prompt) per forward pass.
        progress: progress bars (default: in a terminal or a notebook).

    Returns:
        A `GeneralizationMatrix`: ``.rows`` (the tidy table), ``.ranking()``, ``.plot()``.

    Example:
        >>> import torch
        >>> from steerlens import Datapoint, SteeringVector
        >>> from steerlens.testing import tiny_model
        >>> model = tiny_model()
        >>> examples = [Datapoint("the cat", promote=" sat", chat=False),
        ...             Datapoint("a dog", promote=" ran", chat=False)]
        >>> vectors = {
        ...     name: SteeringVector.from_tensor(torch.randn(64), layer=1, model=model)
        ...     for name in ("cat", "dog")
        ... }
        >>> m = generalization_matrix(model, vectors, examples,
        ...                           trained_on={"cat": "the cat", "dog": "a dog"})
        >>> len(m.rows), m.rows[0].own, m.rows[1].own
        (4, True, False)
        >>> sorted(name for name, _ in m.ranking())
        ['cat', 'dog']
    """
    names, plans = _check_vectors(model, vectors, strength)
    items = [dp.for_model(model) for dp in check_examples(examples)]
    extra = _held_out(held_out)
    runtime.check_batch_size(batch_size)
    if judge is not None and not callable(judge):
        raise SpecError(
            f"judge must be a callable text -> bool, got {type(judge).__name__}; e.g. "
            "steerlens.evaluation.StringMatchJudge([...])."
        )
    if judge is None and any(isinstance(h, str) for h in extra):
        raise SpecError(
            "held-out prompt strings are only judged, but no judge was given; pass judge= "
            "(or held-out Datapoints with promote completions, to compare log-probs)."
        )
    prompts = [dp.prompt for dp in items] + [h if isinstance(h, str) else h.prompt for h in extra]
    example: Kind = "example"
    held: Kind = "held_out"
    kinds = [example] * len(items) + [held] * len(extra)
    own_sets = _own_prompts(names, plans, trained_on)
    own = torch.tensor([[p in s for p in prompts] for s in own_sets], dtype=torch.bool)

    # Target log-probs of every prompt with promote completions.
    scored = [(p, dp) for p, dp in enumerate([*items, *extra]) if isinstance(dp, Datapoint)]
    scored = [(p, dp) for p, dp in scored if dp.promote]
    changes = torch.full((len(names), len(prompts)), torch.nan, dtype=torch.float64)
    unsteered = torch.full((len(prompts),), torch.nan, dtype=torch.float64)
    if scored:
        scores = target_logprobs(
            model, plans, [dp for _, dp in scored], batch_size=batch_size, progress=progress
        )
        columns = torch.tensor([p for p, _ in scored])
        changes[:, columns] = scores.changes
        unsteered[columns] = scores.unsteered

    judged = baseline_judged = None
    replies = baseline_replies = None
    if judge is not None:
        texts = generate_each(
            model,
            prompts,
            [*plans, None],
            chat=False,  # every prompt is as the model sees it by now
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            progress=progress,
        )
        verdicts = judge_texts(
            judge, [t for row in texts for t in row], where="of the generalization matrix"
        )
        grid = torch.tensor(verdicts, dtype=torch.bool).reshape(len(texts), len(prompts))
        judged, baseline_judged = grid[:-1], grid[-1]
        replies = tuple(tuple(row) for row in texts[:-1])
        baseline_replies = tuple(texts[-1])

    kl = None
    if neutral_prompts is not None:
        neutral = runtime.check_prompts(neutral_prompts)
        kl = next_token_kl(model, neutral, plans, batch_size=batch_size).double().mean(dim=1)
    return GeneralizationMatrix(
        vectors=tuple(names),
        prompts=tuple(prompts),
        kinds=tuple(kinds),
        own=own,
        logprob_change=changes,
        unsteered_logprob=unsteered,
        judged=judged,
        replies=replies,
        baseline_judged=baseline_judged,
        baseline_replies=baseline_replies,
        side_effect_kl=kl,
        strength=float(strength),
    )


__all__ = [
    "GeneralizationMatrix",
    "MatrixRow",
    "TargetLogprobs",
    "check_examples",
    "generalization_matrix",
    "target_logprobs",
]
