"""Interleaved end-to-end synthesis timing for shared machines: medfake ONNX and torch backends
vs the stock diffusers pipeline, rounds alternating A, B, C, A, B, C, ... so load changes hit all
three alike; prints median seconds per batch and the ratios.

Usage: python bench/synthesis_interleaved.py [THREADS] [ROUNDS]   (same settings as
bench_synthesis.py: tiny SD, 20 DPM++ steps, CFG 4, batch 8, PNG encode of every image)
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time

import numpy as np
import torch
from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

from medfake.engine.backends import load_model
from medfake.engine.dataset import encode_png
from medfake.engine.sampler import SamplerConfig
from medfake.engine.sd_model import init_model

BATCH, STEPS, GUIDANCE = 8, 20, 4.0
PROMPTS = ["a CT image of a liver cyst", "a CT image of a liver metastasis"] * (BATCH // 2)


def main(threads: int = 1, rounds: int = 7) -> None:
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        model = init_model("tiny", f"{tmp}/tiny")
        cfg = SamplerConfig("dpm++", STEPS, GUIDANCE, "", 32, 32)
        onnx_s = load_model(str(model), "onnx", threads=threads).sampler(cfg)
        torch_s = load_model(str(model), "torch").sampler(cfg)
        pipe = StableDiffusionPipeline.from_pretrained(model)
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        seeds = list(range(BATCH))

        def stock():
            gens = [torch.Generator().manual_seed(s) for s in seeds]
            im = pipe(PROMPTS, height=32, width=32, num_inference_steps=STEPS,
                      guidance_scale=GUIDANCE, generator=gens, output_type="np").images
            return [encode_png(x) for x in (im * 255).round().astype(np.uint8)]

        runs = {"medfake onnx": lambda: [encode_png(x) for x in onnx_s.generate(PROMPTS, seeds)],
                "medfake torch": lambda: [encode_png(x) for x in torch_s.generate(PROMPTS, seeds)],
                "stock pipeline": stock}
        for f in runs.values():
            f()
        times: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(rounds):
            for k, f in runs.items():
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        print(f"{k:15s} {v:.3f} s/batch  {BATCH / v:6.2f} img/s  "
              f"x{med['stock pipeline'] / v:.2f} vs stock")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
