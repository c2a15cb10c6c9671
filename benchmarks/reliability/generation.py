"""Cases: generation (generate()'s prompts, lengths, sampling and seeds)."""

# mypy: ignore-errors
# (the cases pass wrong types on purpose)

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

import steerlens

from .helpers import without_chat_template
from .runner import Ctx, cases

# Prompts that are not a str or a list of str, and what the error must name.
BAD_PROMPTS = [
    (None, "NoneType"),
    (b"the cat", "bytes"),
    ({"a": "b"}, "dict"),
    (5, "int"),
    ([b"x"], "bytes"),
    ([1, 2], "int"),
]

# A keyword, the prompts to try it on and its bad values; the error must name the keyword.
BAD_KEYWORDS = [
    ("max_new_tokens", "the cat", (-1, 2.5, "3", None)),
    ("temperature", "the cat", (float("nan"), float("inf"), -0.5, "hot")),
    ("batch_size", ["a", "b"], (0, -1, 1.5, True)),
]

# Seeded sampling: the same texts whatever the batch.
PROMPTS = ["hi", "yo", "the cat"]
SAMPLING: dict[str, Any] = {"temperature": 1.0, "seed": 3, "max_new_tokens": 6}


def _gen(prompts: Any = "the cat", **kw: Any) -> Callable[[Ctx], Any]:
    """`steerlens.generate` on the tiny model (two new tokens unless ``kw`` says)."""
    kw.setdefault("max_new_tokens", 2)
    return lambda c: steerlens.generate(c.tiny, prompts, **kw)


def _batch_sizes(ctx: Ctx) -> Any:
    return [steerlens.generate(ctx.tiny, PROMPTS, batch_size=b, **SAMPLING) for b in (1, 2, 3)]


def _mates(ctx: Ctx) -> Any:
    a = steerlens.generate(ctx.tiny, PROMPTS, **SAMPLING)
    b = steerlens.generate(
        ctx.tiny, ["hi", "a much longer prompt than the others", "the cat"], **SAMPLING
    )
    return a, b


def _repeat(ctx: Ctx) -> Any:
    return [steerlens.generate(ctx.tiny, PROMPTS, **SAMPLING) for _ in range(2)]


def _global_rng(ctx: Ctx) -> Any:
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    steerlens.generate(ctx.tiny, "hi", temperature=1.0, max_new_tokens=3)
    return torch.equal(torch.rand(3), expected)


def _is_str(out: Any) -> bool:
    return isinstance(out, str)


# (name, run, ok: None where only an error is right, what the error must name[, flags])
CASES = cases(
    "generation",
    [
        *[(f"prompts={bad!r}", _gen(bad), None, mention) for bad, mention in BAD_PROMPTS],
        ("prompts=[]", _gen([]), lambda out: out == [], "empty"),
        ("prompt ''", _gen(""), _is_str, "empty"),
        ("max_new_tokens=0", _gen(max_new_tokens=0), lambda out: out == "", "max_new_tokens"),
        *[
            (f"{key}={bad!r}", _gen(prompts, **{key: bad}), None, key)
            for key, prompts, values in BAD_KEYWORDS
            for bad in values
        ],
        ("seed=1.5", _gen(temperature=1.0, seed=1.5), None, "seed"),
        ("seed='x'", _gen(temperature=1.0, seed="x"), None, "seed"),
        ("a prompt longer than the context", _gen("a " * 300), None, "context"),
        (
            "a prompt that leaves less room than max_new_tokens",
            _gen("a " * 250, max_new_tokens=50),
            _is_str,
            "context",
        ),
        ("system=123 with chat", _gen(chat=True, system=123), None, "system"),
        (
            "a prompt already chat-formatted, with chat=True",
            lambda c: steerlens.generate(
                c.tiny, steerlens.runtime.chat_prompt(c.tiny, "hi"), chat=True, max_new_tokens=2
            ),
            None,
            "chat template",
        ),
        (
            "chat=True on a model without a chat template",
            lambda c: without_chat_template(c, _gen(chat=True)),
            None,
            "chat template",
        ),
        ("seeded sampling independent of batch_size", _batch_sizes, lambda r: r[0] == r[1] == r[2]),
        (
            "seeded sampling independent of batch mates",
            _mates,
            lambda r: r[0][0] == r[1][0] and r[0][2] == r[1][2],
        ),
        ("seeded sampling repeats", _repeat, lambda r: r[0] == r[1]),
        ("unseeded sampling leaves the global RNG alone", _global_rng, lambda same: same is True),
        (
            "unknown keyword max_tokens=",
            _gen(max_tokens=3),
            None,
            "max_tokens",
            {"python_ok": (TypeError,)},
        ),
    ],
)
