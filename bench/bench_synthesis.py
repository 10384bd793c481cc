"""End-to-end synthesis throughput: medfake's ONNX Runtime and PyTorch backends vs the stock
diffusers StableDiffusionPipeline.

Same model (the `tiny` preset), prompts, scheduler (DPM++), steps, guidance, batch and thread
count (2 torch threads, 2 ORT intra-op threads); every candidate includes text encoding, the
denoising loop, VAE decoding and PNG encoding of each image. Group ``synthesis``: each
``candidate`` is compared with the ``baseline`` stock pipeline.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

from medfake.engine.backends import load_model
from medfake.engine.dataset import encode_png
from medfake.engine.sampler import SamplerConfig
from medfake.engine.sd_model import init_model

BATCH, STEPS, GUIDANCE, ROUNDS, THREADS = 8, 20, 4.0, 5, 2
PROMPTS = ["a CT image of a liver cyst", "a CT image of a liver metastasis"] * (BATCH // 2)
GROUP = f"synthesis images/s (tiny SD, {STEPS} DPM++ steps, CFG, batch {BATCH}, PNG encode)"
CFG = SamplerConfig("dpm++", STEPS, GUIDANCE, "", 32, 32)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.set_num_threads(THREADS)
    return init_model("tiny", tmp_path_factory.mktemp("bench") / "tiny")


def _run_medfake(benchmark, model_dir, backend: str, **opts):
    sampler = load_model(str(model_dir), backend, **opts).sampler(CFG)
    seeds = list(range(BATCH))

    def run():
        return [encode_png(img) for img in sampler.generate(PROMPTS, seeds)]

    run()  # warm-up
    benchmark.extra_info.update(per_round=BATCH, unit="img")
    out = benchmark.pedantic(run, rounds=ROUNDS)
    assert len(out) == BATCH


@pytest.mark.benchmark(group=GROUP)
def test_candidate_medfake_onnx(benchmark, model_dir):
    _run_medfake(benchmark, model_dir, "onnx", threads=THREADS)


@pytest.mark.benchmark(group=GROUP)
def test_candidate_medfake_torch(benchmark, model_dir):
    _run_medfake(benchmark, model_dir, "torch")


@pytest.mark.benchmark(group=GROUP)
def test_baseline_stock_pipeline(benchmark, model_dir):
    pipe = StableDiffusionPipeline.from_pretrained(model_dir)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)

    def run():
        gens = [torch.Generator().manual_seed(s) for s in range(BATCH)]
        images = pipe(PROMPTS, height=32, width=32, num_inference_steps=STEPS,
                      guidance_scale=GUIDANCE, generator=gens, output_type="np").images
        return [encode_png(img) for img in (images * 255).round().astype(np.uint8)]

    run()
    benchmark.extra_info.update(per_round=BATCH, unit="img")
    out = benchmark.pedantic(run, rounds=ROUNDS)
    assert len(out) == BATCH
