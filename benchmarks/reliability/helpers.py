"""What several areas' cases share: judges of a result, small builders and fault injection."""

# mypy: ignore-errors
# (the cases pass wrong types on purpose)

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from steerlens import Datapoint, SteeringVector, optimize_vector
from steerlens.training.kinds import ClampSteering

from .runner import Ctx

# A small study: two layers of the tiny model, two steps, one example.
SPEC = """\
layers = [0, 1]
model = "tiny"
[optimizer]
max_steps = 2
[[examples]]
prompt = "Hi"
promote = [" there"]
"""


# --- judges --------------------------------------------------------------------------------------


def is_vector(v: Any, layers: list[int] | None = None) -> bool:
    """A `SteeringVector` with finite directions and norm (at ``layers``, where given)."""
    ok = isinstance(v, SteeringVector) and all(
        bool(torch.isfinite(d).all()) for d in v.directions.values()
    )
    return ok and math.isfinite(v.norm()) and (layers is None or v.layers == layers)


def result_vector_ok(res: Any, layers: list[int] | None = None) -> bool:
    return is_vector(res.vector, layers)


def intact(saved: tuple[Path, Any]) -> bool | str:
    """Whether the file at ``saved[0]`` still holds the vector ``saved[1]`` ("lost" if not)."""
    path, expected = saved
    try:
        again = SteeringVector.load(path)
    except Exception:
        return "lost"
    same = all(
        bool(torch.equal(again.directions[la], expected.directions[la])) for la in expected.layers
    )
    return same or "lost"


# --- builders ------------------------------------------------------------------------------------


def dp(prompt: str = "the cat sat", **kw: Any) -> Any:
    """A `Datapoint` (promoting " on the mat" unless ``kw`` says otherwise)."""
    return Datapoint(prompt, **({"promote": [" on the mat"]} | kw))


def opt(ctx: Ctx, dps: Any = None, layer: Any = 1, *args: Any, **kw: Any) -> Any:
    """`optimize_vector` on the tiny model: two steps, no progress bar, unless ``kw`` says."""
    kw.setdefault("max_steps", 2)
    kw.setdefault("progress", False)
    return optimize_vector(ctx.tiny, dp() if dps is None else dps, layer, *args, **kw)


def make(factory: Callable[..., Any], *args: Any, **kw: Any) -> Callable[[Ctx], Any]:
    """A case's run that calls ``factory(*args, **kw)`` (a constructor, most often)."""
    return lambda ctx: factory(*args, **kw)


def on_tiny(fn: Callable[..., Any], *args: Any, **kw: Any) -> Callable[[Ctx], Any]:
    """A case's run that calls ``fn(tiny model, *args, **kw)``."""
    return lambda ctx: fn(ctx.tiny, *args, **kw)


def clamp() -> Any:
    return ClampSteering()


def nan(shape: int = 64) -> Any:
    return torch.full((shape,), float("nan"))


def rewrite_file(
    src: Path, dst: Path, *, tensors: Any = None, meta: Any = None, header: Any = None
) -> Path:
    """Copy the vector file ``src`` to ``dst`` with tensors, steerlens metadata or header fields
    replaced."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as f:
        fields = dict(f.metadata())
        data = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open API
    body = json.loads(fields["steerlens"])
    body.update(meta or {})
    data.update(tensors or {})
    fields["steerlens"] = json.dumps(body)
    fields.update(header or {})
    save_file(data, str(dst), metadata=fields)
    return dst


def without_chat_template(ctx: Ctx, run: Callable[[Ctx], Any]) -> Any:
    """``run(ctx)`` while the tiny model's tokenizer has no chat template."""
    tok = ctx.tiny.tokenizer
    template = tok.chat_template
    tok.chat_template = None
    try:
        return run(ctx)
    finally:
        tok.chat_template = template


# --- faults --------------------------------------------------------------------------------------


@contextlib.contextmanager
def patched(obj: Any, name: str, value: Any) -> Iterator[None]:
    """``obj.name`` replaced by ``value`` for the ``with`` block."""
    original = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, original)


def raising(exc: BaseException) -> Callable[..., Any]:
    """A function that raises ``exc`` whatever it is called with."""

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise exc

    return fail
