"""Synthesis throughput: medfake's PyTorch path vs the stock diffusers StableDiffusionPipeline.

Same model (the `tiny` preset), prompts, scheduler (DPM++), steps, guidance, batch and thread
count; both include text encoding, the denoising loop and VAE decoding to uint8 images.
Group ``synthesis``: ``candidate`` is medfake, ``baseline`` the stock pipeline.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

from medfake.engine.sampler import Sampler, SamplerConfig, TorchBackend
from medfake.engine.sd_model import init_model, load_components

BATCH, STEPS, GUIDANCE, ROUNDS = 8, 20, 4.0, 5
PROMPTS = ["a CT image of a liver cyst", "a CT image of a liver metastasis"] * (BATCH // 2)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.set_num_threads(2)
    return init_model("tiny", tmp_path_factory.mktemp("bench") / "tiny")


@pytest.mark.benchmark(group="synthesis images/s (tiny SD, 20 DPM++ steps, CFG, batch 8)")
def test_candidate_medfake_torch(benchmark, model_dir):
    comps = load_components(model_dir)
    sampler = Sampler(TorchBackend(comps), comps.tokenizer, comps.scheduler.config,
                      SamplerConfig("dpm++", STEPS, GUIDANCE, "", 32, 32))
    seeds = list(range(BATCH))
    sampler.generate(PROMPTS, seeds)  # warm-up
    benchmark.extra_info["images_per_round"] = BATCH
    out = benchmark.pedantic(sampler.generate, args=(PROMPTS, seeds), rounds=ROUNDS)
    assert out.shape == (BATCH, 32, 32, 3)


@pytest.mark.benchmark(group="synthesis images/s (tiny SD, 20 DPM++ steps, CFG, batch 8)")
def test_baseline_stock_pipeline(benchmark, model_dir):
    pipe = StableDiffusionPipeline.from_pretrained(model_dir)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)

    def run():
        gens = [torch.Generator().manual_seed(s) for s in range(BATCH)]
        images = pipe(PROMPTS, height=32, width=32, num_inference_steps=STEPS,
                      guidance_scale=GUIDANCE, generator=gens, output_type="np").images
        return (images * 255).round().astype(np.uint8)

    run()
    benchmark.extra_info["images_per_round"] = BATCH
    out = benchmark.pedantic(run, rounds=ROUNDS)
    assert out.shape == (BATCH, 32, 32, 3)
