"""The synthesis job end to end, and its shard writer.

Group ``synthesis job``: images per second *written to disk*, same model (the ``tiny`` preset),
prompts, scheduler (DPM++), steps, guidance, batch and thread count (2, or
``$MEDFAKE_BENCH_THREADS``):

- ``baseline``: the stock diffusers ``StableDiffusionPipeline`` followed by a plain save loop
  writing one PNG file per image, encoded exactly as medfake encodes it (the dataset's channels:
  greyscale for the phantom world; ``encode_image``, PNG compression level 1): both sides pay
  for the same bytes;
- ``candidate`` (ONNX, one stream): ``medfake synth`` (``pipelines.synth.run_job``) on the ONNX
  Runtime backend with ``streams=1``: the like-for-like row (one denoising stream of THREADS
  threads, as the stock pipeline runs). Plan, generation, PNG encoding and tar writing in the
  background pool, fsync + rename + manifest per shard, ``dataset.json``;
- ``candidate`` (ONNX, streams): the same job with its default concurrent streams: what the
  streams add, its own row, not the headline;
- ``candidate`` (torch): the same job on the PyTorch backend.

Models are loaded once outside the timing (the stock pipeline's too); every round writes a fresh
job of 48 images in 3 shards. Group ``shard writer``: ``engine.shard_pool.ShardWriter``
(streamed, sha256, fsync, rename, manifest) vs a plain ``tarfile`` writer of the same encoded
members (no fsync, hash or manifest).

On a shared machine, ``python bench/bench_synth_job.py [THREADS] [ROUNDS]`` runs the three job
variants in interleaved rounds (A, B, C, A, B, C, ...) so load changes hit all alike, and prints
median images/s and the ratios.
"""
from __future__ import annotations

import io
import itertools
import os
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

from medfake.engine.data.reader import DatasetInfo
from medfake.engine.data.format import Sample, encode_image
from medfake.engine.data.phantoms import PhantomConfig, make_phantom_world
from medfake.engine.diffusion.sd_model import init_model
from medfake.engine.synth.shard_pool import ShardWriter, encode_sample
from medfake.engine.diffusion.streams import threads_per_stream
from medfake.pipelines.synth import SynthConfig, load_samplers, run_job
from medfake.engine.synth.plan import plan_samples

BATCH, STEPS, GUIDANCE, ROUNDS = 8, 20, 4.0, 3
# Threads of both sides (torch intra-op / ORT intra-op). 2 on an idle 2-core machine; on a shared
# one use 1: torch's OpenMP threads collapse when another process holds a core (measured 1.4 vs
# 7-9 img/s for the stock pipeline at 2 vs 1 threads under load), which would inflate the ratio.
THREADS = int(os.environ.get("MEDFAKE_BENCH_THREADS", "2"))
PER_CLASS, PER_SHARD = 16, 16          # 48 images (3 classes) in 3 shards per round
N_IMAGES = 3 * PER_CLASS
JOB_GROUP = (f"synthesis job: images/s written to disk (tiny SD, {STEPS} DPM++ steps, CFG, "
             f"batch {BATCH}, {THREADS} threads)")
WRITER_GROUP = "shard writer: images/s of 32x32 PNG samples (256 per shard)"


def make_world(root: Path) -> tuple[Path, Path]:
    _, hospital = make_phantom_world(root / "world", PhantomConfig(
        n_public_per_class=1, n_train_per_class=2, n_val_per_class=1, n_test_per_class=1))
    return init_model("tiny", root / "tiny"), hospital


def job_runner(model_dir: Path, hospital: Path, root: Path, backend: str, threads: int,
               streams: int | None = None) -> Callable[[], object]:
    """One round: the whole job into a fresh output dir (the previous round's is removed
    first, untimed by the caller's setup when it uses ``fresh``). The model is loaded once, the
    way the job loads it (``load_samplers``: ONNX Runtime on a CPU gets one stream per thread)."""
    load_cfg = SynthConfig(str(model_dir), str(hospital), "", backend=backend, threads=threads,
                           steps=STEPS, guidance_scale=GUIDANCE, streams=streams)
    samplers = load_samplers(load_cfg, 32)
    per_stream = threads_per_stream(threads, len(samplers))
    tag = f"{backend}-s{streams or 'auto'}"
    dirs = (root / f"{tag}-{i}" for i in itertools.count())

    def fresh() -> SynthConfig:
        for old in root.glob(f"{tag}-*"):
            shutil.rmtree(old)
        return SynthConfig(str(model_dir), str(hospital), str(next(dirs)), per_class=PER_CLASS,
                           steps=STEPS, guidance_scale=GUIDANCE, batch_size=BATCH,
                           samples_per_shard=PER_SHARD, backend=backend, threads=threads,
                           streams=streams)

    def run(cfg: SynthConfig | None = None):
        torch.set_num_threads(per_stream)
        result = run_job(cfg or fresh(), sampler=samplers)
        assert result.complete and result.pool.images == N_IMAGES
        return result

    run.fresh = fresh
    return run


def stock_runner(model_dir: Path, hospital: Path, root: Path, threads: int = THREADS
                 ) -> Callable[[], int]:
    """One round: the job's 48 prompts and seeds through the stock pipeline, each image saved
    as a PNG file encoded as medfake encodes it (dataset channels, ``encode_image``)."""
    info = DatasetInfo.load(hospital)
    cfg = SynthConfig(str(model_dir), str(hospital), "", per_class=PER_CLASS)
    plan = plan_samples(cfg, info.class_names, info.prompt_templates)
    pipe = StableDiffusionPipeline.from_pretrained(model_dir)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    out = root / "stock"
    out.mkdir(exist_ok=True)

    def run() -> int:
        torch.set_num_threads(threads)
        n = 0
        for b in range(0, len(plan), BATCH):
            batch = plan[b:b + BATCH]
            gens = [torch.Generator().manual_seed(p["seed"]) for p in batch]
            images = pipe([p["prompt"] for p in batch], height=32, width=32,
                          num_inference_steps=STEPS, guidance_scale=GUIDANCE, generator=gens,
                          output_type="np").images
            for img in (images * 255).round().astype(np.uint8):
                if info.channels == 1:   # as pipelines.synth does for a greyscale dataset
                    img = img.astype(np.float32).mean(-1).round().astype(np.uint8)
                (out / f"{n:06d}.png").write_bytes(encode_image(img, "png"))
                n += 1
        return n

    return run


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(THREADS)
    root = tmp_path_factory.mktemp("bench_job")
    return (*make_world(root), root)


def _job(benchmark, setup, backend: str, streams: int | None = None):
    run = job_runner(*setup, backend, THREADS, streams)
    run()  # warm-up
    results = []
    benchmark.pedantic(lambda cfg: results.append(run(cfg)),
                       setup=lambda: ((run.fresh(),), {}), rounds=ROUNDS)
    benchmark.extra_info.update(per_round=N_IMAGES, unit="img",
                                backend_busy=round(results[-1].backend_busy, 4),
                                writer_stall_s=round(results[-1].pool.stall_s, 4))


@pytest.mark.benchmark(group=JOB_GROUP)
def test_candidate_synth_job_onnx_one_stream(benchmark, setup):
    _job(benchmark, setup, "onnx", streams=1)


@pytest.mark.benchmark(group=JOB_GROUP)
def test_candidate_synth_job_onnx_streams(benchmark, setup):
    _job(benchmark, setup, "onnx")


@pytest.mark.benchmark(group=JOB_GROUP)
def test_candidate_synth_job_torch(benchmark, setup):
    _job(benchmark, setup, "torch")


@pytest.mark.benchmark(group=JOB_GROUP)
def test_baseline_stock_pipeline_and_pil_save(benchmark, setup):
    run = stock_runner(*setup)
    run()  # warm-up
    benchmark.extra_info.update(per_round=N_IMAGES, unit="img")
    assert benchmark.pedantic(run, rounds=ROUNDS) == N_IMAGES


# ----------------------------------------------------------------------------- shard writer

N_SHARDS, PER_WRITER_SHARD = 8, 256


@pytest.fixture(scope="module")
def encoded():
    rng = np.random.default_rng(0)
    smooth = [np.clip(rng.normal(140, 25, (32, 32)), 0, 255).astype(np.uint8)
              for _ in range(PER_WRITER_SHARD)]
    return [(f"syn_cyst_{i:06d}", 0, encode_sample(Sample(
        f"syn_cyst_{i:06d}", img, 0, "a CT image of a liver cyst",
        {"source": "synthetic", "seed": 123456789 + i, "prompt": "a CT image of a liver cyst"})))
        for i, img in enumerate(smooth)]


@pytest.mark.benchmark(group=WRITER_GROUP)
def test_candidate_shard_writer(benchmark, encoded, tmp_path):
    def run():
        for s in range(N_SHARDS):
            w = ShardWriter(tmp_path, "train", s, ["cyst"])
            for key, cls, members in encoded:
                w.add(key, cls, members)
            w.finish()

    run()
    benchmark.extra_info.update(per_round=N_SHARDS * PER_WRITER_SHARD, unit="img")
    benchmark.pedantic(run, rounds=5)


@pytest.mark.benchmark(group=WRITER_GROUP)
def test_baseline_plain_tarfile(benchmark, encoded, tmp_path):
    def run():
        for s in range(N_SHARDS):
            with tarfile.open(tmp_path / f"train-{s:06d}.tar", "w") as tar:
                for key, _, members in encoded:
                    for ext, data in members:
                        info = tarfile.TarInfo(f"{key}.{ext}")
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))

    run()
    benchmark.extra_info.update(per_round=N_SHARDS * PER_WRITER_SHARD, unit="img")
    benchmark.pedantic(run, rounds=5)


def interleaved(threads: int = 1, rounds: int = 5) -> None:
    """Alternate rounds of the job variants; print median img/s and ratios (the 1-stream row is
    the like-for-like one)."""
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir, hospital = make_world(root)
        runs = {"medfake synth job, onnx, 1 stream": job_runner(model_dir, hospital, root, "onnx",
                                                                threads, streams=1),
                "medfake synth job, onnx, streams": job_runner(model_dir, hospital, root, "onnx",
                                                               threads),
                "medfake synth job, torch": job_runner(model_dir, hospital, root, "torch",
                                                       threads),
                "stock pipeline + PIL save": stock_runner(model_dir, hospital, root, threads)}
        times: dict[str, list[float]] = {k: [] for k in runs}
        for f in runs.values():
            f()  # warm-up
        for _ in range(rounds):
            for name, f in runs.items():
                cfg = f.fresh() if hasattr(f, "fresh") else None
                t = time.perf_counter()
                f(cfg) if cfg is not None else f()
                times[name].append(time.perf_counter() - t)
    rate = {k: N_IMAGES / statistics.median(v) for k, v in times.items()}
    base = rate["stock pipeline + PIL save"]
    print(f"{N_IMAGES} images per round, {rounds} interleaved rounds, {threads} thread(s), "
          f"load average {os.getloadavg()[0]:.2f}")
    for k, r in rate.items():
        print(f"  {k:34s} {r:7.2f} img/s   {r / base:5.2f}x stock")


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    interleaved(*(int(x) for x in sys.argv[1:3]))
