"""Which token positions a steering intervention touches.

A `Positions` resolves to a boolean mask over the tokens of one forward call, given the
runtime's `TokenContext`: where each row's prompt starts and ends
(left padding moves the start), and how many tokens a KV cache already holds (``offset``).
Tokens past the prompt's end are "generated", never "prompt".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from jaxtyping import Bool
from torch import Tensor

from steerlens.errors import SpecError
from steerlens.runtime.context import TokenContext

PositionKind = Literal["all", "prompt", "generated", "opening", "last", "indices", "slice"]


@dataclass(frozen=True)
class Positions:
    """A position specification. Build one with the class methods or `as_positions`.

    Example:
        >>> ctx = TokenContext.whole_input(1, 5, torch.device("cpu"))
        >>> Positions.last(2).mask(ctx, 5).int().tolist()
        [[0, 0, 0, 1, 1]]
    """

    kind: PositionKind = "all"
    n: int = 0
    indices: tuple[int, ...] = ()
    start: int | None = None
    stop: int | None = None

    def __post_init__(self) -> None:
        # mask() treats any kind it does not know as an (empty) index list: steering nothing.
        kinds = get_args(PositionKind)
        if self.kind not in kinds:
            raise SpecError(
                f"unknown positions kind {self.kind!r}; use one of {', '.join(kinds)} (or build "
                "one with Positions.last(n), Positions.at([...]), Positions.prompt(), ...)."
            )

    @classmethod
    def all(cls) -> Positions:
        return cls("all")

    @classmethod
    def prompt(cls) -> Positions:
        return cls("prompt")

    @classmethod
    def generated(cls) -> Positions:
        return cls("generated")

    @classmethod
    def opening(cls, n: int) -> Positions:
        """The prompt and the first ``n`` generated tokens: steer how a reply opens, then let
        the model go on unsteered (a vector left on for the whole reply tends to repeat its
        behaviour in a loop)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise SpecError(f"Positions.opening(n) needs an int n >= 1, got {n!r}.")
        return cls("opening", n=n)

    @classmethod
    def last(cls, n: int) -> Positions:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise SpecError(f"Positions.last(n) needs an int n >= 1, got {n!r}.")
        return cls("last", n=n)

    @classmethod
    def at(cls, where: slice | Sequence[int]) -> Positions:
        """Prompt positions by index (relative to the prompt's first token; negative from
        its end), as a slice or a list of ints."""
        if isinstance(where, slice):
            if where.step not in (None, 1):
                raise SpecError(f"position slices must have step 1, got {where!r}.")
            return cls("slice", start=where.start, stop=where.stop)
        idx = tuple(where)
        if not idx or not all(isinstance(i, int) and not isinstance(i, bool) for i in idx):
            raise SpecError(f"position indices must be a non-empty list of ints, got {where!r}.")
        return cls("indices", indices=idx)

    def mask(self, ctx: TokenContext, seq_len: int) -> Bool[Tensor, "batch pos"] | None:
        """The positions of the current chunk to steer; ``None`` means all of them."""
        if self.kind == "all":
            return None
        device = ctx.prompt_end.device
        pos = torch.arange(ctx.offset, ctx.offset + seq_len, device=device)[None, :]
        start, end = ctx.prompt_start[:, None], ctx.prompt_end[:, None]
        in_prompt = (pos >= start) & (pos < end)
        if self.kind == "prompt":
            return in_prompt
        if self.kind == "generated":
            return pos >= end
        if self.kind == "opening":
            return (pos >= start) & (pos < end + self.n)
        if self.kind == "last":
            return in_prompt & (pos >= end - self.n)
        length = end - start
        rel = pos - start
        if self.kind == "slice":
            lo = _resolve_bound(self.start, length, default=torch.zeros_like(length))
            hi = _resolve_bound(self.stop, length, default=length)
            return in_prompt & (rel >= lo) & (rel < hi)
        chosen = torch.zeros_like(in_prompt)
        for i in self.indices:
            target = length + i if i < 0 else torch.full_like(length, i)
            chosen |= rel == target
        return in_prompt & chosen

    def describe(self) -> str:
        if self.kind == "last":
            return f"last {self.n} prompt tokens"
        if self.kind == "opening":
            return f"prompt and first {self.n} generated tokens"
        if self.kind == "indices":
            return f"prompt indices {list(self.indices)}"
        if self.kind == "slice":
            return f"prompt slice [{self.start}:{self.stop}]"
        return {"all": "all tokens", "prompt": "prompt tokens", "generated": "generated tokens"}[
            self.kind
        ]

    def to_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "n": self.n,
            "indices": list(self.indices),
            "start": self.start,
            "stop": self.stop,
        }

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> Positions:
        return cls(
            kind=d["kind"],  # type: ignore[arg-type]
            n=int(d.get("n", 0)),  # type: ignore[call-overload]
            indices=tuple(d.get("indices", ())),  # type: ignore[arg-type]
            start=d.get("start"),  # type: ignore[arg-type]
            stop=d.get("stop"),  # type: ignore[arg-type]
        )


def _resolve_bound(bound: int | None, length: Tensor, *, default: Tensor) -> Tensor:
    if bound is None:
        return default
    return length + bound if bound < 0 else torch.full_like(length, bound)


PositionsLike = Positions | str | slice | Sequence[int] | None

_NAMED = {"all": Positions.all, "prompt": Positions.prompt, "generated": Positions.generated}


def as_positions(spec: PositionsLike) -> Positions:
    """Read a position spec: ``None``/``"all"``, ``"prompt"``, ``"generated"``,
    ``"last:N"``, ``"opening:N"``, a ``slice``, a list of ints, or a `Positions`.

    Example:
        >>> as_positions("last:3")
        Positions(kind='last', n=3, indices=(), start=None, stop=None)
    """
    if spec is None:
        return Positions.all()
    if isinstance(spec, Positions):
        return spec
    if isinstance(spec, str):
        if spec in _NAMED:
            return _NAMED[spec]()
        if spec.startswith("last:") and spec[5:].isdigit():
            return Positions.last(int(spec[5:]))
        if spec.startswith("opening:") and spec[8:].isdigit():
            return Positions.opening(int(spec[8:]))
        raise SpecError(
            f"unknown position spec {spec!r}; use 'all', 'prompt', 'generated', 'last:N', "
            "'opening:N', a slice, a list of ints, or a steerlens.Positions."
        )
    if isinstance(spec, slice):
        return Positions.at(spec)
    if isinstance(spec, (Sequence, range)):
        return Positions.at(list(spec))  # type: ignore[arg-type]  # str was handled above
    raise SpecError(
        f"unknown position spec {spec!r} ({type(spec).__name__}); use 'all', 'prompt', "
        "'generated', 'last:N', a slice, a list of ints, or a steerlens.Positions."
    )
