"""The openvino backend: OpenVINO's CPU plugin on the ONNX export, behind the backend registry."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from medfake.engine.core import capabilities as cap
from medfake.engine.diffusion.backends import BACKENDS, load_model as engine_load_model
from medfake.engine.diffusion.sampler import SamplerConfig
from medfake.engine.diffusion.sd_model import init_model
from medfake.export.onnx_export import export_onnx
from medfake.pipelines.models import load_model

pytestmark = pytest.mark.skipif(not cap.openvino().available,
                                reason=f"OpenVINO {cap.openvino().detail} (medfake[openvino])")
CFG = SamplerConfig("dpm++", 6, 4.0, "", 32, 32)
PROMPTS, SEEDS = ["a CT image of a cyst", "a CT image of a hemangioma"], [3, 4]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return init_model("tiny", tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    return export_onnx(str(tiny), str(tmp_path_factory.mktemp("onnx") / "export"))


def test_openvino_fp32_matches_torch_and_onnx_runtime(tiny, exported):
    ref = load_model(str(tiny), "torch").sampler(CFG).generate(PROMPTS, SEEDS, output="float")
    ov = load_model(str(exported), "openvino", precision="fp32", threads=2)
    assert ov.backend_name == "openvino" and ov.details["precision"] == "fp32"
    got = ov.sampler(CFG).generate(PROMPTS, SEEDS, output="float")
    assert got.shape == ref.shape == (2, 32, 32, 3)
    assert np.abs(got - ref).max() < 1e-3
    # the VAE encoder (inpainting/outpainting) against ONNX Runtime on the same graph
    ort = load_model(str(exported), "onnx", threads=2)
    img = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.allclose(ov.backend.vae_encode(img), ort.backend.vae_encode(img), atol=1e-4)


def on_two_threads(model) -> dict[int, np.ndarray]:
    """Each of two threads samples one prompt/seed of PROMPTS/SEEDS at once on ``model``."""
    got: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        got[i] = model.sampler(CFG).generate([PROMPTS[i]], [SEEDS[i]], output="float")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return got


def test_openvino_streams_use_their_own_infer_requests(exported):
    """Two threads on one backend (as `--streams 2` runs) give what one thread gives."""
    model = load_model(str(exported), "openvino", precision="fp32", threads=1)
    alone = [model.sampler(CFG).generate([p], [s], output="float") for p, s in zip(PROMPTS, SEEDS)]
    got = on_two_threads(model)
    for i in range(2):
        assert np.array_equal(got[i], alone[i])


def test_precision_auto_never_bf16_without_native_bf16(monkeypatch):
    from medfake.engine.diffusion.backends import ov_backend
    monkeypatch.setattr(cap, "openvino_bf16", lambda: False)
    assert ov_backend.resolve_precision("auto") == "fp32"
    with pytest.raises(cap.CapabilityError, match="native bf16"):
        ov_backend.resolve_precision("bf16")
    monkeypatch.setattr(cap, "openvino_bf16", lambda: True)
    assert ov_backend.resolve_precision("auto") == ov_backend.resolve_precision("bf16") == "bf16"
    with pytest.raises(ValueError, match="fp32"):
        ov_backend.resolve_precision("fp16")
    monkeypatch.undo()
    assert ov_backend.resolve_precision("auto") == ("bf16" if cap.openvino_bf16() else "fp32")


def test_not_installed_is_one_clear_error(exported, monkeypatch):
    monkeypatch.setattr(cap, "openvino", lambda: cap.Probe(
        "openvino", False, "", "not installed: pip install 'medfake[openvino]'"))
    assert "medfake[openvino]" in BACKENDS["openvino"].unavailable()
    with pytest.raises(cap.CapabilityError, match=r"medfake\[openvino\]"):
        engine_load_model(str(exported), "openvino")


def test_synth_on_openvino_records_backend_and_precision(exported, tiny, small_world, tmp_path):
    """`medfake synth --backend openvino` writes shards whose every sample says at what
    precision it was made (as every backend's samples do); the precision is in the job's
    identity."""
    import json

    from medfake.engine.data.reader import load_split
    from medfake.engine.diffusion.backends import ov_backend, torch_backend
    from medfake.pipelines.synth import SynthConfig, run_job
    _, hospital = small_world
    # the default precision is auto: OpenVINO's is bf16 on a CPU with native bf16, torch's fp32
    made_at = {"openvino": ov_backend.resolve_precision("auto"),
               "torch": torch_backend.resolve_precision("auto")}
    for backend, model in (("openvino", exported), ("torch", tiny)):
        out = tmp_path / backend
        res = run_job(SynthConfig(str(model), str(hospital), str(out), per_class=2, steps=2,
                                  samples_per_shard=4, batch_size=2, backend=backend,
                                  threads=2))
        assert res.complete
        metas = load_split(out, "train").metas
        assert {(m["backend"], m["precision"]) for m in metas} == {(backend, made_at[backend])}
    plan = json.loads((tmp_path / "openvino" / "synth_plan.json").read_text())
    assert plan["precision"] == made_at["openvino"] and "precision" not in json.loads(
        (tmp_path / "torch" / "synth_plan.json").read_text())


def test_openvino_runs_one_stream():
    """OpenVINO's own streams stay at one and an automatic job runs one stream of all the
    threads (its throughput mode crashed the test process); it is not calibrated."""
    from medfake.engine.diffusion.backends.ov_backend import compile_config
    from medfake.engine.diffusion.streams import resolve_streams
    from medfake.pipelines.synth import SynthConfig, _calibrates
    assert compile_config("fp32", 2) == {"INFERENCE_PRECISION_HINT": "f32",
                                         "INFERENCE_NUM_THREADS": 2,
                                         "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
    assert resolve_streams(None, "openvino", "cpu", 2) == 1
    assert not _calibrates(SynthConfig("m", "r", "o", backend="openvino"))
