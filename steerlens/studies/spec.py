"""A study as data: `StudySpec` (a frozen dataclass and a TOML file) and its `Unit`\\ s.

A study trains one vector per unit, and the units are every combination of
examples x layers x seeds x objectives. Each unit gets a deterministic name, e.g.
``ex0-L1-s0-promotion`` (``<example name>-L<layer>-s<seed>-<objective>``), which names its
vector file and its row in the study folder.

The spec names its model (``"tiny"``, ``"embedded"`` or ``"hub:<name>"``, see
`load_study_model`) rather than holding one, so any process (a Ray worker) can rebuild it.

A spec file::

    name = "french"
    model = "tiny"
    layers = [0, 1]
    seeds = [0]
    objectives = ["promotion"]

    [optimizer]
    lr = 0.1
    max_steps = 3

    [[examples]]
    prompt = "What is your favorite food?"
    promote = ["Ma nourriture préférée est la pizza."]
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from steerlens.errors import InputError, LayerError, SpecError, check_keywords
from steerlens.training.config import OptimizeConfig
from steerlens.training.data import Datapoint
from steerlens.training.settings import OptimizerSettings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

MODEL_NAMES = ("tiny", "embedded", "hub:<name>")
"""The model names a spec may use (see `load_study_model`)."""


def load_study_model(name: str, *, device: Any = None) -> Any:
    """Build the model a spec names.

    ``"tiny"`` is `steerlens.testing.tiny_model` (tests), ``"embedded"`` is
    `steerlens.load_model`'s SmolLM2-135M-Instruct, and ``"hub:<name>"`` is
    ``load_model("<name>")`` (a TransformerLens hub name or a local folder).

    Example:
        >>> load_study_model("tiny").cfg.n_layers
        2
    """
    check_model_name(name)
    if name == "tiny":
        from steerlens.testing import tiny_model

        return tiny_model(device=device)
    from steerlens.loading.model import load_model

    if name == "embedded":
        return load_model(device=device)
    return load_model(name.removeprefix("hub:"), device=device)


def check_model_name(name: Any) -> str:
    """Refuse a study model name that is not ``"tiny"``, ``"embedded"`` or ``"hub:<name>"``.

    Example:
        >>> check_model_name("hub:gpt2")
        'hub:gpt2'
    """
    ok = isinstance(name, str) and (
        name in ("tiny", "embedded") or (name.startswith("hub:") and name[4:].strip() != "")
    )
    if not ok:
        raise SpecError(
            f"unknown study model {name!r}; use 'embedded' (SmolLM2-135M-Instruct), 'tiny' "
            "(the random test model) or 'hub:<name>' (e.g. 'hub:gpt2')."
        )
    return name


# -- objectives: which completions of an example a unit trains on ----------------------------


def _promotion(prompt: str, example: Example) -> Datapoint:
    return Datapoint(prompt, promote=example.promote, chat=False)


def _suppression(prompt: str, example: Example) -> Datapoint:
    return Datapoint(prompt, suppress=example.suppress, chat=False)


def _mixed(prompt: str, example: Example) -> Datapoint:
    return Datapoint(prompt, promote=example.promote, suppress=example.suppress, chat=False)


OBJECTIVES: Mapping[str, tuple[Callable[[str, Example], Datapoint], tuple[str, ...]]] = {
    "promotion": (_promotion, ("promote",)),
    "suppression": (_suppression, ("suppress",)),
    "mixed": (_mixed, ("promote", "suppress")),
}
"""Objective name -> (datapoint builder, the completion lists it needs)."""


# -- checks ---------------------------------------------------------------------------------


def _texts(value: Any, what: str, *, allow_empty: bool = True) -> tuple[str, ...]:
    items = (value,) if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(t, str) and t for t in items):
        raise InputError(
            f"{what} must be a list of non-empty strings, got {value!r:.80}; write e.g. "
            f'{what.split(" ")[-1]} = ["some text"].'
        )
    if not items and not allow_empty:
        raise InputError(f"{what} is empty; give at least one string.")
    return tuple(items)


def _ints(value: Any, what: str) -> tuple[int, ...]:
    items = (value,) if isinstance(value, numbers.Integral) else value
    if not isinstance(items, (list, tuple)) or not all(
        isinstance(i, numbers.Integral) and not isinstance(i, bool) and int(i) >= 0 for i in items
    ):
        raise SpecError(f"{what} must be a list of ints >= 0, got {value!r:.80}.")
    if not items:
        raise SpecError(f"{what} is empty; give at least one, e.g. {what} = [0].")
    return tuple(int(i) for i in items)


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise SpecError(f"{what} must be a number, got {value!r}.")
    return float(value)


# -- the parts of a spec --------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Example:
    """One training example: a prompt and its completions to promote and/or suppress.

    ``name`` (optional) replaces ``ex<index>`` in unit names; letters, digits, ``_ . -``.

    Example:
        >>> Example(prompt="Hi", promote=["Bonjour"]).promote
        ('Bonjour',)
    """

    prompt: str
    promote: tuple[str, ...] = ()
    suppress: tuple[str, ...] = ()
    name: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise InputError(
                f"an example's prompt must be non-empty text, got {self.prompt!r:.60}; give the "
                "prompt (a user message when chat = true)."
            )
        object.__setattr__(self, "promote", _texts(self.promote, "an example's promote"))
        object.__setattr__(self, "suppress", _texts(self.suppress, "an example's suppress"))
        if not self.promote and not self.suppress:
            raise InputError(
                f"the example with prompt {self.prompt[:40]!r} has no promote and no suppress "
                "completions; add promote = [...] and/or suppress = [...]."
            )
        if self.name is not None and (not isinstance(self.name, str) or not _NAME.match(self.name)):
            raise SpecError(
                f"example name {self.name!r} is not usable in file names; use letters, digits, "
                "'_', '.' and '-' (starting with a letter or digit), or leave it out."
            )


JUDGE_TYPES = ("string_match",)


@dataclass(frozen=True, kw_only=True)
class JudgeSpec:
    """A judge, as data: ``type = "string_match"`` with ``any_of`` phrases (a
    `steerlens.evaluation.judges.StringMatchJudge`).

    Example:
        >>> JudgeSpec(any_of=["la", "le"]).build()("c'est la vie")
        True
    """

    type: str = "string_match"
    any_of: tuple[str, ...] = ()
    case_insensitive: bool = True

    def __post_init__(self) -> None:
        if self.type not in JUDGE_TYPES:
            raise SpecError(
                f"unknown judge type {self.type!r}; the judge types are: {', '.join(JUDGE_TYPES)}."
            )
        phrases = _texts(self.any_of, "judge.any_of", allow_empty=False)
        object.__setattr__(self, "any_of", phrases)
        if not isinstance(self.case_insensitive, bool):
            raise SpecError(
                f"judge.case_insensitive must be true or false, got {self.case_insensitive!r}."
            )

    def build(self) -> Callable[[str], bool]:
        """The judge: a callable ``text -> bool``."""
        from steerlens.evaluation.judges import StringMatchJudge

        return StringMatchJudge(self.any_of, case_insensitive=self.case_insensitive)


def _strengths(value: Any, what: str) -> tuple[float, ...]:
    items = (value,) if isinstance(value, numbers.Real) else value
    if not isinstance(items, (list, tuple)):
        raise SpecError(f"{what} must be a list of numbers, got {value!r:.80}; e.g. [-1, 0, 1, 2].")
    out = tuple(_number(s, what) for s in items)
    bad = [s for s in out if not math.isfinite(s)]
    if bad:
        raise SpecError(f"{what} must be finite numbers, got {bad[0]} in {list(out)}; drop it.")
    return out


def _max_new_tokens(n: Any, what: str) -> None:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise SpecError(f"{what} must be an int >= 1, got {n!r}.")


@dataclass(frozen=True, kw_only=True)
class GridSettings:
    """The layer x strength grid of a study (``[evaluation.grid]``): at each of the spec's
    layers, that layer's best-transferring vector is applied at every strength to the held-out
    prompts (`steerlens.studies.grid.layer_strength_grid`).

    Attributes:
        strengths: the strengths (multipliers of the vector as trained; 0 is unsteered).
        max_new_tokens: tokens generated per prompt (default: ``evaluation.max_new_tokens``).

    Example:
        >>> GridSettings(strengths=[0, 2, 4]).strengths
        (0.0, 2.0, 4.0)
    """

    strengths: tuple[float, ...]
    max_new_tokens: int | None = None

    def __post_init__(self) -> None:
        strengths = _strengths(self.strengths, "evaluation.grid.strengths")
        if not strengths:
            raise SpecError(
                "evaluation.grid.strengths is empty; give e.g. strengths = [0, 2, 4, 8], or "
                "remove [evaluation.grid]."
            )
        object.__setattr__(self, "strengths", strengths)
        if self.max_new_tokens is not None:
            _max_new_tokens(self.max_new_tokens, "evaluation.grid.max_new_tokens")


DEFAULT_STEERABILITY_STRENGTHS = (-1.0, 0.0, 1.0, 2.0)
"""The multipliers of each vector the steerability phase measures by default."""


@dataclass(frozen=True, kw_only=True)
class EvaluationSettings:
    """What the evaluation phases measure each vector on.

    Attributes:
        prompts: held-out prompts (user messages when the spec's ``chat`` is true).
        neutral_prompts: prompts on which the vector should change nothing.
        judge: decides whether a steered text shows the behavior.
        max_new_tokens: tokens generated per prompt.
        strength: the strength the vectors are applied at.
        steerability_strengths: the multipliers of each vector (as trained) at which the
            steerability phase measures the target log-prob change on every example prompt
            with promote completions (`steerlens.studies.steerability.steerability`); empty
            skips the phase, otherwise at least two different values.
        grid: the layer x strength grid (`GridSettings`), or ``None`` to skip it.

    Example:
        >>> EvaluationSettings(steerability_strengths=[]).steerability_strengths
        ()
    """

    prompts: tuple[str, ...] = ()
    neutral_prompts: tuple[str, ...] = ()
    judge: JudgeSpec | None = None
    max_new_tokens: int = 32
    strength: float = 1.0
    steerability_strengths: tuple[float, ...] = DEFAULT_STEERABILITY_STRENGTHS
    grid: GridSettings | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompts", _texts(self.prompts, "evaluation.prompts"))
        object.__setattr__(
            self, "neutral_prompts", _texts(self.neutral_prompts, "evaluation.neutral_prompts")
        )
        if self.judge is not None and not isinstance(self.judge, JudgeSpec):
            raise SpecError(f"evaluation.judge must be a JudgeSpec, got {self.judge!r:.60}.")
        _max_new_tokens(self.max_new_tokens, "evaluation.max_new_tokens")
        strength = _number(self.strength, "evaluation.strength")
        if not math.isfinite(strength):
            raise SpecError(f"evaluation.strength must be finite, got {strength}.")
        object.__setattr__(self, "strength", strength)
        what = "evaluation.steerability_strengths"
        multipliers = _strengths(self.steerability_strengths, what)
        if len(multipliers) == 1 or len(set(multipliers)) < len(multipliers):
            raise SpecError(
                f"{what} = {list(multipliers)} needs at least two different multipliers, none "
                f"repeated, to fit a slope; e.g. {what} = [-1, 0, 1, 2], or [] to skip the "
                "steerability phase."
            )
        object.__setattr__(self, "steerability_strengths", multipliers)
        if self.grid is not None and not isinstance(self.grid, GridSettings):
            raise SpecError(f"evaluation.grid must be a GridSettings, got {self.grid!r:.60}.")


@dataclass(frozen=True, kw_only=True)
class Unit:
    """One vector to train: example ``example_index`` at ``layer`` with ``seed`` and
    ``objective``; ``name`` is unique in its study."""

    name: str
    example_index: int
    example_name: str
    layer: int
    seed: int
    objective: str


# -- the spec -------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class StudySpec:
    """A study: which vectors to train (examples x layers x seeds x objectives), how, and
    how to evaluate them.

    Attributes:
        examples: the training examples (at least one).
        layers: the layers to train at.
        seeds: the seeds of the random start vectors.
        objectives: names from `OBJECTIVES`: ``"promotion"`` (promote completions only),
            ``"suppression"`` (suppress only) and ``"mixed"`` (both).
        model: ``"embedded"``, ``"tiny"`` or ``"hub:<name>"`` (see `load_study_model`).
        optimizer: the settings of every unit's optimization.
        evaluation: held-out and neutral prompts, the judge, steerability and the grid.
        chat: format the prompts as user messages with the model's chat template (default:
            when the model has one; ``False``: as written).
        name: a label for people (it is part of the spec, so changing it changes the hash).

    Example:
        >>> spec = StudySpec(examples=[Example(prompt="Hi", promote=[" there"])], layers=[0, 1],
        ...                  model="tiny", optimizer=OptimizerSettings(max_steps=3))
        >>> [u.name for u in spec.units()]
        ['ex0-L0-s0-promotion', 'ex0-L1-s0-promotion']
        >>> StudySpec.from_toml_text(spec.to_toml()) == spec
        True
    """

    examples: tuple[Example, ...]
    layers: tuple[int, ...]
    seeds: tuple[int, ...] = (0,)
    objectives: tuple[str, ...] = ("promotion",)
    model: str = "embedded"
    optimizer: OptimizerSettings = field(default_factory=OptimizerSettings)
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)
    chat: bool | None = None
    name: str = "study"

    def __post_init__(self) -> None:
        if not isinstance(self.examples, (list, tuple)) or not self.examples:
            raise InputError(
                "the study has no examples; add at least one, e.g. [[examples]] with "
                'prompt = "..." and promote = ["..."] in the spec file.'
            )
        for i, ex in enumerate(self.examples):
            if not isinstance(ex, Example):
                raise SpecError(f"examples[{i}] must be an Example, got {ex!r:.60}.")
        object.__setattr__(self, "examples", tuple(self.examples))
        object.__setattr__(self, "layers", _ints(self.layers, "layers"))
        object.__setattr__(self, "seeds", _ints(self.seeds, "seeds"))
        objectives = (self.objectives,) if isinstance(self.objectives, str) else self.objectives
        if not isinstance(objectives, (list, tuple)) or not objectives:
            raise SpecError(
                f"objectives must be a non-empty list, got {self.objectives!r}; e.g. "
                'objectives = ["promotion"].'
            )
        for name in objectives:
            if name not in OBJECTIVES:
                raise SpecError(
                    f"unknown objective {name!r}; the objectives are: {', '.join(OBJECTIVES)}."
                )
        object.__setattr__(self, "objectives", tuple(objectives))
        check_model_name(self.model)
        for attr, kind in (("optimizer", OptimizerSettings), ("evaluation", EvaluationSettings)):
            if not isinstance(getattr(self, attr), kind):
                raise SpecError(
                    f"{attr} must be {kind.__name__}(...), got {getattr(self, attr)!r}."
                )
        if self.chat is not None and not isinstance(self.chat, bool):
            raise SpecError(
                f"chat must be true or false (or left out: the chat template when the model "
                f"has one), got {self.chat!r}."
            )
        if not isinstance(self.name, str):
            raise SpecError(f"name must be a string, got {self.name!r}.")
        self._check_completions()
        if self.evaluation.prompts and self.evaluation.judge is None:
            raise SpecError(
                "evaluation.prompts are held-out prompts whose steered replies are judged, but "
                'the spec has no judge; add [evaluation.judge] (type = "string_match", '
                "any_of = [...]) or remove evaluation.prompts."
            )
        if self.evaluation.grid is not None and not self.evaluation.prompts:
            raise SpecError(
                "[evaluation.grid] steers the held-out prompts, but evaluation.prompts is empty; "
                "add evaluation.prompts (and [evaluation.judge]) or remove [evaluation.grid]."
            )
        if self.evaluation.grid is not None and not self.evaluates:
            raise SpecError(
                "[evaluation.grid] uses each layer's best-transferring vector by the "
                "generalization matrix, which needs an example with promote completions; add "
                "promote = [...] to an example or remove [evaluation.grid]."
            )
        self.units()  # duplicate names are refused here

    def _check_completions(self) -> None:
        for i, ex in enumerate(self.examples):
            for objective in self.objectives:
                for needed in OBJECTIVES[objective][1]:
                    if not getattr(ex, needed):
                        raise InputError(
                            f"example {i} ({ex.prompt[:40]!r}) has no {needed} completions, but "
                            f"objective {objective!r} trains on them; add {needed} = [...] to "
                            f"the example or remove {objective!r} from objectives."
                        )

    # -- units ------------------------------------------------------------------------------
    def units(self) -> tuple[Unit, ...]:
        """Every unit, in the order examples x layers x seeds x objectives.

        Raises:
            SpecError: two units would get the same name (a repeated layer, seed, objective
                or example name).
        """
        units: list[Unit] = []
        seen: dict[str, int] = {}
        for i, ex in enumerate(self.examples):
            stem = ex.name or f"ex{i}"
            for layer in self.layers:
                for seed in self.seeds:
                    for objective in self.objectives:
                        name = f"{stem}-L{layer}-s{seed}-{objective}"
                        if name in seen:
                            raise SpecError(
                                f"two units are both named {name!r} (units {seen[name]} and "
                                f"{len(units)}); remove the repeated layer, seed or objective, "
                                "or give the examples different names."
                            )
                        seen[name] = len(units)
                        units.append(
                            Unit(
                                name=name,
                                example_index=i,
                                example_name=stem,
                                layer=layer,
                                seed=seed,
                                objective=objective,
                            )
                        )
        return tuple(units)

    def datapoint(self, model: Any, unit: Unit) -> Datapoint:
        """The `Datapoint` ``unit`` trains on (chat-formatted with ``model`` when ``chat``)."""
        example = self.examples[unit.example_index]
        return OBJECTIVES[unit.objective][0](self.prompt(model, example.prompt), example)

    @property
    def evaluates(self) -> bool:
        """Whether the study has an evaluation phase: the generalization matrix needs at least
        one example with promote completions."""
        return any(ex.promote for ex in self.examples)

    @property
    def measures_steerability(self) -> bool:
        """Whether the study has a steerability phase: ``evaluation.steerability_strengths``
        is set and some example has promote completions."""
        return self.evaluates and bool(self.evaluation.steerability_strengths)

    def steerability_examples(self, model: Any) -> list[Datapoint]:
        """The datapoints the evaluation phases score: every example with promote completions
        (chat-formatted with ``model`` when ``chat``)."""
        return [
            Datapoint(self.prompt(model, ex.prompt), promote=ex.promote, chat=False)
            for ex in self.examples
            if ex.promote
        ]

    def prompt(self, model: Any, text: str) -> str:
        """``text`` as the model sees it, by the chat rule (`steerlens.runtime.uses_chat`)."""
        from steerlens import runtime

        return runtime.format_prompts(model, [text], chat=self.chat)[0]

    def config(self, unit: Unit) -> OptimizeConfig:
        """The `OptimizeConfig` ``unit`` trains with (no progress bar: the study shows one)."""
        return self.optimizer.config(seed=unit.seed, progress=False)

    def check_layers(self, n_layers: int) -> None:
        """Refuse a layer that a model with ``n_layers`` layers lacks (before any training).

        Raises:
            LayerError: naming the layer, the model's range and the fix.
        """
        bad = [la for la in self.layers if la >= n_layers]
        if bad:
            raise LayerError(
                f"layer{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad))} in the spec's "
                f"layers {list(self.layers)} {'are' if len(bad) > 1 else 'is'} out of range: "
                f"model {self.model!r} has {n_layers} "
                f"layers (0-{n_layers - 1}); keep layers between 0 and {n_layers - 1}."
            )

    # -- data -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, dicts, strings, numbers; ``None`` where unset)."""
        return _plain(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StudySpec:
        """A spec from `to_dict`'s data (or a parsed TOML file); unknown keys are refused."""
        if not isinstance(data, Mapping):
            raise SpecError(f"a study spec must be a table of settings, got {data!r:.60}.")
        data = _drop_none(data)
        check_keywords(data, [f.name for f in fields(cls)], where="the study spec")
        kwargs = dict(data)
        if "examples" in kwargs:
            kwargs["examples"] = [
                _build(Example, ex, f"examples[{i}]")
                for i, ex in enumerate(_table_list(kwargs["examples"], "examples"))
            ]
        else:
            kwargs["examples"] = []
        if "layers" not in kwargs:
            raise SpecError("the study spec has no layers; add e.g. layers = [6, 8].")
        if "optimizer" in kwargs:
            kwargs["optimizer"] = OptimizerSettings.from_dict(kwargs["optimizer"])
        if "evaluation" in kwargs:
            ev = _drop_none(_table(kwargs["evaluation"], "evaluation"))
            if "judge" in ev:
                ev["judge"] = _build(JudgeSpec, ev["judge"], "evaluation.judge")
            if "grid" in ev:
                ev["grid"] = _build(GridSettings, ev["grid"], "evaluation.grid")
            kwargs["evaluation"] = _build(EvaluationSettings, ev, "evaluation")
        return cls(**kwargs)

    @property
    def spec_hash(self) -> str:
        """SHA-256 of the canonical JSON of `to_dict` (equal specs, equal hashes)."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def to_toml(self) -> str:
        """The spec as TOML text (`from_toml_text` reads it back)."""
        return "# steerlens study spec\n" + _toml_table(_drop_none(self.to_dict()), "")

    @classmethod
    def from_toml_text(cls, text: str, *, source: str = "the spec") -> StudySpec:
        """A spec from TOML text."""
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise SpecError(f"{source} is not valid TOML ({exc}); fix the file.") from exc
        return cls.from_dict(data)

    @classmethod
    def from_toml(cls, path: str | Path) -> StudySpec:
        """Read a spec file (``~`` is expanded).

        Raises:
            InputError: no such file.
            SpecError: not TOML, or unknown or bad settings (the message names them).
        """
        target = Path(path).expanduser()
        if target.is_dir():
            raise InputError(
                f"{str(path)!r} is a folder, not a study spec file; pass the path of the .toml "
                "file (the study folder is run_study's second argument)."
            )
        if not target.is_file():
            raise InputError(
                f"no study spec file at {str(path)!r}; check the path (a .toml file, see "
                "docs/howto.md, 'Run a generalization study')."
            )
        try:
            text = target.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise SpecError(
                f"{str(path)!r} is not a TOML text file (not UTF-8: {exc.reason} at byte "
                f"{exc.start}); pass the study's .toml spec."
            ) from exc
        except OSError as exc:
            raise InputError(
                f"cannot read the study spec {str(path)!r}: {exc.strerror or exc}; check its "
                "permissions."
            ) from exc
        return cls.from_toml_text(text, source=repr(str(path)))

    def save_toml(self, path: str | Path) -> Path:
        """Write `to_toml` to ``path`` atomically; returns the path."""
        from steerlens.io.atomic import atomic_path

        with atomic_path(path, example_name="study.toml") as tmp:
            tmp.write_text(self.to_toml(), encoding="utf-8")
        return Path(path).expanduser()


# -- plain data and TOML --------------------------------------------------------------------


# Settings added after studies were first written are left out of the plain data (and so of
# the hash) while at their defaults, so folders of earlier specs keep matching them.
_LATER_DEFAULTS: Mapping[str, Any] = {
    "steerability_strengths": DEFAULT_STEERABILITY_STRENGTHS,
    "grid": None,
}


def _plain(x: Any) -> Any:
    if isinstance(x, EvaluationSettings):
        return {
            f.name: _plain(getattr(x, f.name))
            for f in fields(x)
            if f.name not in _LATER_DEFAULTS or getattr(x, f.name) != _LATER_DEFAULTS[f.name]
        }
    if isinstance(x, (Example, OptimizerSettings, JudgeSpec, GridSettings, StudySpec)):
        return {f.name: _plain(getattr(x, f.name)) for f in fields(x)}
    if isinstance(x, (list, tuple)):
        return [_plain(i) for i in x]
    return x


def _drop_none(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not None}


def _table(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise SpecError(f"{what} must be a table ([{what}] in the spec file), got {value!r:.60}.")
    return value


def _table_list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, (list, tuple)):
        raise SpecError(
            f"{what} must be a list of tables ([[{what}]] in the spec file), got {value!r:.60}."
        )
    return list(value)


def _build(cls: Any, value: Any, what: str) -> Any:
    data = _drop_none(_table(value, what))
    check_keywords(data, [f.name for f in fields(cls)], where=what)
    return cls(**data)


def _toml_string(text: str) -> str:
    # JSON's escapes are valid TOML basic-string escapes; TOML also wants DEL escaped.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        v = float(value)
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise SpecError(f"cannot write {value!r} to TOML.")  # pragma: no cover


def _is_table_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _toml_table(data: Mapping[str, Any], prefix: str) -> str:
    lines: list[str] = []
    tables: list[tuple[str, Mapping[str, Any]]] = []
    arrays: list[tuple[str, Iterable[Mapping[str, Any]]]] = []
    for key, value in data.items():
        if isinstance(value, dict):
            tables.append((key, value))
        elif _is_table_list(value):
            arrays.append((key, value))
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    text = "\n".join(lines) + ("\n" if lines else "")
    for key, value in tables:
        text += f"\n[{prefix}{key}]\n" + _toml_table(_drop_none(value), f"{prefix}{key}.")
    for key, items in arrays:
        for item in items:
            text += f"\n[[{prefix}{key}]]\n" + _toml_table(_drop_none(item), f"{prefix}{key}.")
    return text


__all__ = [
    "DEFAULT_STEERABILITY_STRENGTHS",
    "JUDGE_TYPES",
    "MODEL_NAMES",
    "OBJECTIVES",
    "EvaluationSettings",
    "Example",
    "GridSettings",
    "JudgeSpec",
    "OptimizerSettings",
    "StudySpec",
    "Unit",
    "check_model_name",
    "load_study_model",
]
