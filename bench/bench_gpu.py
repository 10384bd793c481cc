"""GPU synthesis: native TensorRT and ONNX Runtime's CUDA provider vs PyTorch eager with
xformers attention, same tiny model, batch, steps and scheduler. Runs only where a CUDA GPU
(and, per candidate, TensorRT / onnxruntime-gpu / xformers) exists; otherwise each benchmark is
skipped with the reason, and ``bench/run.py`` prints it in RESULTS.md.

Speed without correctness is no result: each candidate's images are compared with PyTorch fp32
eager (SDPA, TF32 off) on the same prompts and seeds, and the benchmark fails above the bound
of the candidate's precision (``gpu_acceptance.BOUNDS``; all three candidates run fp32 graphs,
TensorRT and cuDNN with TF32).
"""
from __future__ import annotations

import pytest
import torch

from medfake.engine.core import capabilities as cap
from medfake.pipelines.models import load_model
from medfake.engine.diffusion.sampler import SamplerConfig
from medfake.engine.diffusion.sd_model import init_model

from gpu_acceptance import BOUNDS, image_diff  # bench/ is on sys.path when pytest runs this

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


CONFIG = SamplerConfig("dpm++", STEPS, 4.0, "", 32, 32)
SEEDS = list(range(BATCH))


@pytest.fixture(scope="module")
def reference(model_dir):
    """PyTorch fp32 images (SDPA, TF32 off) of PROMPTS and SEEDS: what every candidate must
    reproduce within its bound."""
    reason = gpu_skip_reason()
    if reason:
        pytest.skip(reason)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        sampler = load_model(str(model_dir), "torch", attention="sdpa").sampler(CONFIG)
        return sampler.generate(PROMPTS, SEEDS, output="float")
    finally:
        torch.backends.cudnn.allow_tf32 = True


def _bench(benchmark, model_dir, reference, need: str, backend: str, **opts):
    reason = gpu_skip_reason(need)
    if reason:
        pytest.skip(reason)
    sampler = load_model(str(model_dir), backend, **opts).sampler(CONFIG)

    def run():
        out = sampler.generate(PROMPTS, SEEDS, output="float")
        torch.cuda.synchronize()
        return out

    diff = image_diff(reference, run())
    benchmark.extra_info.update(per_round=BATCH, unit="img", max_image_diff=diff,
                                bound=BOUNDS["tf32"])
    assert diff <= BOUNDS["tf32"], (f"{backend} images differ from torch fp32 by {diff:.4f} "
                                    f"(bound {BOUNDS['tf32']})")
    benchmark.pedantic(run, rounds=ROUNDS)


@pytest.mark.benchmark(group=GROUP)
def test_candidate_tensorrt(benchmark, model_dir, reference):
    _bench(benchmark, model_dir, reference, "tensorrt", "tensorrt")


@pytest.mark.benchmark(group=GROUP)
def test_candidate_ort_cuda(benchmark, model_dir, reference):
    _bench(benchmark, model_dir, reference, "ort-cuda", "onnx", provider="cuda")


@pytest.mark.benchmark(group=GROUP)
def test_baseline_torch_xformers(benchmark, model_dir, reference):
    _bench(benchmark, model_dir, reference, "xformers", "torch", attention="xformers")
