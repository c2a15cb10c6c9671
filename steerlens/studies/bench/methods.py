"""The benchmark's methods: each a small named object that builds steering vectors for one
behaviour at one layer from the behaviour's training items.

Every A/B item is shown to the model in both letter orders (its choices swapped, so the
matching answer is (A) once and (B) once). A vector that only learned "answer B" helps in one
order and hurts in the other, so it cannot look like the behaviour. A new method is a new
frozen dataclass with a ``name`` and ``vectors(setup) -> {label: SteeringVector}``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from steerlens import runtime
from steerlens.baselines import collect_activations, principal_direction
from steerlens.datasets import ABItem, Behaviour
from steerlens.errors import SpecError
from steerlens.steering.ensemble import ensemble
from steerlens.steering.positions import Positions
from steerlens.steering.vector import SteeringVector
from steerlens.training.config import OptimizeConfig
from steerlens.training.data import Datapoint
from steerlens.training.loop import Job, optimize_many

LETTERS = ("A", "B")


def ab_prompt(model: Any, item: ABItem, *, swapped: bool = False, chat: bool = True) -> str:
    """The item as the model sees it: the question as a user message and the reply opened
    with ``(``, so the next token is the answer letter.

    Example:
        >>> from steerlens.datasets import ABItem
        >>> from steerlens.testing import tiny_model
        >>> item = ABItem("Pick one.", "yes", "no", "A")
        >>> ab_prompt(tiny_model(), item, chat=False)
        'Pick one.\\n\\nChoices:\\n(A) yes\\n(B) no\\n\\nAnswer: ('
    """
    text = item.prompt(swapped)
    if chat:
        return runtime.chat_prompt(model, text) + "("
    return text + "\n\nAnswer: ("


def answer_tokens(model: Any) -> tuple[int, int]:
    """The token ids of ``A`` and ``B`` after ``(``."""
    a, b = runtime.answer_token_ids(model, list(LETTERS), what="answer letter")
    return a, b


@dataclass(frozen=True)
class ABPrompts:
    """Items in both letter orders, ready to score: ``prompts[2 i + s]`` is item ``i`` with
    its choices swapped when ``s == 1``; ``matching`` / ``other`` are the answer tokens."""

    prompts: tuple[str, ...]
    matching: tuple[int, ...]
    other: tuple[int, ...]

    @classmethod
    def of(cls, model: Any, items: Sequence[ABItem], *, chat: bool = True) -> ABPrompts:
        """Both orders of every item (see `ab_prompt`)."""
        letter = dict(zip(LETTERS, answer_tokens(model), strict=True))
        prompts, matching, other = [], [], []
        for item in items:
            for swapped in (False, True):
                prompts.append(ab_prompt(model, item, swapped=swapped, chat=chat))
                m = item.matching_letter(swapped)
                matching.append(letter[m])
                other.append(letter[LETTERS[1 - LETTERS.index(m)]])
        return cls(tuple(prompts), tuple(matching), tuple(other))


def answer_positions(model: Any, *, chat: bool = True) -> Positions:
    """Steer what follows the question, as CAA does for A/B items: the template's tokens after
    the user's message and the opening ``(`` (``"last:N"`` of the prompt).

    Example:
        >>> from steerlens.testing import tiny_model
        >>> answer_positions(tiny_model()).to_dict()["kind"]
        'last'
    """
    probe = ABItem("Which one?", "yes", "no", "A")
    full = ab_prompt(model, probe, chat=chat)
    question = probe.prompt()
    head = full[: full.index(question) + len(question)]
    n = len(runtime.encode(model, full)) - len(runtime.encode(model, head))
    return Positions.last(max(1, n))


@dataclass
class Setup:
    """What a method builds from: one behaviour at one layer, and the shared one-shot vectors
    (trained once, used by every method that needs them)."""

    model: Any
    behaviour: Behaviour
    layer: int
    positions: Positions
    config: OptimizeConfig
    examples: int = 8
    seed: int = 0
    chat: bool = True
    # Layers whose contrasts are collected in the same forward passes as this one's, into
    # ``contrasts`` (``(n, layer) -> differences``): setups of one behaviour at several layers
    # pass the same dict and run the contrast prompts once.
    contrast_layers: tuple[int, ...] = ()
    contrasts: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict, repr=False)
    _trained: dict[tuple[int, ...], SteeringVector] = field(default_factory=dict, repr=False)

    @functools.cached_property
    def order(self) -> list[int]:
        """The training items in a seeded order: the first ``examples`` are the single
        examples, the rest feed the k-example, validation and contrastive methods."""
        gen = torch.Generator().manual_seed(self.seed)
        return torch.randperm(len(self.behaviour.train), generator=gen).tolist()

    def datapoints(self, item: ABItem) -> list[Datapoint]:
        """The item in both letter orders, promoting the matching letter."""
        out = []
        for swapped in (False, True):
            m = item.matching_letter(swapped)
            out.append(
                Datapoint(
                    ab_prompt(self.model, item, swapped=swapped, chat=self.chat),
                    promote=[m],
                    suppress=[LETTERS[1 - LETTERS.index(m)]],
                    positions=self.positions,
                    chat=False,  # formatted by ab_prompt
                )
            )
        return out

    def one_shot(self, groups: Sequence[Sequence[int]]) -> list[SteeringVector]:
        """One vector per group of training-item indices, all trained in one batched call
        (and each only once per setup)."""
        todo = list(dict.fromkeys(tuple(g) for g in groups if tuple(g) not in self._trained))
        if todo:
            jobs = [
                Job(
                    [dp for i in g for dp in self.datapoints(self.behaviour.train[i])],
                    self.layer,
                    self.config,
                )
                for g in todo
            ]
            for g, result in zip(todo, optimize_many(self.model, jobs), strict=True):
                self._trained[g] = result.vector
        return [self._trained[tuple(g)] for g in groups]

    def single_examples(self) -> list[SteeringVector]:
        """The ``examples`` one-shot vectors, one per single training item."""
        return self.one_shot(OneShotEach().training_groups(self))

    def contrast(self, n: int) -> torch.Tensor:
        """Paired differences of ``blocks.{layer}.hook_resid_pre`` at the answer letter,
        matching minus other, for up to ``n`` training items in both letter orders
        (``[pairs, d_model]``; collected once per ``n`` and shared by CAA and PCA, and by the
        setups at ``contrast_layers``)."""
        if (n, self.layer) not in self.contrasts:
            pos, neg = [], []
            for i in self.order[:n]:
                item = self.behaviour.train[i]
                for swapped in (False, True):
                    prompt = ab_prompt(self.model, item, swapped=swapped, chat=self.chat)
                    m = item.matching_letter(swapped)
                    pos.append(prompt + m)
                    neg.append(prompt + LETTERS[1 - LETTERS.index(m)])
            layers = sorted({self.layer, *self.contrast_layers})
            acts = collect_activations(self.model, pos + neg, layers, chat=False)
            for layer in layers:
                a = acts[layer]
                self.contrasts[(n, layer)] = (a[: len(pos)] - a[len(pos) :]).float()
        return self.contrasts[(n, self.layer)]

    def vector(self, direction: torch.Tensor, provenance: dict[str, Any]) -> SteeringVector:
        """A vector at this setup's layer, on the model's device."""
        return SteeringVector(
            {self.layer: direction.detach().to(runtime.device(self.model))},
            model_id=runtime.model_id(self.model),
            provenance=provenance,
        )

    def provenance(self) -> dict[str, Any]:
        """Where a benchmark vector came from (behaviour, layer, position rule)."""
        return {
            "benchmark_behaviour": self.behaviour.name,
            "position": "answer letter, both letter orders",
        }


class Method(Protocol):
    """A benchmark entry: named vectors for one behaviour at one layer.

    A method that trains one-shot vectors may also say which groups of training items it
    will train on (``training_groups(setup)``), so the benchmark trains every method's
    groups in one batched call before asking for vectors."""

    @property
    def name(self) -> str: ...

    def vectors(self, setup: Setup) -> dict[str, SteeringVector]: ...


def _label(name: str, i: int) -> str:
    return f"{name} #{i}"


@dataclass(frozen=True)
class OneShotEach:
    """One-shot vectors from ``setup.examples`` different single items (both letter orders
    of one item each): the spread over the choice of example."""

    name: str = "one-shot"

    def training_groups(self, setup: Setup) -> list[tuple[int, ...]]:
        return [(i,) for i in setup.order[: setup.examples]]

    def vectors(self, setup: Setup) -> dict[str, SteeringVector]:
        return {_label(self.name, i): v for i, v in enumerate(setup.single_examples())}


@dataclass(frozen=True)
class OneShotK:
    """One vector optimized on ``k`` items at once (both letter orders of each)."""

    k: int = 4
    name: str = "one-shot k=4"

    def training_groups(self, setup: Setup) -> list[tuple[int, ...]]:
        start = setup.examples
        group = tuple(setup.order[start : start + self.k])
        if len(group) < self.k:
            raise SpecError(
                f"{setup.behaviour.name!r} has {len(setup.behaviour.train)} training items; "
                f"{self.name} needs {setup.examples + self.k} (the single examples first)."
            )
        return [group]

    def vectors(self, setup: Setup) -> dict[str, SteeringVector]:
        return {self.name: setup.one_shot(self.training_groups(setup))[0]}


@dataclass(frozen=True)
class EnsembleOfOneShot:
    """The normalised mean of the single-example vectors (`steerlens.steering.ensemble`)."""

    name: str = "ensemble"

    def training_groups(self, setup: Setup) -> list[tuple[int, ...]]:
        return OneShotEach().training_groups(setup)

    def vectors(self, setup: Setup) -> dict[str, SteeringVector]:
        return {self.name: ensemble(setup.single_examples())}


@dataclass(frozen=True)
class CAA:
    """Difference of means (Rimsky et al. 2024) at the answer letter, over ``n`` training
    items in both letter orders: activations after the matching letter minus after the
    other letter."""

    n: int = 60
    name: str = "CAA"

    def vectors(self, setup: Setup) -> dict[str, SteeringVector]:
        diffs = setup.contrast(self.n)
        provenance = {"method": "diff_of_means", "n_pairs": len(diffs), **setup.provenance()}
        return {self.name: setup.vector(diffs.mean(dim=0), provenance)}


@dataclass(frozen=True)
class PCA:
    """First principal component of the same paired differences as CAA (RepE style), scaled
    by their mean projection on it (`steerlens.baselines.principal_direction`)."""

    n: int = 60
    name: str = "PCA"

    def vectors(self, setup: Setup) -> dict[str, SteeringVector]:
        diffs = setup.contrast(self.n)
        u = principal_direction(diffs)
        provenance = {"method": "pca_of_differences", "n_pairs": len(diffs), **setup.provenance()}
        return {self.name: setup.vector(u * (diffs @ u).mean(), provenance)}


@dataclass(frozen=True)
class RandomDirection:
    """A seeded Gaussian direction: the floor every method should beat."""

    name: str = "random"

    def vectors(self, setup: Setup) -> dict[str, SteeringVector]:
        gen = torch.Generator().manual_seed(10_000 + setup.seed + setup.layer)
        v = torch.randn(runtime.d_model(setup.model), generator=gen)
        vector = SteeringVector.from_tensor(v, layer=setup.layer, model=setup.model)
        return {self.name: vector}


def default_methods() -> tuple[Method, ...]:
    """One-shot from each of E single items, from k = 4 items, their ensemble, CAA, PCA and a
    random direction (best-of-E is chosen from the single-item vectors by the benchmark).

    Example:
        >>> [m.name for m in default_methods()]
        ['one-shot', 'one-shot k=4', 'ensemble', 'CAA', 'PCA', 'random']
    """
    return (OneShotEach(), OneShotK(), EnsembleOfOneShot(), CAA(), PCA(), RandomDirection())


__all__ = [
    "CAA",
    "PCA",
    "ABPrompts",
    "EnsembleOfOneShot",
    "Method",
    "OneShotEach",
    "OneShotK",
    "RandomDirection",
    "Setup",
    "ab_prompt",
    "answer_positions",
    "default_methods",
]
