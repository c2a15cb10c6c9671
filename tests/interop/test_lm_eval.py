"""Vectors exported for lm-evaluation-harness's ``steered`` model, checked by lm-eval itself.

Both sides load the same Hugging Face folder: lm-eval as ``pretrained=FOLDER`` with the exported
``steer_path``, steerlens with ``load_model(FOLDER)``. lm-eval's ``loglikelihood`` (called
directly, so no task data from the hub is needed) must equal steerlens's
`completion_logprobs` under the same steering. The same check, run on a file whose hook points
are one layer off, must fail: that is what makes it a check of the layer mapping.
"""

from __future__ import annotations

import pytest
import torch
from tolerances import FAMILY_GAIN, logprob_bound, rounding_gain

import steerlens
from steerlens import Steering, SteeringVector
from steerlens.errors import LayerError, OutputPathError, SpecError
from steerlens.evaluation import completion_logprobs
from steerlens.io.lm_eval_file import read_steer_file
from steerlens.steering.interventions import Ablate, Add, Clamp
from steerlens.testing import tiny_hf_model

hf_steered = pytest.importorskip("lm_eval.models.hf_steered")
from lm_eval.api.instance import Instance  # noqa: E402

REQUESTS = [
    ("The cat sat on the", " mat and purred."),
    ("In the beginning there was", " light, and then tea."),
    ("Please answer yes or no:", " yes"),
]
TOLERANCE = 2e-4  # nats: the embedded model's measured float32 gap (slow test below)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    hf_model, tok = tiny_hf_model("llama", n_layers=4)
    folder = tmp_path_factory.mktemp("tiny-llama")
    hf_model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny(tiny_folder):
    # float64 on both sides, so that only the attention softmax rounds in float32 (`bounds`)
    model = steerlens.load_model(tiny_folder, device="cpu", dtype=torch.float64)
    tokens = torch.tensor([steerlens.runtime.encode(model, "".join(REQUESTS[0]))])
    assert rounding_gain(model, tokens) < FAMILY_GAIN  # the premise of `bounds`
    return model


def bounds(model, steering) -> torch.Tensor:
    """Per request, how far lm-eval's total may be from steerlens's: k tokens, each
    log-probability within `logprob_bound` of the float32 attention softmax over at most n
    keys (n the row's tokens), at the largest logit L seen, grown by the layers by less than
    FAMILY_GAIN (tests/tolerances.py)."""
    out = []
    for prompt, completion in REQUESTS:
        ids = steerlens.runtime.encode(model, prompt + completion)
        with torch.no_grad(), steerlens.steer(model, steering):
            largest = float(model(torch.tensor([ids])).abs().max())
        out.append(len(ids) * FAMILY_GAIN * logprob_bound(len(ids), largest))
    return torch.tensor(out, dtype=torch.float64)


def assert_within(theirs, ours, bound):
    gap = (theirs - ours).abs()
    assert bool((gap <= bound).all()), (gap, bound)


def _vector(model, layers, seed=3, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    d = steerlens.runtime.d_model(model)
    return SteeringVector(
        {la: scale * torch.randn(d, generator=gen) for la in layers},
        model_id=steerlens.runtime.model_id(model),
    )


def lm_eval_loglikelihoods(folder, steer_path, dtype="float64") -> torch.Tensor:
    """What lm-eval's ``steered`` model, loaded from the folder and file, says."""
    lm = hf_steered.SteeredModel(
        pretrained=str(folder), steer_path=str(steer_path), device="cpu", dtype=dtype
    )
    requests = [
        Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=i)
        for i, pair in enumerate(REQUESTS)
    ]
    return torch.tensor([ll for ll, _ in lm.loglikelihood(requests)], dtype=torch.float64)


def steerlens_loglikelihoods(model, steering) -> torch.Tensor:
    totals = [
        completion_logprobs(model, prompt, completion, steering=steering, chat=False).totals[0, 0]
        for prompt, completion in REQUESTS
    ]
    return torch.tensor([float(t) for t in totals], dtype=torch.float64)


def _shifted(vector: SteeringVector, by: int) -> SteeringVector:
    return SteeringVector(
        {la + by: v for la, v in vector.directions.items()}, model_id=vector.model_id
    )


CASES = [
    pytest.param((2,), Add, 3.0, id="one-layer-add"),
    pytest.param((1, 2, 3), Add, 2.0, id="three-layer-add"),
    pytest.param((2, 3), Clamp, 1.5, id="two-layer-clamp"),
]


@pytest.mark.parametrize(("layers", "kind", "strength"), CASES)
def test_lm_eval_steers_like_steerlens(tiny, tiny_folder, tmp_path, layers, kind, strength):
    vector = _vector(tiny, layers)
    plan = Steering(vector, strength=strength, kind=kind)
    path = plan.to_lm_eval(tmp_path / "steer.pt", model=tiny)
    theirs = lm_eval_loglikelihoods(tiny_folder, path)
    ours = steerlens_loglikelihoods(tiny, plan)
    unsteered = steerlens_loglikelihoods(tiny, None)
    bound = bounds(tiny, plan)
    assert (ours - unsteered).abs().max() > 10 * bound.max()  # the steering does something
    assert_within(theirs, ours, bound)

    # The same check on a file one layer off fails: it would catch an off-by-one mapping.
    # (Layer 4 does not exist on this 4-layer model, so shift down where the top is used.)
    by = -1 if max(layers) == 3 else 1
    if min(layers) + by >= 1:
        off = Steering(_shifted(vector, by), strength=strength, kind=kind)
        wrong = lm_eval_loglikelihoods(tiny_folder, off.to_lm_eval(tmp_path / "off.pt"))
        assert (wrong - ours).abs().max() > 10 * bound.max()


def test_multi_layer_files_apply_each_layer_its_own_vector(tiny, tiny_folder, tmp_path):
    # A hook that read its loop's variables late would add the last layer's vector everywhere.
    vector = _vector(tiny, (1, 3))
    path = vector.to_lm_eval(tmp_path / "steer.pt", strength=2.0)
    theirs = lm_eval_loglikelihoods(tiny_folder, path)
    last_everywhere = SteeringVector(
        {1: vector.directions[3], 3: vector.directions[3]}, model_id=vector.model_id
    )
    late_bound = steerlens_loglikelihoods(tiny, Steering(last_everywhere, strength=2.0))
    ours = steerlens_loglikelihoods(tiny, Steering(vector, strength=2.0))
    bound = bounds(tiny, Steering(vector, strength=2.0))
    assert_within(theirs, ours, bound)
    assert (late_bound - ours).abs().max() > 10 * bound.max()


def test_ablation_is_a_clamp_to_zero(tiny, tiny_folder, tmp_path):
    vector = _vector(tiny, (2,))
    plan = Steering(vector, kind=Ablate)
    entries = read_steer_file(plan.to_lm_eval(tmp_path / "steer.pt"))
    assert [(h, e.action, e.coefficient) for h, e in entries.items()] == [("layers.1", "clamp", 0)]
    theirs = lm_eval_loglikelihoods(tiny_folder, tmp_path / "steer.pt")
    assert_within(theirs, steerlens_loglikelihoods(tiny, plan), bounds(tiny, plan))


@pytest.mark.slow
def test_lm_eval_steers_the_embedded_model_like_steerlens(tmp_path):
    from steerlens.loading.cache import cache_lookup, cache_root
    from steerlens.loading.model import embedded_gguf_path

    model = steerlens.load_model(device="cpu")
    folder, _, _ = cache_lookup(embedded_gguf_path(), cache_root(), embedded=True)
    vector = _vector(model, (4, 9), scale=0.5)
    plan = Steering(vector, strength=4.0)
    ours = steerlens_loglikelihoods(model, plan)
    assert (ours - steerlens_loglikelihoods(model, None)).abs().max() > 0.1
    steer_file = plan.to_lm_eval(tmp_path / "steer.pt", model=model)
    theirs = lm_eval_loglikelihoods(folder, steer_file, dtype="float32")
    torch.testing.assert_close(theirs, ours, atol=TOLERANCE, rtol=0)
    off = lm_eval_loglikelihoods(
        folder, _shifted(vector, 1).to_lm_eval(tmp_path / "off.pt", strength=4.0), "float32"
    )
    assert (off - ours).abs().max() > 0.1


# --- the file and what is refused ------------------------------------------------------------


def test_the_file_is_what_lm_eval_reads(tiny, tmp_path):
    vector = _vector(tiny, (1, 3))
    path = vector.to_lm_eval(tmp_path / "steer.pt", strength=-2.5, model=tiny)
    raw = torch.load(path, weights_only=True)
    assert sorted(raw) == ["layers.0", "layers.2"]  # our layer l is decoder layer l - 1's output
    assert raw["layers.2"]["action"] == "add"
    assert raw["layers.2"]["steering_coefficient"] == -2.5
    assert raw["layers.2"]["bias"] is None and raw["layers.2"]["head_index"] is None
    assert torch.equal(raw["layers.2"]["steering_vector"], vector.directions[3])
    clamp = read_steer_file(vector.to_lm_eval(tmp_path / "c.pt", strength=2.0, kind=Clamp))
    # the strength times the float64 norm, as written
    assert clamp["layers.0"].coefficient == 2.0 * float(vector.directions[1].double().norm())


def test_what_lm_eval_cannot_express_is_refused(tiny, tmp_path):
    with pytest.raises(SpecError, match="layer 0 cannot be written"):
        _vector(tiny, (0, 2)).to_lm_eval(tmp_path / "s.pt")
    with pytest.raises(SpecError, match="every token"):
        Steering(_vector(tiny, (2,)), positions="last:3").to_lm_eval(tmp_path / "s.pt")
    with pytest.raises(SpecError, match=r"strength 0\.5 cannot be exported"):
        _vector(tiny, (2,)).to_lm_eval(tmp_path / "s.pt", kind=Ablate, strength=0.5)
    with pytest.raises(SpecError, match="wrap a tensor"):
        Steering(torch.ones(64), layer=2).to_lm_eval(tmp_path / "s.pt")
    affine = SteeringVector(
        {2: torch.ones(64)}, model_id="m", affine={2: (torch.ones(1, 64), torch.ones(1, 64))}
    )
    with pytest.raises(SpecError, match="affine parts"):
        affine.to_lm_eval(tmp_path / "s.pt")
    clamp_trained = SteeringVector(
        {2: torch.ones(64)}, model_id="m", provenance={"steering": "clamp"}
    )
    with pytest.raises(SpecError, match="additive_ok=True"):
        clamp_trained.to_lm_eval(tmp_path / "s.pt")
    assert clamp_trained.to_lm_eval(tmp_path / "s.pt", kind=Clamp).exists()
    with pytest.raises(OutputPathError, match=r"\*\.pt or \*\.pth"):
        _vector(tiny, (2,)).to_lm_eval(tmp_path / "steer.safetensors")
    with pytest.raises(LayerError):
        _vector(tiny, (4,)).to_lm_eval(tmp_path / "s.pt", model=tiny)  # 4 layers: 0-3
    assert not (tmp_path / "steer.safetensors").exists()


def test_the_cli_writes_the_file_and_refuses_what_lm_eval_cannot_do(tiny, tmp_path, capsys):
    from steerlens.cli import main

    source = _vector(tiny, (1, 3)).save(tmp_path / "v.safetensors")
    out = tmp_path / "steer.pt"
    assert main(["export", "lm-eval", str(source), "-o", str(out), "--strength", "4"]) == 0
    assert "layers.0, layers.2" in capsys.readouterr().out
    entries = read_steer_file(out)
    assert [(h, e.action, e.coefficient) for h, e in entries.items()] == [
        ("layers.0", "add", 4.0),
        ("layers.2", "add", 4.0),
    ]
    argv = ["export", "lm-eval", str(source), "-o", str(tmp_path / "p.pt"), "--positions", "last:2"]
    assert main(argv) == 2
    assert "every token" in capsys.readouterr().err
    assert not (tmp_path / "p.pt").exists()
