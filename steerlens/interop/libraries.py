"""Vectors to and from other steering libraries: repeng and steering-vectors.

Both libraries key a vector by a Hugging Face decoder-layer index ``k`` and add it to the
OUTPUT of decoder layer ``k``, at every token:

* repeng (``repeng/control.py``): ``ControlModel`` wraps ``model.model.layers[k]`` in a
  ``ControlModule`` whose ``forward`` adds ``directions[k]`` to the layer's output;
  ``read_representations`` (``repeng/extract.py``) measures ``hidden_states[k + 1]``, the same
  output.
* steering-vectors (``steering_vectors/steering_vector.py``): ``patch_activations`` registers a
  forward hook on decoder block ``k`` (``layer_type="decoder_block"``) that adds
  ``layer_activations[k]`` to the block's output; a negative ``k`` counts from the end, as a
  Python list index.

The output of decoder layer ``k`` is the residual stream entering block ``k + 1``, TransformerLens
``blocks.{k+1}.hook_resid_pre``, so **our layer = their layer + 1**. Our layer 0 (the embeddings)
has no counterpart, and their last layer (the output of the last block, before the final norm)
has no ``hook_resid_pre``: both are refused. See docs/interop.md.

The libraries are optional and imported only by the ``to_*`` functions; the ``from_*`` functions
read any object with the library's fields.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from types import ModuleType
from typing import Any, TypeVar

import numpy as np
import torch

from steerlens import runtime
from steerlens.errors import (
    LayerError,
    MissingPackageError,
    ModelMismatchError,
    SpecError,
    check_int,
)
from steerlens.steering.vector import SteeringVector, imported_vector

__all__ = ["from_repeng", "from_steering_vectors", "to_repeng", "to_steering_vectors"]

_T = TypeVar("_T")
_DECODER_BLOCK = "decoder_block"
_INSTALL = {
    # repeng 0.4 declares numpy<2, which would downgrade NumPy; its code runs under NumPy 2
    # once imported (see import_repeng), so it is installed without its declared dependencies.
    "repeng": (
        "pip install --no-deps repeng && pip install scikit-learn (repeng 0.4 declares "
        "numpy<2; --no-deps keeps your NumPy, under which steerlens imports it)"
    ),
    # steering-vectors declares transformers<5, which steerlens's transformers>=5.9 excludes,
    # so pip cannot resolve it as a dependency; its SteeringVector works with transformers 5.
    "steering_vectors": (
        "pip install --no-deps steering-vectors && pip install scikit-learn (steering-vectors "
        "declares transformers<5, which steerlens's transformers pin excludes; --no-deps "
        "keeps your transformers)"
    ),
}


# -- shared helpers (also used by gguf_format) ----------------------------------------------


def _import(module: str, package: str) -> ModuleType:
    """Import an optional library, or raise `MissingPackageError` saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingPackageError(
            f"this needs the optional package {package!r}, which is not installed ({err}). "
            f"Install it: {_INSTALL[module]}."
        ) from err
    except AttributeError as err:  # repeng 0.4 names np.float_, which NumPy 2 removed
        numpy_hint = (
            f" It names NumPy 1 names that numpy {np.__version__} lacks beyond the np.float_ "
            f"steerlens lends it: install numpy<2 or a {package} release that supports "
            "NumPy 2."
            if "np.float_" in str(err) or "NumPy 2" in str(err)
            else f" Reinstall it ({_INSTALL[module]}) or upgrade it."
        )
        raise MissingPackageError(
            f"{package} is installed but cannot be imported ({err}).{numpy_hint}"
        ) from err


def import_repeng() -> ModuleType:
    """The ``repeng`` module, importable under NumPy 2.

    repeng 0.4 (the newest release) names ``np.float_``, which NumPy 2 removed, only in type
    annotations that Python evaluates once, at import; ``np.float_`` is ``np.float64`` there.
    The alias is lent for the import and removed again, so nothing else sees it.

    Raises:
        MissingPackageError: repeng is not installed, or fails to import for another reason.
    """
    lent = "float_" not in vars(np)
    if lent:
        np.float_ = np.float64  # type: ignore[attr-defined]
    try:
        return _import("repeng", "repeng")
    finally:
        if lent:
            del np.float_  # type: ignore[attr-defined]


def _check_export(
    vector: SteeringVector,
    target: str,
    model: Any,
    *,
    allow_model_mismatch: bool,
    additive_ok: bool,
) -> None:
    if not isinstance(vector, SteeringVector):
        raise SpecError(
            f"expected a steerlens SteeringVector, got {type(vector).__name__}; build one with "
            "SteeringVector.from_tensor(tensor, layer=..., model=model)."
        )
    vector.check_exportable(target, additive_ok=additive_ok)
    if model is not None:
        vector.check_compatible(model, allow_model_mismatch=allow_model_mismatch)
    if 0 in vector.directions:
        raise SpecError(
            f"layer 0 cannot be exported to {target}: blocks.0.hook_resid_pre is the token "
            "embeddings, and these tools add vectors only to the outputs of decoder layers "
            "(our layers 1 and up). Steer at layer 1 or later, or apply this vector with "
            "steerlens."
        )


# -- repeng ----------------------------------------------------------------------------------


def to_repeng(
    vector: SteeringVector,
    *,
    model: Any = None,
    model_type: str | None = None,
    allow_model_mismatch: bool = False,
    additive_ok: bool = False,
) -> Any:
    """Convert a vector to a repeng ``ControlVector`` (``pip install --no-deps repeng``).

    Our layer ``l`` becomes repeng's layer ``l - 1``, which repeng's ``ControlModel`` adds to
    the output of decoder layer ``l - 1``: the same residual stream. ``ControlModel(hf_model,
    layer_ids)`` with ``set_control(cv, coeff)`` then steers like ``steer(model,
    Steering(vector, strength=coeff))`` at every token. Directions become numpy arrays of the
    vector's dtype (bfloat16 becomes float32, same values).

    Args:
        vector: The vector; not at layer 0 (the embeddings, which repeng cannot steer).
        model: If given, the vector is checked against it (`SteeringVector.check_compatible`)
            and its Hugging Face ``model_type`` is recorded.
        model_type: The ``model_type`` to record (``"llama"``); needed without ``model``.
        allow_model_mismatch: Accept a ``model`` whose id differs from the vector's.
        additive_ok: Export a clamp- or ablate-trained vector's direction to be added.

    Returns:
        A ``repeng.ControlVector``.

    Raises:
        MissingPackageError: repeng is not installed, or cannot be imported.
        SpecError: Layer 0, affine parts, non-additive steering without ``additive_ok``, or no
            ``model_type`` known.
        ModelMismatchError, VectorShapeError, LayerError: ``model`` does not fit the vector.

    Example:
        >>> import torch
        >>> from steerlens.testing import tiny_model
        >>> model = tiny_model()
        >>> v = SteeringVector.from_tensor(torch.randn(64), layer=1, model=model)
        >>> cv = to_repeng(v, model=model)  # doctest: +SKIP
        >>> sorted(cv.directions), cv.model_type  # doctest: +SKIP
        ([0], 'llama')
    """
    _check_export(
        vector,
        "repeng control vectors",
        model,
        allow_model_mismatch=allow_model_mismatch,
        additive_ok=additive_ok,
    )
    if model_type is None and model is not None:
        model_type = runtime.hf_model_type(model)
    if not isinstance(model_type, str) or not model_type:
        raise SpecError(
            f"repeng records the model's Hugging Face model_type, and none is known (got "
            f"{model_type!r}); pass model=model, or model_type='llama' (or the like)."
        )
    directions = {layer - 1: _to_numpy(t) for layer, t in sorted(vector.directions.items())}
    repeng = import_repeng()
    return repeng.ControlVector(model_type=model_type, directions=directions)


def from_repeng(
    control_vector: Any,
    model: Any,
    *,
    layers: Iterable[int] | None = None,
    allow_model_mismatch: bool = False,
) -> SteeringVector:
    """Convert a repeng ``ControlVector`` to a `SteeringVector` for ``model``.

    repeng's layer ``k`` (added to the output of decoder layer ``k``) becomes our layer
    ``k + 1``. repeng's default training includes the last decoder layer, whose output has no
    ``hook_resid_pre``: pass ``layers=`` to leave it out. repeng records only the
    architecture (``model_type``), which must be ``model``'s; two models of one architecture
    and size cannot be told apart.

    Args:
        control_vector: A ``repeng.ControlVector`` (any object with ``model_type`` and
            ``directions: dict[int, array]``; repeng need not be installed).
        model: The model the vector is for; its id is recorded on the vector.
        layers: Keep only these of OUR layers (repeng's ``k + 1``); all by default.
        allow_model_mismatch: Accept a vector whose ``model_type`` is not the model's.

    Returns:
        The vector on the model's device, in the arrays' dtype; its provenance says it came
        from repeng.

    Raises:
        SpecError: Not a ``ControlVector``, a negative layer key, or a vector that is not 1-D.
        ModelMismatchError: Another ``model_type`` (or the model's is unknown).
        LayerError: A layer the model lacks (its last block's output, or beyond).
        VectorShapeError: Vectors of another ``d_model``.

    Example:
        >>> import numpy as np
        >>> from types import SimpleNamespace
        >>> from steerlens.testing import tiny_model
        >>> cv = SimpleNamespace(model_type="llama", directions={0: np.ones(64, np.float32)})
        >>> from_repeng(cv, tiny_model()).layers  # repeng's layer 0 is our layer 1
        [1]
    """
    model_type = getattr(control_vector, "model_type", None)
    directions = getattr(control_vector, "directions", None)
    if not isinstance(directions, Mapping) or not isinstance(model_type, str):
        raise SpecError(
            f"expected a repeng ControlVector (model_type: str, directions: dict[int, array]), "
            f"got {type(control_vector).__name__}."
        )
    ours = _model_type_or_refuse(model, model_type, allow_model_mismatch)
    keys = {check_int(k, "repeng layer keys"): v for k, v in directions.items()}
    negative = sorted(k for k in keys if k < 0)
    if negative:
        raise SpecError(
            f"this repeng ControlVector has negative layer keys {negative}; repeng's "
            "ControlModel looks vectors up by non-negative layer index, so they would never be "
            "applied. Re-key them as n_layers + k."
        )
    return imported_vector(
        {k + 1: v for k, v in keys.items()},
        model,
        layers,
        source="this repeng ControlVector",
        provenance={
            "method": "import",
            "source": "repeng",
            "model_type": model_type,
            "model_type_of_model": ours,
        },
    )


def _model_type_or_refuse(model: Any, model_type: str, allow_model_mismatch: bool) -> str | None:
    ours = runtime.hf_model_type(model)
    if not allow_model_mismatch and ours != model_type:
        known = f"is {ours!r}" if ours else "cannot be read from the model"
        raise ModelMismatchError(
            f"this repeng ControlVector was made on a {model_type!r} model, but the model's "
            f"model_type {known} ({runtime.model_id(model)!r}). Pass allow_model_mismatch=True "
            "if you mean to use it with this model."
        )
    return ours


# -- steering-vectors ------------------------------------------------------------------------


def to_steering_vectors(
    vector: SteeringVector,
    *,
    model: Any = None,
    allow_model_mismatch: bool = False,
    additive_ok: bool = False,
) -> Any:
    """Convert a vector to a steering-vectors ``SteeringVector`` (``decoder_block`` layers).

    Our layer ``l`` becomes decoder block ``l - 1``, whose output steering-vectors' ``apply``
    adds it to: the same residual stream. ``sv.apply(hf_model, multiplier=a)`` then steers
    like ``steer(model, Steering(vector, strength=a))`` at every token (for a
    ``TransformerBridge``, ``hf_model`` is ``model.original_model``). Tensors are copied,
    keeping their dtype and device.

    Args:
        vector: The vector; not at layer 0 (the embeddings, which no decoder block outputs).
        model: If given, the vector is checked against it (`SteeringVector.check_compatible`).
        allow_model_mismatch: Accept a ``model`` whose id differs from the vector's.
        additive_ok: Export a clamp- or ablate-trained vector's direction to be added.

    Returns:
        A ``steering_vectors.SteeringVector`` with ``layer_type="decoder_block"``.

    Raises:
        MissingPackageError: steering-vectors is not installed.
        SpecError: Layer 0, affine parts, or non-additive steering without ``additive_ok``.
        ModelMismatchError, VectorShapeError, LayerError: ``model`` does not fit the vector.

    Example:
        >>> import torch
        >>> from steerlens.testing import tiny_model
        >>> model = tiny_model()
        >>> v = SteeringVector.from_tensor(torch.randn(64), layer=1, model=model)
        >>> sv = to_steering_vectors(v, model=model)  # doctest: +SKIP
        >>> sorted(sv.layer_activations), sv.layer_type  # doctest: +SKIP
        ([0], 'decoder_block')
    """
    _check_export(
        vector,
        "steering-vectors vectors",
        model,
        allow_model_mismatch=allow_model_mismatch,
        additive_ok=additive_ok,
    )
    activations = {layer - 1: t.detach().clone() for layer, t in sorted(vector.directions.items())}
    library = _import("steering_vectors", "steering-vectors")
    return library.SteeringVector(layer_activations=activations, layer_type=_DECODER_BLOCK)


def from_steering_vectors(
    steering_vector: Any, model: Any, *, layers: Iterable[int] | None = None
) -> SteeringVector:
    """Convert a steering-vectors ``SteeringVector`` to a `SteeringVector` for ``model``.

    Decoder block ``k`` (``layer_type="decoder_block"``, the output of block ``k``) becomes our
    layer ``k + 1``; a negative ``k`` counts from the end, as steering-vectors does. Other layer
    types (``self_attn``, ``mlp``, the layer norms) steer a sublayer's output, not the residual
    stream, and are refused. steering-vectors records no model, so only ``d_model`` and the
    layers are checked.

    Args:
        steering_vector: A ``steering_vectors.SteeringVector`` (any object with
            ``layer_activations: dict[int, Tensor]`` and ``layer_type``).
        model: The model the vector is for; its id is recorded on the vector.
        layers: Keep only these of OUR layers (block ``k`` is our ``k + 1``); all by default.

    Returns:
        The vector on the model's device, in the tensors' dtype.

    Raises:
        SpecError: Not a steering-vectors ``SteeringVector``, a layer type other than
            ``decoder_block``, or a vector that is not 1-D.
        LayerError: A layer the model lacks (its last block's output, or beyond).
        VectorShapeError: Vectors of another ``d_model``.

    Example:
        >>> import torch
        >>> from types import SimpleNamespace
        >>> from steerlens.testing import tiny_model
        >>> sv = SimpleNamespace(layer_activations={0: torch.ones(64)}, layer_type="decoder_block")
        >>> from_steering_vectors(sv, tiny_model()).layers  # block 0's output is our layer 1
        [1]
    """
    activations = getattr(steering_vector, "layer_activations", None)
    layer_type = getattr(steering_vector, "layer_type", _DECODER_BLOCK)
    if not isinstance(activations, Mapping):
        raise SpecError(
            "expected a steering-vectors SteeringVector (layer_activations: dict[int, Tensor]), "
            f"got {type(steering_vector).__name__}."
        )
    if layer_type != _DECODER_BLOCK:
        raise SpecError(
            f"this steering-vectors SteeringVector has layer_type {layer_type!r}; steerlens "
            "steers the residual stream (hook_resid_pre), which only 'decoder_block' vectors "
            "(added to a block's output) reach. Other layer types add to a sublayer's output "
            "inside the block and cannot be expressed."
        )
    n = runtime.n_layers(model)
    keys: dict[int, Any] = {}
    for key, value in activations.items():
        block = check_int(key, "steering-vectors layer keys")
        resolved = block + n if block < 0 else block
        if resolved < 0:
            raise LayerError(
                f"decoder block {block} does not exist: the model has {n} blocks (-{n} to {n - 1})."
            )
        if resolved + 1 in keys:
            raise SpecError(
                f"decoder block {block} and another key both name block {resolved}; "
                "steering-vectors would add both. Sum them into one key first."
            )
        keys[resolved + 1] = value
    return imported_vector(
        keys,
        model,
        layers,
        source="this steering-vectors SteeringVector",
        provenance={"method": "import", "source": "steering-vectors", "layer_type": layer_type},
    )


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A numpy copy; bfloat16 (which numpy lacks) becomes float32 with the same values."""
    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    return tensor.numpy().copy()
