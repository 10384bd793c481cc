"""GPU synthesis: native TensorRT and ONNX Runtime's CUDA provider vs PyTorch eager with
xformers attention, same tiny model, batch, steps and scheduler. Runs only where a CUDA GPU
(and, per candidate, TensorRT / onnxruntime-gpu / xformers) exists; otherwise each benchmark is
skipped with the reason, and ``bench/run.py`` prints it in RESULTS.md.
"""
from __future__ import annotations

import pytest
import torch

from medfake.engine.core import capabilities as cap
from medfake.pipelines.models import load_model
from medfake.engine.diffusion.sampler import SamplerConfig
from medfake.engine.diffusion.sd_model import init_model

BATCH, STEPS, ROUNDS = 16, 20, 5
GROUP = f"GPU synthesis images/s (tiny SD, {STEPS} DPM++ steps, CFG, batch {BATCH})"
PROMPTS = ["a CT image of a liver cyst"] * BATCH


def gpu_skip_reason(need: str = "") -> str | None:
    if not cap.cuda().available:
        return f"no CUDA GPU ({cap.cuda().detail})"
    probe = {"tensorrt": cap.tensorrt, "xformers": cap.xformers}.get(need)
    if probe and not probe().available:
        return f"{need}: {probe().detail}"
    if need == "ort-cuda" and "CUDAExecutionProvider" not in cap.ort_providers():
        return "onnxruntime-gpu is not installed (CUDAExecutionProvider missing)"
    return None


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return init_model("tiny", tmp_path_factory.mktemp("gpu") / "tiny")


def _bench(benchmark, model_dir, need: str, backend: str, **opts):
    reason = gpu_skip_reason(need)
    if reason:
        pytest.skip(reason)
    sampler = load_model(str(model_dir), backend, **opts).sampler(
        SamplerConfig("dpm++", STEPS, 4.0, "", 32, 32))
    seeds = list(range(BATCH))

    def run():
        out = sampler.generate(PROMPTS, seeds)
        torch.cuda.synchronize()
        return out

    run()
    benchmark.extra_info.update(per_round=BATCH, unit="img")
    benchmark.pedantic(run, rounds=ROUNDS)


@pytest.mark.benchmark(group=GROUP)
def test_candidate_tensorrt(benchmark, model_dir):
    _bench(benchmark, model_dir, "tensorrt", "tensorrt")


@pytest.mark.benchmark(group=GROUP)
def test_candidate_ort_cuda(benchmark, model_dir):
    _bench(benchmark, model_dir, "ort-cuda", "onnx", provider="cuda")


@pytest.mark.benchmark(group=GROUP)
def test_baseline_torch_xformers(benchmark, model_dir):
    _bench(benchmark, model_dir, "xformers", "torch", device="cuda", attention="xformers")
