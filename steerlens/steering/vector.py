"""``SteeringVector``: the tensors of a steering intervention plus where and how they were made."""

from __future__ import annotations

import datetime as _dt
import json
import math
import numbers
import operator
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from steerlens import runtime
from steerlens.errors import (
    LayerError,
    ModelMismatchError,
    NonFiniteError,
    SpecError,
    SteerlensError,
    VectorShapeError,
    check_int,
)
from steerlens.runtime.devices import check_device
from steerlens.steering.interventions import Ablate, Add, Affine, Clamp, check_vector
from steerlens.version import __version__

_T = TypeVar("_T")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _layer_key(layer: Any) -> int:
    if isinstance(layer, bool) or not hasattr(layer, "__index__"):
        raise LayerError(
            f"layers must be ints, got {layer!r} ({type(layer).__name__}); key directions by "
            "the block index, e.g. {6: vector}."
        )
    la = operator.index(layer)
    if la < 0:
        raise LayerError(f"layer {la} is negative; layers count from 0 (hook_resid_pre).")
    return la


def non_additive_steering(provenance: Mapping[str, Any]) -> set[str]:
    """The steering kinds other than ``add`` recorded in ``provenance`` (or its operands')."""
    kinds: set[str] = set()
    stack: list[Any] = [provenance]
    while stack:
        p = stack.pop()
        if not isinstance(p, Mapping):
            continue
        if isinstance(p.get("steering"), str):
            kinds.add(p["steering"])
        hyper = p.get("hyperparameters")
        if isinstance(hyper, Mapping) and isinstance(hyper.get("steering"), Mapping):
            name = hyper["steering"].get("name")
            if isinstance(name, str):
                kinds.add(name)
        stack += [p.get("operand"), p.get("other_operand")]
    return kinds - {"add"}


@dataclass(frozen=True, eq=False)
class SteeringVector:
    """A steering vector: one direction per layer (often one layer), optional low-rank affine
    parts, and its provenance.

    Attributes:
        directions: layer -> ``[d_model]`` vector, added at ``blocks.{layer}.hook_resid_pre``.
        model_id: the model it was made on (applying it elsewhere is refused).
        affine: layer -> ``(left, right)``, each ``[rank, d_model]``: the ``M = L^T R`` of
            affine steering ``x + M x + v``.
        provenance: how it was made: method, hyperparameters, prompts, completions, final
            losses and their unit. Plain JSON data.

    Example:
        >>> import torch
        >>> v = SteeringVector.from_tensor(torch.ones(64), layer=1, model_id="steerlens/tiny-llama")
        >>> (2 * v - v).vector.tolist() == v.vector.tolist()
        True
    """

    directions: Mapping[int, Float[Tensor, " d_model"]]
    model_id: str
    affine: Mapping[int, tuple[Tensor, Tensor]] = field(default_factory=dict)
    hook_template: str = runtime.HOOK_TEMPLATE
    provenance: Mapping[str, Any] = field(default_factory=dict)
    steerlens_version: str = __version__
    created_at: str = field(default_factory=_now)

    def __post_init__(self) -> None:
        if not self.directions:
            raise SpecError("a SteeringVector needs at least one layer's direction.")
        if not isinstance(self.model_id, str) or not self.model_id:
            raise SpecError(
                f"model_id must be a non-empty string, got {self.model_id!r}; pass the name of "
                "the model the vector was made on (or model= to SteeringVector.from_tensor)."
            )
        if not isinstance(self.hook_template, str):
            raise SpecError(
                f"hook_template must be a string, got {self.hook_template!r}; leave it at its "
                f"default {runtime.HOOK_TEMPLATE!r}."
            )
        # Plain int keys: numpy ints would not survive the JSON metadata of a saved file.
        object.__setattr__(
            self, "directions", {_layer_key(la): v for la, v in self.directions.items()}
        )
        object.__setattr__(self, "affine", {_layer_key(la): lr for la, lr in self.affine.items()})
        for layer, v in self.directions.items():
            check_vector(v, name=f"direction for layer {layer}")
        sizes = {int(v.shape[-1]) for v in self.directions.values()}
        if len(sizes) != 1:
            raise VectorShapeError(f"all directions must have one size, got sizes {sorted(sizes)}.")
        for layer, (left, right) in self.affine.items():
            if layer not in self.directions:
                raise SpecError(f"affine part at layer {layer} has no direction (bias).")
            Affine(left, right, self.directions[layer])  # validates shapes and values

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_tensor(
        cls,
        vector: Float[Tensor, " d_model"],
        layer: int | Iterable[int],
        *,
        model: Any = None,
        model_id: str | None = None,
        provenance: Mapping[str, Any] | None = None,
    ) -> SteeringVector:
        """One vector at one layer (or the same vector at several layers)."""
        if model_id is None:
            if model is None:
                raise SpecError("pass model= or model_id= so the vector knows its model.")
            model_id = runtime.model_id(model)
        layers = [_layer_key(la) for la in ([layer] if hasattr(layer, "__index__") else layer)]
        if model is not None:
            for la in layers:
                runtime.check_layer(model, la)
            check_vector(vector, d_model=runtime.d_model(model))
        v = vector.detach().clone()
        return cls({la: v for la in layers}, model_id=model_id, provenance=dict(provenance or {}))

    # -- views -----------------------------------------------------------------------------
    @property
    def layers(self) -> list[int]:
        return sorted(self.directions)

    @property
    def d_model(self) -> int:
        return int(next(iter(self.directions.values())).shape[-1])

    @property
    def vector(self) -> Float[Tensor, " d_model"]:
        """The direction, for a vector that has the same direction at every layer."""
        first = self.directions[self.layers[0]]
        if any(not torch.equal(first, self.directions[la]) for la in self.layers[1:]):
            raise SpecError(
                f"this vector has different directions at layers {self.layers}; "
                "use .directions[layer]."
            )
        return first

    def norm(self) -> float:
        """The largest per-layer L2 norm."""
        return max(float(v.norm()) for v in self.directions.values())

    def hook_names(self) -> list[str]:
        return [self.hook_template.format(layer=la) for la in self.layers]

    def _check_hook_template(self) -> None:
        if self.hook_template != runtime.HOOK_TEMPLATE:
            raise SpecError(
                f"this vector's hook_template is {self.hook_template!r}, but steerlens steers "
                f"only at {runtime.HOOK_TEMPLATE!r}; used there it would steer another point of "
                "the residual stream. Rebuild it for hook_resid_pre with "
                "SteeringVector.from_tensor(...) (blocks.{l}.hook_resid_post is "
                "blocks.{l+1}.hook_resid_pre)."
            )

    def check_compatible(self, model: Any, *, allow_model_mismatch: bool = False) -> None:
        """Refuse a model whose ``d_model`` or id differs from the one this vector was made on,
        a layer the model lacks, or a ``hook_template`` other than steerlens's
        ``blocks.{layer}.hook_resid_pre``."""
        self._check_hook_template()
        d = runtime.d_model(model)
        if d != self.d_model:
            raise VectorShapeError(
                f"this vector has d_model {self.d_model} (made on {self.model_id!r}) but the model "
                f"has d_model {d}; it cannot be applied to this model."
            )
        mid = runtime.model_id(model)
        if mid != self.model_id and not allow_model_mismatch:
            raise ModelMismatchError(
                f"this vector was made on {self.model_id!r} but the model is {mid!r}; pass "
                "allow_model_mismatch=True if you mean to apply it across models."
            )
        for la in self.layers:
            runtime.check_layer(model, la)

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None):
        """A copy with every tensor moved/cast."""
        if device is not None:
            device = check_device(device)  # a clear error for a device this machine lacks
        return replace(
            self,
            directions={la: v.to(device=device, dtype=dtype) for la, v in self.directions.items()},
            affine={
                la: (a.to(device=device, dtype=dtype), b.to(device=device, dtype=dtype))
                for la, (a, b) in self.affine.items()
            },
        )

    # -- arithmetic (like repeng's ControlVector: 2 * happy - sad) -------------------------
    def _combine(self, other: SteeringVector, sign: float, op: str) -> SteeringVector:
        if not isinstance(other, SteeringVector):
            return NotImplemented
        if self.affine or other.affine:
            raise SpecError("vectors with affine parts cannot be added or subtracted.")
        if other.hook_template != self.hook_template:
            raise SpecError(
                f"cannot combine a vector at {self.hook_template!r} with one at "
                f"{other.hook_template!r}; they steer different points of the residual stream."
            )
        if other.model_id != self.model_id or other.d_model != self.d_model:
            raise ModelMismatchError(
                f"cannot combine a vector of {self.model_id!r} (d_model {self.d_model}) with one "
                f"of {other.model_id!r} (d_model {other.d_model})."
            )
        layers = sorted(set(self.directions) | set(other.directions))
        zero = torch.zeros_like(next(iter(self.directions.values())))
        directions = {
            la: self.directions.get(la, zero) + sign * other.directions.get(la, zero).to(zero)
            for la in layers
        }
        return self._derived(directions, op, other)

    def _derived(
        self, directions: Mapping[int, Tensor], op: str, other: SteeringVector | None = None
    ) -> SteeringVector:
        provenance = {"method": "arithmetic", "operation": op, "operand": dict(self.provenance)}
        if other is not None:  # kept so that e.g. to_gguf sees how both were trained
            provenance["other_operand"] = dict(other.provenance)
        return SteeringVector(
            directions=dict(directions),
            model_id=self.model_id,
            affine={},
            hook_template=self.hook_template,
            provenance=provenance,
        )

    def __add__(self, other: SteeringVector) -> SteeringVector:
        return self._combine(other, 1.0, "add")

    def __sub__(self, other: SteeringVector) -> SteeringVector:
        return self._combine(other, -1.0, "sub")

    def __mul__(self, scalar: float) -> SteeringVector:
        if not isinstance(scalar, numbers.Real):
            return NotImplemented
        scalar = float(scalar)
        if not math.isfinite(scalar):
            raise NonFiniteError(
                f"cannot scale a steering vector by {scalar}: the result would hold NaN/inf. "
                "Multiply by a finite number."
            )
        if self.affine:
            raise SpecError("scale an affine vector with the strength= argument instead.")
        return self._derived({la: v * scalar for la, v in self.directions.items()}, f"mul {scalar}")

    __rmul__ = __mul__

    def __truediv__(self, scalar: float) -> SteeringVector:
        if not isinstance(scalar, numbers.Real):
            return NotImplemented
        if scalar == 0:
            raise NonFiniteError(
                "cannot divide a steering vector by 0: the result would hold inf/NaN. Divide by "
                "a non-zero number."
            )
        return self * (1.0 / float(scalar))

    def __neg__(self) -> SteeringVector:
        return self * -1.0

    def __repr__(self) -> str:
        method = self.provenance.get("method", "?")
        rank = (
            f", affine rank {next(iter(self.affine.values()))[0].shape[0]}" if self.affine else ""
        )
        return (
            f"SteeringVector(model={self.model_id!r}, layers={self.layers}, d_model={self.d_model},"
            f" norm={self.norm():.4g}, method={method!r}{rank})"
        )

    # -- files -----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write a safetensors file (metadata in its header); atomic, never pickle.

        ``~`` is expanded and missing parent folders are created. Returns the path written.

        Raises:
            OutputPathError: ``path`` is a folder (or under a file), or cannot be written;
                raised before anything is written.
        """
        from steerlens.io.vector_file import save_vector

        return save_vector(self, path)

    @classmethod
    def load(cls, path: str | Path, *, device: str | torch.device | None = None) -> SteeringVector:
        """Read a file written by `save` (``~`` is expanded).

        A file is read as saved: one made for another hook point loads, but is refused when
        applied (`check_compatible`).

        Raises:
            VectorFileError: no such file, or one that is not a complete steerlens vector file.
        """
        from steerlens.io.vector_file import damaged_file, read_vector_file

        if device is not None:
            device = check_device(device)  # before reading: a device this machine lacks
        path, parts, meta = read_vector_file(path)
        directions = parts["direction"]
        if sorted(directions) != meta["layers"]:
            raise damaged_file(
                path,
                f"it has direction tensors for layers {sorted(directions)} but its metadata lists "
                f"layers {meta['layers']!r}",
            )
        if sorted(parts["affine_left"]) != sorted(parts["affine_right"]):
            raise damaged_file(
                path,
                f"affine_left tensors for layers {sorted(parts['affine_left'])} do not match "
                f"affine_right tensors for layers {sorted(parts['affine_right'])}",
            )
        affine = {la: (t, parts["affine_right"][la]) for la, t in parts["affine_left"].items()}
        try:
            vector = cls(
                directions=directions,
                model_id=meta["model_id"],
                affine=affine,
                hook_template=meta["hook_template"],
                provenance=meta["provenance"],
                steerlens_version=str(meta["steerlens_version"]),
                created_at=str(meta["created_at"]),
            )
        except SteerlensError as exc:  # NaN/inf, a complex dtype, shapes that do not agree
            raise damaged_file(path, str(exc).rstrip(".")) from exc
        if meta["d_model"] != vector.d_model:
            raise damaged_file(
                path,
                f"its vectors have {vector.d_model} numbers but its metadata says d_model "
                f"{meta['d_model']!r}",
            )
        if "affine_rank" in meta and meta["affine_rank"] != vector.metadata()["affine_rank"]:
            raise damaged_file(
                path,
                f"its affine tensors have rank {vector.metadata()['affine_rank']} but its metadata "
                f"says affine_rank {meta.get('affine_rank')!r}",
            )
        return vector.to(device) if device is not None else vector

    def to_gguf(
        self,
        path: str | Path,
        *,
        model_hint: str | None = None,
        model: Any = None,
        additive_ok: bool = False,
    ) -> Path:
        """Write a llama.cpp control-vector file (``--control-vector``); see docs/llama_cpp.md.

        llama.cpp only adds its vectors (``x + a v``), so a vector trained with clamp or
        ablate steering (``provenance["steering"]``) is refused unless ``additive_ok=True``
        says to export its direction to be added anyway; affine parts are always refused.
        With ``model``, the vector is checked against it (`check_compatible`: layers,
        ``d_model``, model id). ``~`` is expanded and missing parent folders are created.
        Returns the path written.

        Raises:
            SpecError: non-additive steering without ``additive_ok``, affine parts, layer 0 or
                1 (llama.cpp cannot steer there), or another ``hook_template``.
            LayerError, VectorShapeError, ModelMismatchError: ``model`` lacks a layer, has
                another ``d_model`` or another id.
            OutputPathError: ``path`` is a folder (or under a file), or cannot be written.
        """
        from steerlens.io.gguf_format import write_control_vector

        self.check_exportable("llama.cpp control vectors", additive_ok=additive_ok)
        n_layers = None
        if model is not None:
            self.check_compatible(model)
            n_layers = runtime.n_layers(model)
        hint = model_hint or self.model_id.rsplit("/", 1)[-1].lower()
        write_control_vector(path, dict(self.directions), model_hint=hint, n_layers=n_layers)
        return Path(path).expanduser()

    def to_lm_eval(
        self,
        path: str | Path,
        *,
        strength: float = 1.0,
        kind: type[Add] | type[Clamp] | type[Ablate] = Add,
        model: Any = None,
        decoder_layers: str | None = None,
        additive_ok: bool = False,
    ) -> Path:
        """Write the steering file of lm-evaluation-harness's ``steered`` model (``.pt``), so
        that ``lm_eval --model steered --model_args pretrained=...,steer_path=FILE`` steers like
        ``steer(model, Steering(self, strength=strength, kind=kind))``; see
        docs/lm_eval.md.

        lm-eval edits the OUTPUT of a Hugging Face module at every token, so our layer ``l``
        (``blocks.{l}.hook_resid_pre``) becomes hook point ``f"{decoder_layers}.{l - 1}"``,
        the output of decoder layer ``l - 1``. ``Add`` is exported as ``add`` with the
        strength as coefficient; ``Clamp`` as ``clamp`` with coefficient ``strength * |v|``
        (lm-eval clamps along the unit vector); ``Ablate`` at strength 1 as ``clamp`` to 0.

        Args:
            path: the file, ``*.pt`` or ``*.pth`` (lm-eval reads no other name); ``~`` is
                expanded and missing folders are created.
            strength: as in `steerlens.Steering`.
            kind: ``Add``, ``Clamp`` or ``Ablate`` (strength 1 only).
            model: if given, the vector is checked against it (`check_compatible`) and the
                name of its decoder-layer list is read from it.
            decoder_layers: the module path of the decoder layers under the Hugging Face
                ``base_model``: ``"layers"`` (Llama, Qwen, Gemma, Mistral: the default without
                ``model``), ``"h"`` (GPT-2).
            additive_ok: with ``Add``, export a clamp- or ablate-trained vector's direction.

        Returns:
            The path written.

        Raises:
            SpecError: layer 0 (the embeddings: no decoder layer outputs them), affine parts,
                another ``hook_template``, ``Ablate`` at a strength other than 1, or a
                clamp-trained vector exported with ``Add`` without ``additive_ok``.
            LayerError, VectorShapeError, ModelMismatchError: ``model`` does not fit.
            OutputPathError: ``path`` is not a ``.pt``/``.pth`` file that can be written.

        Example:
            >>> import tempfile
            >>> from steerlens.io.lm_eval_file import read_steer_file
            >>> v = SteeringVector.from_tensor(torch.ones(64), layer=1, model_id="tiny")
            >>> with tempfile.TemporaryDirectory() as tmp:
            ...     entries = read_steer_file(v.to_lm_eval(f"{tmp}/steer.pt", strength=4.0))
            >>> [(hook, e.action, e.coefficient) for hook, e in entries.items()]
            [('layers.0', 'add', 4.0)]
        """
        from steerlens.io.lm_eval_file import SteerEntry, write_steer_file

        if kind not in (Add, Clamp, Ablate):
            raise SpecError(f"kind must be steerlens.Add, Clamp or Ablate, got {kind!r}.")
        target = "lm-eval steering files"
        self.check_exportable(target, additive_ok=additive_ok or kind is not Add)
        if 0 in self.directions:
            raise SpecError(
                f"layer 0 cannot be written to {target}: blocks.0.hook_resid_pre is the token "
                "embeddings, which no decoder layer outputs, and lm-eval steers module outputs. "
                "Steer at layer 1 or later, or apply this vector with steerlens in Python."
            )
        if kind is Ablate and strength != 1.0:
            raise SpecError(
                f"lm-eval can clamp a direction to 0 (ablation at strength 1) but not remove a "
                f"fraction of it; strength {strength:g} cannot be exported. Use strength=1.0."
            )
        if model is not None:
            self.check_compatible(model)
            if decoder_layers is None:
                decoder_layers = runtime.hf_decoder_layers(model)
                if decoder_layers is None:
                    raise SpecError(
                        f"cannot find the decoder-layer list of {runtime.model_id(model)!r} "
                        "under its Hugging Face base_model; pass decoder_layers= (e.g. 'layers' "
                        "or 'h'), the module path lm-eval's hook points start with."
                    )
        prefix = "layers" if decoder_layers is None else decoder_layers

        def entry(v: Tensor) -> SteerEntry:
            if kind is Add:
                return SteerEntry("add", v, strength)
            if kind is Clamp:  # lm-eval clamps along v/|v|: x.v/|v| = strength |v|
                return SteerEntry("clamp", v, strength * float(v.double().norm()))
            return SteerEntry("clamp", v, 0.0)

        entries = {f"{prefix}.{la - 1}": entry(v) for la, v in sorted(self.directions.items())}
        return write_steer_file(path, entries)

    @classmethod
    def from_gguf(
        cls,
        path: str | Path,
        model: Any,
        *,
        layers: Iterable[int] | None = None,
        allow_model_mismatch: bool = False,
    ) -> SteeringVector:
        """Read a llama.cpp control-vector file (ours, repeng's, llama.cpp's) for ``model``.

        ``direction.{k}`` becomes our layer ``k + 1``; see docs/llama_cpp.md. The file's
        ``controlvector.model_hint`` must name ``model`` (its architecture, e.g. ``"llama"``,
        or the hint `to_gguf` writes) unless ``allow_model_mismatch=True``. ``layers`` keeps
        only those of our layers (e.g. to leave out a last-block vector). Details:
        `steerlens.io.gguf_format.read_control_vector`.

        Example:
            >>> import tempfile
            >>> from steerlens.testing import tiny_model
            >>> model = tiny_model(n_layers=3)
            >>> v = SteeringVector.from_tensor(torch.randn(64), layer=2, model=model)
            >>> with tempfile.TemporaryDirectory() as tmp:
            ...     back = SteeringVector.from_gguf(v.to_gguf(f"{tmp}/v.gguf"), model)
            >>> torch.equal(back.directions[2], v.directions[2])
            True

        Raises:
            VectorFileError: not a readable control-vector file.
            ModelMismatchError: the file's model hint names another model.
            VectorShapeError, LayerError: vectors of another ``d_model``, or a layer the model
                lacks (a file's last-block vector has no ``hook_resid_pre``).
        """
        from steerlens.io.gguf_format import MODEL_HINT_KEY, read_control_vector

        directions, metadata = read_control_vector(path)
        hint = metadata.get(MODEL_HINT_KEY)
        model_id = runtime.model_id(model)
        names = {model_id.lower(), model_id.rsplit("/", 1)[-1].lower()}
        model_type = runtime.hf_model_type(model)
        if model_type is not None:
            names.add(model_type.lower())
        if not allow_model_mismatch and (not isinstance(hint, str) or hint.lower() not in names):
            seen = f"is {hint!r}" if isinstance(hint, str) else "is missing"
            raise ModelMismatchError(
                f"{path}: its {MODEL_HINT_KEY} {seen}, but the model is {model_id!r} (accepted "
                f"hints: {', '.join(sorted(map(repr, names)))}). Pass allow_model_mismatch=True "
                "if the vectors were made on this model."
            )
        return imported_vector(
            directions,
            model,
            layers,
            source=str(path),
            provenance={
                "method": "import",
                "source": "llama.cpp control vector (GGUF)",
                "path": str(Path(path).expanduser()),
                "model_hint": hint if isinstance(hint, str) else None,
            },
        )

    def check_exportable(self, target: str, *, additive_ok: bool) -> None:
        """Refuse what an add-only tool (``target``) cannot express: another hook point,
        affine parts, and (unless ``additive_ok``) non-additive steering."""
        self._check_hook_template()
        if self.affine:
            raise SpecError(
                f"{target} hold only additive directions; this vector has affine parts. Save "
                "it with .save() instead."
            )
        kinds = non_additive_steering(self.provenance)
        if kinds and not additive_ok:
            raise SpecError(
                f"this vector was trained with {'/'.join(sorted(kinds))} steering, but "
                f"{target} are only added (x + a v), so it would not act as trained. Pass "
                "additive_ok=True to export its direction to be added anyway, or apply it with "
                "steerlens in Python."
            )

    def metadata(self) -> dict[str, Any]:
        """Everything but the tensors, as JSON-ready data."""
        try:
            provenance = json.loads(json.dumps(self.provenance))
        except (TypeError, ValueError) as exc:
            raise SpecError(
                f"the vector's provenance is not plain JSON data ({exc}); keep only dicts, "
                "lists, strings, numbers, booleans and None in it (e.g. t.tolist() for a "
                "tensor)."
            ) from exc
        return {
            "model_id": self.model_id,
            "d_model": self.d_model,
            "layers": self.layers,
            "hook_template": self.hook_template,
            "affine_rank": (
                int(next(iter(self.affine.values()))[0].shape[0]) if self.affine else None
            ),
            "provenance": provenance,
            "steerlens_version": self.steerlens_version,
            "created_at": self.created_at,
        }


# -- vectors from other files and tools --------------------------------------------------------


def _select_layers(
    directions: Mapping[int, _T], layers: Iterable[int] | None, model: Any, *, source: str
) -> dict[int, _T]:
    """Keep ``layers`` (all by default) of ``directions``, keyed by our layer, refusing layers
    that ``model`` has no ``hook_resid_pre`` for (the output of its last block, or beyond)."""
    n = runtime.n_layers(model)
    if layers is None:
        wanted = sorted(directions)
    else:
        wanted = sorted({check_int(layer, "layers") for layer in layers})
        missing = [layer for layer in wanted if layer not in directions]
        if missing:
            raise LayerError(
                f"{source} has no vector for layer(s) {missing}; it has our layers "
                f"{sorted(directions)}. Pass layers= from those."
            )
    for layer in wanted:
        if layer == n:
            raise LayerError(
                f"{source} has a vector for the output of the model's last block (our layer "
                f"{n}, TransformerLens blocks.{n - 1}.hook_resid_post); steerlens steers only at "
                f"hook_resid_pre (layers 0-{n - 1}), so it cannot apply it. Pass "
                f"layers={[la for la in wanted if la != n]} to import the others."
            )
        if not 0 <= layer < n:
            raise LayerError(
                f"{source} has a vector for our layer {layer}, but the model has {n} blocks "
                f"(layers 0-{n - 1}); is it for another model?"
            )
    return {layer: directions[layer] for layer in wanted}


def imported_vector(
    directions: Mapping[int, Any],
    model: Any,
    layers: Iterable[int] | None,
    *,
    source: str,
    provenance: Mapping[str, Any],
) -> SteeringVector:
    """A `SteeringVector` for ``model`` from vectors keyed by our layer (numpy or torch),
    copied to the model's device; refuses layers, sizes and shapes the model cannot take."""
    kept = _select_layers(directions, layers, model, source=source)
    device = runtime.device(model)
    tensors = {
        layer: (
            value.detach().clone()
            if isinstance(value, torch.Tensor)
            else torch.from_numpy(np.array(value, copy=True))
        ).to(device)
        for layer, value in kept.items()
    }
    for layer, tensor in tensors.items():
        if tensor.ndim != 1:
            raise SpecError(
                f"{source}: the vector for our layer {layer} has shape {tuple(tensor.shape)}; "
                "steerlens imports one 1-D vector of d_model numbers per layer."
            )
    vector = SteeringVector(tensors, model_id=runtime.model_id(model), provenance=dict(provenance))
    vector.check_compatible(model, allow_model_mismatch=True)  # d_model and layers
    return vector
