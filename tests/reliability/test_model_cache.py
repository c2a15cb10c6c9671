"""The model cache and load_model: no lasting side effects, nothing left behind, shareable,
safe when processes race, and clear errors before any loading."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

from steerlens.errors import CacheError, ModelError, SpecError
from steerlens.loading import cache as cache_mod
from steerlens.loading import hub as hub_mod
from steerlens.loading import model as model_mod

CACHE_NAME = "smollm2-135m-instruct-cfcf9be18ff3d14b-v1"  # of fake_gguf's bytes


class Stop(Exception):
    """Raised by a fake step to end a load once the behaviour under test has happened."""


def stop(*args: object) -> None:
    raise Stop


def fake_convert(gguf: Path, out: Path) -> None:
    # Like safetensors, write the weights private (0o600) whatever the umask.
    fd = os.open(out / "model.safetensors", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"w" * 1000)
    os.close(fd)
    (out / "config.json").write_text("{}")


@pytest.fixture
def fake_gguf(tmp_path, monkeypatch):
    """A fake embedded GGUF file; its cache folder is ``cache_root() / CACHE_NAME``."""
    gguf = tmp_path / "pkg" / "fake.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF fake")
    assert hashlib.sha256(gguf.read_bytes()).hexdigest()[:16] in CACHE_NAME
    monkeypatch.setattr(model_mod, "embedded_gguf_path", lambda: gguf)
    monkeypatch.setenv("STEERLENS_CACHE", str(tmp_path / "cache"))
    return gguf


def valid_cache(folder: Path, fill: bytes = b"w") -> Path:
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(fill * 1000)
    cache_mod.write_manifest(folder, source="test")
    assert cache_mod.cache_is_valid(folder)
    return folder


# Case 1: the offline switch is for the embedded load only.


@pytest.mark.parametrize("before", [None, "0"])
def test_embedded_load_restores_the_offline_environment_even_on_error(
    fake_gguf, monkeypatch, before
):
    from huggingface_hub import constants

    for flag in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if before is None:
            monkeypatch.delenv(flag, raising=False)
        else:
            monkeypatch.setenv(flag, before)
    switch = constants.HF_HUB_OFFLINE
    seen = {}

    def convert(gguf, out):
        seen.update(env=os.environ["HF_HUB_OFFLINE"], switch=constants.HF_HUB_OFFLINE)
        raise Stop

    monkeypatch.setattr(cache_mod, "convert_embedded", convert)
    with pytest.raises(Stop):
        model_mod.load_embedded_model(device="cpu")
    assert seen == {"env": "1", "switch": True}  # offline during the load
    for flag in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        assert os.environ.get(flag) == before
    assert constants.HF_HUB_OFFLINE is switch


def test_hub_offline_leaves_a_fresh_process_online():
    # huggingface_hub reads the flags when first imported: importing it inside the block must
    # not leave the process (or its subprocesses) offline.
    code = textwrap.dedent(
        """
        import os, subprocess, sys
        from steerlens.loading.hub import hub_offline
        with hub_offline():
            from huggingface_hub import constants
            assert constants.HF_HUB_OFFLINE
        assert not constants.HF_HUB_OFFLINE
        assert "HF_HUB_OFFLINE" not in os.environ and "TRANSFORMERS_OFFLINE" not in os.environ
        child = "import os; print(os.environ.get('HF_HUB_OFFLINE'))"
        print(subprocess.run([sys.executable, "-c", child], capture_output=True, text=True).stdout)
        """
    )
    env = {
        k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    }
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "None"


# Case 2: dtype, device and hub names are checked up front, and fail fast.


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"dtype": "float16"}, r"got 'float16' \(str\).*dtype=torch\.float16"),
        ({"dtype": torch.int64}, r"floating-point.*torch\.int64"),
        ({"device": "tpu"}, r"unknown device 'tpu'.*'cpu'"),
        ({"device": 3}, r"device must be a string.*got 3"),
    ],
)
def test_load_model_checks_dtype_and_device_before_loading(monkeypatch, kwargs, pattern):
    monkeypatch.setattr(model_mod, "load_embedded_model", lambda **kw: pytest.fail("loaded"))
    with pytest.raises(SpecError, match=pattern):
        model_mod.load_model(**kwargs)


def test_cuda_on_a_machine_without_it_is_refused_before_loading(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(model_mod, "load_embedded_model", lambda **kw: pytest.fail("loaded"))
    with pytest.raises(SpecError, match=r"device 'cuda' is not available.*use device 'cpu'"):
        model_mod.load_model(device="cuda")


def test_unknown_hub_model_without_network_fails_fast_and_clearly(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(model_mod, "hub_unreachable", lambda timeout=5.0: "no network (test)")
    switch = constants.HF_HUB_OFFLINE
    start = time.monotonic()
    with pytest.raises(ModelError, match=r"'no-such-org/no-such-model'.*no network \(test\)"):
        model_mod.load_model("no-such-org/no-such-model", device="cpu")
    assert time.monotonic() - start < 20  # the hub client's retries alone take ~25 s
    assert "HF_HUB_OFFLINE" not in os.environ and constants.HF_HUB_OFFLINE is switch


def test_hub_probe_is_bounded_in_time():
    start = time.monotonic()
    answer = hub_mod.hub_unreachable(timeout=1.0)
    assert time.monotonic() - start < 3.5
    assert answer is None or (isinstance(answer, str) and answer)


# Case 4: staging folders of killed conversions are swept.


def test_staging_of_a_killed_conversion_is_swept(tmp_path):
    root = tmp_path / "cache"
    code = textwrap.dedent(
        f"""
        import os, sys
        from pathlib import Path
        from steerlens.loading import cache

        def convert(gguf, out):
            (out / "model.safetensors").write_bytes(b"partial")
            os._exit(9)  # killed mid-conversion: no cleanup runs

        cache.convert_embedded = convert
        cache.build_cache(Path(sys.argv[1]), Path(sys.argv[2]) / {CACHE_NAME!r})
        """
    )
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"x")
    done = subprocess.run([sys.executable, "-c", code, str(gguf), str(root)], timeout=120)
    assert done.returncode == 9
    (dead,) = root.iterdir()
    assert dead.name.startswith(f".{CACHE_NAME}.")
    # The same name with a live process's pid (this one) is a conversion in progress.
    _, pid_host, rand = dead.name.rsplit(".", 2)
    live = root / f".{CACHE_NAME}.{os.getpid()}@{pid_host.split('@')[1]}.{rand}"
    live.mkdir()
    published = valid_cache(root / CACHE_NAME)

    assert cache_mod.sweep_stale_staging(root) == [dead]
    assert live.is_dir() and cache_mod.cache_is_valid(published)


def test_old_staging_without_a_pid_is_swept_by_age_and_others_are_kept(tmp_path):
    root = tmp_path / "cache"
    root.mkdir()
    hours_ago = time.time() - 2 * 3600
    old = root / f".{CACHE_NAME}.k3_x9abc"  # mkdtemp's name, from older steerlens versions
    fresh = root / f".{CACHE_NAME}.a1b2c3d4"
    other_host = root / f".{CACHE_NAME}.1@elsewhere.a1b2c3d4"
    unrelated = root / ".my-own-folder.1234.abc"
    published = valid_cache(root / CACHE_NAME)
    for path in (old, fresh, other_host, unrelated):
        path.mkdir()
    for path in (old, unrelated, published):
        os.utime(path, (hours_ago, hours_ago))

    assert cache_mod.sweep_stale_staging(root) == [old]
    assert fresh.is_dir() and other_host.is_dir() and unrelated.is_dir()
    assert cache_mod.cache_is_valid(published)
    os.utime(other_host, (hours_ago, hours_ago))
    assert cache_mod.sweep_stale_staging(root) == [other_host]


def test_the_next_load_sweeps_stale_staging(fake_gguf, monkeypatch, tmp_path):
    stale = tmp_path / "cache" / f".{CACHE_NAME}.k3_x9abc"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"partial")
    hours_ago = time.time() - 2 * 3600
    os.utime(stale, (hours_ago, hours_ago))
    monkeypatch.setattr(cache_mod, "convert_embedded", stop)
    with pytest.raises(Stop):
        model_mod.load_embedded_model(device="cpu")
    assert not stale.exists()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == []  # nor the new staging


# Case 5: a cache others can read.


@pytest.mark.parametrize(
    ("umask", "dir_mode", "file_mode"), [(0o022, 0o755, 0o644), (0o002, 0o775, 0o664)]
)
def test_published_cache_follows_the_umask(tmp_path, monkeypatch, umask, dir_mode, file_mode):
    monkeypatch.setattr(cache_mod, "convert_embedded", fake_convert)
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"x")
    previous = os.umask(umask)
    try:
        folder = cache_mod.build_cache(gguf, tmp_path / "cache" / CACHE_NAME)
    finally:
        os.umask(previous)
    assert cache_mod.cache_is_valid(folder)
    assert folder.stat().st_mode & 0o777 == dir_mode
    assert {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()} == dict.fromkeys(
        ["model.safetensors", "config.json", "manifest.json"], file_mode
    )


def test_a_readable_cache_that_cannot_be_written_is_used_read_only(fake_gguf, monkeypatch):
    folder = valid_cache(cache_mod.cache_root() / CACHE_NAME)
    for path in folder.iterdir():
        path.chmod(0o444)
    folder.chmod(0o555)  # another user's cache, as seen by us
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    used = []
    monkeypatch.setattr(cache_mod, "build_cache", lambda *a: pytest.fail("rebuilt"))
    monkeypatch.setattr(model_mod, "load_cache", lambda f: stop(used.append(f)))
    try:
        with pytest.raises(Stop):
            model_mod.load_embedded_model(device="cpu")
    finally:
        folder.chmod(0o755)
    assert used == [folder]
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before


@pytest.mark.skipif(os.name == "nt" or os.geteuid() == 0, reason="root reads every file")
def test_a_private_cache_of_another_user_is_unreadable_not_damaged(tmp_path):
    folder = valid_cache(tmp_path / CACHE_NAME)
    folder.chmod(0o000)
    try:
        assert cache_mod.cache_state(folder) == "unreadable"
    finally:
        folder.chmod(0o755)


def test_an_unreadable_cache_is_left_alone_with_a_clear_warning(fake_gguf, monkeypatch, caplog):
    folder = cache_mod.cache_root() / CACHE_NAME
    folder.mkdir(parents=True)
    monkeypatch.setattr(
        cache_mod, "cache_state", lambda f: "unreadable" if f == folder else "absent"
    )
    built = []
    monkeypatch.setattr(cache_mod, "build_cache", lambda gguf, f: stop(built.append(f)))
    with pytest.raises(Stop):
        model_mod.load_embedded_model(device="cpu")
    assert built == [cache_mod.scratch_folder() / CACHE_NAME]  # never the other user's folder
    assert "cannot read the model cache" in caplog.text and "chmod -R a+rX" in caplog.text
    assert "damaged" not in caplog.text


# Case 6: processes converting at the same time.


def test_publish_keeps_a_valid_folder_published_first(tmp_path):
    folder = valid_cache(tmp_path / CACHE_NAME, fill=b"a")
    inode = (folder / "model.safetensors").stat().st_ino
    staging = valid_cache(tmp_path / f".{CACHE_NAME}.1@h.abc", fill=b"b")
    assert cache_mod.publish_cache(staging, folder) == folder
    assert (folder / "model.safetensors").stat().st_ino == inode  # theirs, untouched
    assert staging.is_dir()  # left for the caller (build_cache) to delete


def test_publish_replaces_a_damaged_folder(tmp_path):
    folder = valid_cache(tmp_path / CACHE_NAME, fill=b"a")
    (folder / "model.safetensors").write_bytes(b"a" * 10)
    staging = valid_cache(tmp_path / f".{CACHE_NAME}.1@h.abc", fill=b"b")
    assert cache_mod.publish_cache(staging, folder) == folder
    assert cache_mod.cache_is_valid(folder)
    assert (folder / "model.safetensors").read_bytes() == b"b" * 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([CACHE_NAME, f".{CACHE_NAME}.lock"])


def test_a_damaged_folder_is_not_replaced_where_no_lock_can_be_made(tmp_path, monkeypatch):
    folder = valid_cache(tmp_path / CACHE_NAME, fill=b"a")
    (folder / "model.safetensors").write_bytes(b"a" * 10)
    staging = valid_cache(tmp_path / f".{CACHE_NAME}.1@h.abc", fill=b"b")

    def refuse(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "read-only", str(tmp_path))

    monkeypatch.setattr(cache_mod.FileLock, "acquire", refuse)
    with pytest.raises(PermissionError, match="cannot be used"):
        cache_mod.publish_cache(staging, folder)
    assert (folder / "model.safetensors").read_bytes() == b"a" * 10  # left as it was


@pytest.mark.parametrize("damaged_first", [False, True])
def test_simultaneous_first_conversions_all_succeed(tmp_path, monkeypatch, damaged_first):
    n = 4
    barrier = threading.Barrier(n)
    folder = tmp_path / "cache" / CACHE_NAME
    if damaged_first:
        valid_cache(folder)
        (folder / "model.safetensors").write_bytes(b"")

    def convert(gguf, out):
        fake_convert(gguf, out)
        barrier.wait(timeout=30)  # everyone has staged: all publish at once

    monkeypatch.setattr(cache_mod, "convert_embedded", convert)
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"x")
    results: list[object] = []

    def worker():
        try:
            got = cache_mod.build_cache(gguf, folder)
            results.append(cache_mod.cache_is_valid(got) and got)
        except BaseException as exc:  # reported below
            results.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [folder] * n
    left = sorted(p.name for p in folder.parent.iterdir())
    assert left in ([CACHE_NAME], sorted([CACHE_NAME, f".{CACHE_NAME}.lock"]))  # no staging


def test_no_writable_folder_at_all_is_a_cache_error(fake_gguf, monkeypatch):
    def full(gguf, folder):
        raise OSError(errno.ENOSPC, "No space left on device", str(folder))

    monkeypatch.setattr(cache_mod, "build_cache", full)
    with pytest.raises(CacheError, match=r"No space left on device.*STEERLENS_CACHE"):
        model_mod.load_embedded_model(device="cpu")
