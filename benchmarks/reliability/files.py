"""Cases: vector files (save, load, GGUF, devices), and faults while writing them."""

# mypy: ignore-errors
# (the cases pass wrong types on purpose)

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any

import safetensors.torch
import torch

import steerlens
from steerlens import SteeringVector
from steerlens.errors import OutputPathError
from steerlens.io import atomic

from .helpers import clamp, intact, is_vector, nan, opt, patched, raising, rewrite_file
from .runner import Ctx, cases


def _multi_tensor(ctx: Ctx) -> Any:
    v = SteeringVector.from_tensor(torch.randn(64), layer=[0, 1], model_id="steerlens/tiny-llama")
    return SteeringVector.load(v.save(ctx.path("m.safetensors")))


def _multi_opt(ctx: Ctx) -> Any:
    v = opt(ctx, layer=[0, 1]).vector
    return SteeringVector.load(v.save(ctx.path("m.safetensors")))


def _tilde(ctx: Ctx) -> Any:
    home = ctx.path()
    old = os.environ.get("HOME")
    os.environ["HOME"] = str(home)
    cwd = os.getcwd()
    os.chdir(home)
    try:
        saved = ctx.vector().save("~/v.safetensors")
    finally:
        os.chdir(cwd)
        os.environ["HOME"] = old or ""
    return saved, home


def _under_file(ctx: Ctx) -> Any:
    f = ctx.path("notes.txt")
    f.write_text("x")
    return ctx.vector().save(f / "v.safetensors")


def _readonly(ctx: Ctx) -> Any:
    folder = ctx.path()
    denied = raising(PermissionError(13, "Permission denied", str(folder)))
    # Root ignores folder modes, so the denial is injected where files are created.
    with patched(atomic.tempfile, "mkstemp", denied):
        return ctx.vector().save(folder / "v.safetensors")


def _truncated(ctx: Ctx) -> Any:
    good = ctx.saved()
    bad = ctx.path("cut.safetensors")
    bad.write_bytes(good.read_bytes()[:40])
    return SteeringVector.load(bad)


def _content(data: bytes) -> Callable[[Ctx], Any]:
    """Load a file ``x.safetensors`` holding ``data``."""

    def load(ctx: Ctx) -> Any:
        f = ctx.path("x.safetensors")
        f.write_bytes(data)
        return SteeringVector.load(f)

    return load


def _foreign_st(ctx: Ctx) -> Any:
    f = ctx.path("weights.safetensors")
    safetensors.torch.save_file({"w": torch.zeros(3)}, str(f))
    return SteeringVector.load(f)


def _gguf(ctx: Ctx) -> Any:
    return ctx.vector(layers=(2,)).to_gguf(ctx.path("v.gguf"), model_hint="llama")


def _gguf_cut(ctx: Ctx) -> Any:
    g = _gguf(ctx)
    g.write_bytes(g.read_bytes()[:50])
    return SteeringVector.from_gguf(g, ctx.model(4))


def _gguf_round(ctx: Ctx) -> Any:
    v = ctx.vector(layers=(2, 3))
    back = SteeringVector.from_gguf(v.to_gguf(ctx.path("v.gguf"), model=ctx.model(4)), ctx.model(4))
    return v, back


def _same_layers_2_3(r: Any) -> bool:
    return r[1].layers == [2, 3] and all(
        torch.allclose(r[0].directions[k], r[1].directions[k]) for k in (2, 3)
    )


def _nan_file(ctx: Ctx) -> Any:
    from safetensors import safe_open

    good = ctx.saved()
    with safe_open(str(good), framework="pt") as f:
        key = next(iter(f.keys()))
    return SteeringVector.load(rewrite_file(good, ctx.path("n.safetensors"), tensors={key: nan()}))


def _newer_format(ctx: Ctx) -> Any:
    newer = rewrite_file(ctx.saved(), ctx.path("n.safetensors"), header={"format_version": "99"})
    return SteeringVector.load(newer)


def _resid_post_applied(ctx: Ctx) -> Any:
    v = SteeringVector.load(ctx.saved(hook_template="blocks.{layer}.hook_resid_post"))
    return steerlens.generate(ctx.tiny, "the cat", steerlens.Steering(v), max_new_tokens=2)


def _failed_resave(ctx: Ctx) -> Any:
    good = ctx.vector()
    path = good.save(ctx.path("keep.safetensors"))
    with contextlib.suppress(Exception):
        ctx.vector(provenance={"f": object()}).save(path)
    return path, good


def _disk_full(ctx: Ctx) -> Any:
    good = ctx.vector()
    path = good.save(ctx.path("keep.safetensors"))
    full = raising(OSError(28, "No space left on device"))
    # The save fails with a clear OutputPathError (which file, how much was written); what
    # matters here is that the file saved before is intact.
    with patched(safetensors.torch, "save_file", full), contextlib.suppress(OutputPathError):
        (good * 2.0).save(path)
    return path, good


def _clamp_gguf(ctx: Ctx) -> Any:
    v = opt(ctx, layer=[1], kind=clamp()).vector
    return v.to_gguf(ctx.path("c.gguf"), model_hint="llama")


def _steer_other_model(ctx: Ctx) -> Any:
    v = SteeringVector({1: torch.ones(64)}, "gpt2")
    return steerlens.generate(ctx.tiny, "the cat", steerlens.Steering(v), max_new_tokens=2)


def _layers_0_1(v: Any) -> bool:
    return is_vector(v, [0, 1])


load, from_gguf = SteeringVector.load, SteeringVector.from_gguf

# (name, run, ok: None where only an error is right, what the error must name)
CASES = cases(
    "files",
    [
        ("save a from_tensor vector at layers [0, 1]", _multi_tensor, _layers_0_1),
        ("save an optimized vector at layers [0, 1]", _multi_opt, _layers_0_1),
        ("save to an existing folder", lambda c: c.vector().save(c.path()), None, "folder"),
        (
            "to_gguf to an existing folder",
            lambda c: c.vector(layers=(2,)).to_gguf(c.path()),
            None,
            "folder",
        ),
        (
            "save to a path ending in /",
            lambda c: c.vector().save(str(c.path()) + "/x/"),
            None,
            "folder",
        ),
        (
            "save to ~/v.safetensors",
            _tilde,
            lambda r: r[0] == r[1] / "v.safetensors" and not (r[1] / "~").exists(),
        ),
        ("save under a path that is a file", _under_file, None, "notes.txt"),
        ("save into a folder without write access", _readonly, None, "permission"),
        ("save to an empty path", lambda c: c.vector().save(""), None, "path"),
        ("save to None", lambda c: c.vector().save(None), None, ("path", "None")),
        (
            "load a missing file",
            lambda c: load(c.path("nope.safetensors")),
            None,
            "nope.safetensors",
        ),
        ("load a folder", lambda c: load(c.path()), None, "folder"),
        ("load a truncated file", _truncated, None, "cut.safetensors"),
        ("load an empty file", _content(b""), None, "x.safetensors"),
        ("load a text file", _content(b"hello, not tensors at all"), None, "x.safetensors"),
        ("load random bytes", _content(os.urandom(256)), None, "x.safetensors"),
        (
            "load a safetensors file that is not a vector",
            _foreign_st,
            None,
            "weights.safetensors",
        ),
        ("load a GGUF file with load()", lambda c: load(_gguf(c)), None, "gguf"),
        (
            "from_gguf a safetensors file",
            lambda c: from_gguf(c.saved(), c.model(4)),
            None,
            "gguf",
        ),
        ("from_gguf a truncated file", _gguf_cut, None, "v.gguf"),
        (
            "from_gguf a missing file",
            lambda c: from_gguf(c.path("no.gguf"), c.model(4)),
            None,
            "no.gguf",
        ),
        ("to_gguf / from_gguf round trip (layers 2, 3)", _gguf_round, _same_layers_2_3),
        (
            "from_gguf with a model of another d_model",
            lambda c: from_gguf(_gguf(c), c.model(4, 32)),
            None,
            ("64", "32"),
        ),
        ("load a file holding NaN", _nan_file, None, "nan"),
        ("load a file of a newer format version", _newer_format, None, "99"),
        ("apply a vector made at hook_resid_post", _resid_post_applied, None, "hook_resid_post"),
        (
            "load(device='cuda') on a CPU machine",
            lambda c: load(c.saved(), device="cuda"),
            None,
            "cuda",
        ),
        ("vector.to('cuda') on a CPU machine", lambda c: c.vector().to("cuda"), None, "cuda"),
        ("vector.to('tpu')", lambda c: c.vector().to("tpu"), None, "tpu"),
        (
            "save with provenance that is not JSON",
            lambda c: c.vector(provenance={"f": object()}).save(c.path("p.safetensors")),
            None,
            "provenance",
        ),
        ("a failed save over an existing file keeps the old file", _failed_resave, intact),
        ("disk full while saving over an existing file keeps it", _disk_full, intact),
        ("to_gguf a clamp-steering vector", _clamp_gguf, None, "clamp"),
        (
            "to_gguf at layer 0 (llama.cpp cannot steer it)",
            lambda c: c.vector(layers=(0,)).to_gguf(c.path("v.gguf"), model_hint="llama"),
            None,
            "layer",
        ),
        (
            "to_gguf a layer the model lacks",
            lambda c: c.vector(layers=(7,)).to_gguf(c.path("v.gguf"), model=c.model(4)),
            None,
            "7",
        ),
        ("load a file of another model and steer with it", _steer_other_model, None, "tiny"),
    ],
)
