"""Read and write llama.cpp control-vector files (GGUF, ``--control-vector``).

A control-vector file is a GGUF file whose ``general.architecture`` is ``controlvector`` and
whose tensors are 1-D float32 vectors named ``direction.{k}``, one per layer, all ``n_embd`` long.

The layer mapping, as read in llama.cpp's sources:

* ``common_control_vector_load_one`` (common/common.cpp) refuses ``direction.0`` and stores
  ``direction.{k}`` at row ``k - 1`` of a flat buffer.
* ``llama_adapter_cvec::apply`` (src/llama-adapter.cpp) fills the tensor of block ``il`` from
  row ``il - 1``, for ``il >= 1``; block 0 never gets a tensor. So ``direction.{k}`` belongs to
  block ``k``.
* Each model graph (e.g. src/models/llama.cpp) calls ``build_cvec(cur, il)``, which is
  ``llama_adapter_cvec::apply_to`` (src/llama-graph.cpp), right after block ``il``'s last
  residual add, so the vector is added to the OUTPUT of block ``il``, at every token.

Our steering layer ``l`` is TransformerLens's ``blocks.{l}.hook_resid_pre``, the output of block
``l - 1``. Hence ``k = l - 1``. Layers 0 (the embeddings) and 1 (the output of block 0) cannot be
expressed: llama.cpp adds nothing there.

llama.cpp's loader reads only the tensors. It ignores ``general.architecture``,
``controlvector.model_hint`` and ``controlvector.layer_count``, which we write as its
cvector-generator does (``export_gguf``); `read_control_vector` checks the architecture
all the same, to tell a control vector from a model file.
"""

from __future__ import annotations

import operator
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gguf
import numpy as np

from steerlens.errors import (
    LayerError,
    NonFiniteError,
    SpecError,
    VectorFileError,
    VectorShapeError,
)
from steerlens.io.atomic import atomic_path, output_path, path_text

if TYPE_CHECKING:
    import torch

ARCHITECTURE = "controlvector"
MODEL_HINT_KEY = f"{ARCHITECTURE}.model_hint"
LAYER_COUNT_KEY = f"{ARCHITECTURE}.layer_count"
_DIRECTION_NAME = re.compile(r"direction\.([0-9]+)")
_FIRST_EXPRESSIBLE_LAYER = 2


def tl_layer_to_gguf_index(layer: int) -> int:
    """Map our layer (``blocks.{layer}.hook_resid_pre``) to llama.cpp's ``direction.{k}`` index.

    llama.cpp adds ``direction.{k}`` to the output of block ``k``, which is the residual stream
    entering block ``k + 1``; so ``k = layer - 1``.

    Args:
        layer: A TransformerLens block index, at ``hook_resid_pre``.

    Returns:
        The index ``k`` of the ``direction.{k}`` tensor that steers that residual stream.

    Raises:
        LayerError: ``layer`` is negative.
        SpecError: ``layer`` is 0 or 1, which llama.cpp cannot steer.

    Example:
        >>> tl_layer_to_gguf_index(6)
        5
    """
    layer = operator.index(layer)
    if layer < 0:
        raise LayerError(f"layer {layer} is negative; layers count from 0 (hook_resid_pre).")
    if layer < _FIRST_EXPRESSIBLE_LAYER:
        where = "the token embeddings" if layer == 0 else "the output of block 0"
        raise SpecError(
            f"layer {layer} cannot be written to a llama.cpp control vector: its "
            f"blocks.{layer}.hook_resid_pre is {where}, and llama.cpp adds control vectors "
            "only to the outputs of blocks 1 and later (it refuses direction.0). Steer at "
            f"layer {_FIRST_EXPRESSIBLE_LAYER} or later, or apply this vector with steerlens "
            "in Python instead."
        )
    return layer - 1


def gguf_index_to_tl_layer(index: int) -> int:
    """Map llama.cpp's ``direction.{index}`` to our layer (``blocks.{layer}.hook_resid_pre``).

    The inverse of `tl_layer_to_gguf_index`: ``layer = index + 1``. The last index a model
    uses, ``n_layers - 1``, comes back as ``n_layers``: the residual stream after the final block
    (TransformerLens ``blocks.{n_layers - 1}.hook_resid_post``).

    Args:
        index: The ``k`` of a ``direction.{k}`` tensor.

    Returns:
        Our layer whose ``hook_resid_pre`` llama.cpp steers with that tensor.

    Raises:
        SpecError: ``index`` is below 1; llama.cpp refuses such tensors.

    Example:
        >>> gguf_index_to_tl_layer(5)
        6
    """
    index = operator.index(index)
    if index < 1:
        raise SpecError(
            f"direction.{index} is not a valid llama.cpp control-vector tensor: indices start "
            "at 1 (llama.cpp refuses direction.0, since block 0's output is never steered)."
        )
    return index + 1


def _as_float32(layer: int, vector: np.ndarray | torch.Tensor) -> np.ndarray:
    """Return ``vector`` as a contiguous 1-D float32 array, refusing bad shapes and values."""
    if hasattr(vector, "detach"):  # a torch tensor, possibly on a GPU or in bfloat16
        vector = vector.detach().cpu().float().numpy()
    with np.errstate(over="ignore"):  # an overflow to inf is reported just below
        array = np.ascontiguousarray(np.asarray(vector), dtype=np.float32)
    if array.ndim != 1 or array.size == 0:
        raise VectorShapeError(
            f"the vector for layer {layer} has shape {tuple(array.shape)}; a control vector "
            "needs one non-empty 1-D vector of d_model numbers per layer."
        )
    bad = int(np.count_nonzero(~np.isfinite(array)))
    if bad:
        raise NonFiniteError(
            f"the vector for layer {layer} has {bad} non-finite value(s) (NaN or inf, after "
            "conversion to float32); llama.cpp would add them to the residual stream. Fix the "
            "vector (or its scale) before saving."
        )
    return array


def write_control_vector(
    path: str | os.PathLike[str],
    directions: Mapping[int, np.ndarray | torch.Tensor],
    *,
    model_hint: str,
    n_layers: int | None = None,
) -> None:
    """Write steering vectors as a llama.cpp control-vector file.

    The vector for our layer ``l`` becomes the float32 tensor ``direction.{l - 1}``. The file
    also holds ``general.architecture = "controlvector"``, ``controlvector.model_hint`` and
    ``controlvector.layer_count`` (int32, the number of direction tensors), as llama.cpp's
    cvector-generator writes them. The write is atomic: on error the old file stays. ``~`` is
    expanded and missing parent folders are created.

    Args:
        path: The file to write, conventionally ending in ``.gguf``.
        directions: Vectors keyed by our layer (``blocks.{l}.hook_resid_pre``), each of shape
            ``(d_model,)``, numpy arrays or torch tensors.
        model_hint: The model the vectors are for, e.g. its GGUF architecture (``"llama"``).
            llama.cpp ignores it; it helps people and tools tell files apart.
        n_layers: The model's number of blocks, if known; layers outside ``0..n_layers - 1`` are
            then refused.

    Raises:
        SpecError: No directions, a layer llama.cpp cannot steer (0 or 1), or a bad argument.
        LayerError: A negative layer, or one at or beyond ``n_layers``.
        VectorShapeError: A vector that is not 1-D, or vectors of different sizes.
        NonFiniteError: A vector with NaN or inf.
        OutputPathError: ``path`` is a folder (or under a file), or cannot be written.

    Example:
        >>> import tempfile, numpy as np
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = Path(tmp) / "honest.gguf"
        ...     write_control_vector(path, {6: np.ones(4, np.float32)}, model_hint="llama")
        ...     gguf.GGUFReader(path).tensors[0].name
        'direction.5'
    """
    output_path(path, example_name="vector.gguf")  # a folder is reported before the vectors
    if not isinstance(model_hint, str):
        raise SpecError(f"model_hint must be a string, got {type(model_hint).__name__}.")
    if n_layers is not None and _layer_key(n_layers, "n_layers") < 1:
        raise SpecError(f"n_layers must be a positive integer, got {n_layers!r}.")
    if not directions:
        raise SpecError(
            "no directions to write; llama.cpp skips a control-vector file without direction "
            "tensors. Pass at least one {layer: vector}."
        )

    tensors: dict[int, np.ndarray] = {}
    size: tuple[int, int] | None = None  # (first layer, its d_model)
    items = [(_layer_key(key), vector) for key, vector in directions.items()]
    for layer, vector in sorted(items, key=lambda item: item[0]):
        if n_layers is not None and layer >= n_layers:
            raise LayerError(
                f"layer {layer} does not exist: the model has {n_layers} blocks, so "
                f"hook_resid_pre layers run from 0 to {n_layers - 1}."
            )
        index = tl_layer_to_gguf_index(layer)
        array = _as_float32(layer, vector)
        if size is None:
            size = (layer, array.size)
        elif array.size != size[1]:
            raise VectorShapeError(
                f"the vector for layer {layer} has {array.size} numbers but the one for layer "
                f"{size[0]} has {size[1]}; all vectors of a control vector must have the "
                "model's d_model."
            )
        tensors[index] = array

    with atomic_path(path, example_name="vector.gguf") as tmp:
        writer = gguf.GGUFWriter(tmp, ARCHITECTURE)
        writer.add_string(MODEL_HINT_KEY, model_hint)
        writer.add_int32(LAYER_COUNT_KEY, len(tensors))
        for index, array in tensors.items():
            writer.add_tensor(f"direction.{index}", array)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()


def read_control_vector(
    path: str | os.PathLike[str],
) -> tuple[dict[int, np.ndarray], dict[str, object]]:
    """Read a llama.cpp control-vector file.

    Tensors are checked as llama.cpp checks them: every tensor must be a float32 vector named
    ``direction.{k}`` with ``k >= 1``, all of one size. Tensors naming the same ``k`` are summed,
    as llama.cpp does.

    Args:
        path: A control-vector GGUF file, ours or another tool's (repeng, llama.cpp's
            cvector-generator); ``~`` is expanded.

    Returns:
        ``(directions, metadata)``: float32 vectors keyed by our layer
        (``blocks.{l}.hook_resid_pre``, ``l = k + 1``), and the file's key/value metadata
        (e.g. ``general.architecture``, ``controlvector.model_hint``).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        VectorFileError: ``path`` is a folder, or the file is not GGUF (or is cut short), is
            not a control vector, or has a malformed direction tensor.

    Example:
        >>> import tempfile, numpy as np
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = Path(tmp) / "honest.gguf"
        ...     write_control_vector(path, {6: np.ones(4, np.float32)}, model_hint="llama")
        ...     directions, metadata = read_control_vector(path)
        >>> sorted(directions), metadata["controlvector.model_hint"]
        ([6], 'llama')
    """
    path = Path(path_text(path, what="the GGUF file path", error=VectorFileError)).expanduser()
    if path.is_dir():
        raise VectorFileError(
            f"{path} is a folder, not a control-vector file; pass the path of the .gguf file."
        )
    if not path.is_file():
        raise VectorFileError(f"no control-vector file at {str(path)!r}; check the path.")
    try:
        reader = gguf.GGUFReader(path)
    except OSError as err:  # unreadable (permissions), not a format problem
        raise VectorFileError(
            f"cannot read {str(path)!r}: {err.strerror or err}; check the file's permissions."
        ) from err
    except Exception as err:  # the reader raises ValueError, IndexError, ... on bad bytes
        raise VectorFileError(
            f"{path} is not a readable GGUF file ({err}); it may be truncated or another format."
        ) from err

    metadata: dict[str, object] = {
        name: _field_value(field)
        for name, field in reader.fields.items()
        if not name.startswith("GGUF.")
    }
    architecture = metadata.get("general.architecture")
    if architecture != ARCHITECTURE:
        raise VectorFileError(
            f"{path} is a GGUF file but not a control vector: its general.architecture is "
            f"{architecture!r}, not {ARCHITECTURE!r} (is it a model or LoRA file?)."
        )

    directions: dict[int, np.ndarray] = {}
    for tensor in reader.tensors:
        layer = gguf_index_to_tl_layer(_direction_index(path, tensor))
        vector = np.array(tensor.data, dtype=np.float32).reshape(-1)
        if directions and vector.size != next(iter(directions.values())).size:
            raise VectorFileError(
                f"{path}: tensor {tensor.name!r} has {vector.size} numbers, unlike the "
                "previous direction tensors; all must have the model's d_model."
            )
        directions[layer] = directions[layer] + vector if layer in directions else vector
    if not directions:
        raise VectorFileError(f"{path} is a control-vector file without direction tensors.")
    return directions, metadata


def _direction_index(path: Path, tensor: Any) -> int:
    """Return the ``k`` of a ``direction.{k}`` tensor, checked as llama.cpp checks it."""
    match = _DIRECTION_NAME.fullmatch(tensor.name)
    if match is None:
        problem = "is not named direction.<layer>"
    elif int(match.group(1)) < 1:
        problem = "has index 0, which llama.cpp refuses"
    elif tensor.tensor_type != gguf.GGMLQuantizationType.F32:
        problem = f"has type {tensor.tensor_type.name}, not F32"
    elif any(int(dim) != 1 for dim in tensor.shape[1:]):  # ggml_n_dims ignores trailing 1s
        problem = f"has shape {[int(dim) for dim in tensor.shape]}, not a 1-D vector"
    else:
        return int(match.group(1))
    raise VectorFileError(f"{path}: tensor {tensor.name!r} {problem}.")


def _layer_key(key: object, what: str = "each layer key") -> int:
    """Return ``key`` as an int, refusing bools, floats and strings."""
    if isinstance(key, bool) or not hasattr(key, "__index__"):
        raise SpecError(f"{what} must be an integer, got {key!r}.")
    return operator.index(key)


def _field_value(field: Any) -> object:
    """Return a GGUF metadata field's value as plain Python (str, int, float, bool, list)."""
    value = field.contents()
    return value.item() if isinstance(value, np.generic) else value
