"""End-to-end synthesis throughput: medfake's ONNX Runtime and PyTorch backends vs the stock
diffusers StableDiffusionPipeline.

Same model (the `tiny` preset), prompts, scheduler (DPM++), steps, guidance, batch and thread
count (``THREADS`` in all); every candidate includes text encoding, the denoising loop, VAE
decoding and PNG encoding of each image, for ``BATCHES`` batches per round. medfake's ONNX
backend runs the batches on concurrent streams sharing the threads (``engine.sampler_streams``,
one single-threaded stream per thread on a CPU, as `medfake synth` does); its one-stream
variant shows what the streams add. Group ``synthesis``: each ``candidate`` is compared with
the ``baseline`` stock pipeline.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

from medfake.pipelines.models import load_model
from medfake.engine.data.format import encode_png
from medfake.engine.diffusion.sampler import SamplerConfig
from medfake.engine.diffusion.streams import SamplerStreams, resolve_streams, threads_per_stream
from medfake.engine.diffusion.sd_model import init_model

BATCH, BATCHES, STEPS, GUIDANCE, ROUNDS, THREADS = 8, 4, 20, 4.0, 5, 2
PROMPTS = ["a CT image of a liver cyst", "a CT image of a liver metastasis"] * (BATCH // 2)
PER_ROUND = BATCH * BATCHES
GROUP = (f"synthesis images/s (tiny SD, {STEPS} DPM++ steps, CFG, batch {BATCH}, PNG encode, "
         f"{THREADS} threads)")
CFG = SamplerConfig("dpm++", STEPS, GUIDANCE, "", 32, 32)


def _seeds(b: int) -> list[int]:
    return list(range(b * BATCH, (b + 1) * BATCH))


def medfake_runner(model_dir, backend: str, threads: int, streams: int | None = None
                   ) -> Callable[[], list[bytes]]:
    """One round: ``BATCHES`` batches generated and PNG-encoded by medfake on ``backend``."""
    n = resolve_streams(streams, backend, "cpu", threads)
    per_stream = threads_per_stream(threads, n)
    opts = {"threads": per_stream} if backend == "onnx" else {}
    model = load_model(str(model_dir), backend, **opts)
    st = SamplerStreams([model.sampler(CFG) for _ in range(n)])

    def one(sampler, b: int) -> list[bytes]:
        return [encode_png(img) for img in sampler.generate(PROMPTS, _seeds(b))]

    def run() -> list[bytes]:
        torch.set_num_threads(per_stream)
        return [png for batch in st.map(one, range(BATCHES)) for png in batch]

    run.streams = n
    return run


def stock_runner(model_dir, threads: int) -> Callable[[], list[bytes]]:
    """One round: the same batches through ``StableDiffusionPipeline``, PNG-encoded."""
    pipe = StableDiffusionPipeline.from_pretrained(model_dir)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)

    def run() -> list[bytes]:
        torch.set_num_threads(threads)
        out = []
        for b in range(BATCHES):
            gens = [torch.Generator().manual_seed(s) for s in _seeds(b)]
            images = pipe(PROMPTS, height=32, width=32, num_inference_steps=STEPS,
                          guidance_scale=GUIDANCE, generator=gens, output_type="np").images
            out += [encode_png(img) for img in (images * 255).round().astype(np.uint8)]
        return out

    return run


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return init_model("tiny", tmp_path_factory.mktemp("bench") / "tiny")


def _bench(benchmark, run: Callable[[], list[bytes]]) -> None:
    run()  # warm-up
    benchmark.extra_info.update(per_round=PER_ROUND, unit="img")
    assert len(benchmark.pedantic(run, rounds=ROUNDS)) == PER_ROUND


@pytest.mark.benchmark(group=GROUP)
def test_candidate_medfake_onnx(benchmark, model_dir):
    _bench(benchmark, medfake_runner(model_dir, "onnx", THREADS))


@pytest.mark.benchmark(group=GROUP)
def test_candidate_medfake_onnx_one_stream(benchmark, model_dir):
    _bench(benchmark, medfake_runner(model_dir, "onnx", THREADS, streams=1))


@pytest.mark.benchmark(group=GROUP)
def test_candidate_medfake_torch(benchmark, model_dir):
    _bench(benchmark, medfake_runner(model_dir, "torch", THREADS))


@pytest.mark.benchmark(group=GROUP)
def test_baseline_stock_pipeline(benchmark, model_dir):
    _bench(benchmark, stock_runner(model_dir, THREADS))
