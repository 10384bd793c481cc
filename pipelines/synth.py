"""`medfake synth`: text-to-image synthesis into dataset shards, resumable shard by shard.

The job is planned up front as a fixed list of samples (key, class, prompt) cut into shards of a
fixed size; the plan is stored in ``synth_plan.json``. Each sample's seed derives from
(job seed, key), so a re-run of the same command writes only the missing shards and produces the
same images. Running with different parameters on an existing output directory is refused.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..engine.dataset import (DatasetInfo, Sample, finalize_dataset, list_shards, shard_name,
                              write_shard)
from ..engine.sampler import Sampler, SamplerConfig, TorchBackend
from ..engine.sd_model import load_components, model_hash
from ..engine.seeding import derive_seed

log = logging.getLogger(__name__)


class PlanMismatchError(ValueError):
    """The output directory holds a job planned with other parameters."""


@dataclass
class SynthConfig:
    """A text-to-image job. ``real_dataset`` supplies class names and prompt templates."""

    model_dir: str
    real_dataset: str
    out_dir: str
    per_class: int = 100
    seed: int = 0
    scheduler: str = "dpm++"
    steps: int = 20
    guidance_scale: float = 4.0
    negative_prompt: str = ""
    image_size: int = 0          # 0: the real dataset's image size
    batch_size: int = 16
    samples_per_shard: int = 256
    backend: str = "torch"


def plan_samples(cfg: SynthConfig, class_names: list[str],
                 templates: dict[str, list[str]]) -> list[dict]:
    """The fixed, ordered list of samples the job must produce."""
    plan = []
    for i in range(cfg.per_class):  # classes interleaved: every shard holds a class mix
        for cls, name in enumerate(class_names):
            prompts = templates.get(name) or [f"a medical image of {name}"]
            key = f"syn_{name}_{i:06d}"
            plan.append({"key": key, "cls": cls, "prompt": prompts[i % len(prompts)],
                         "seed": derive_seed(cfg.seed, key) % (1 << 62)})
    return plan


def _check_plan(out: Path, job: dict) -> None:
    path = out / "synth_plan.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old != job:
            diff = sorted(k for k in set(old) | set(job) if old.get(k) != job.get(k))
            raise PlanMismatchError(
                f"{out} already holds a synthesis job with different parameters ({', '.join(diff)})."
                f" Use a new --out directory, or re-run with the original parameters to resume.")
    else:
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(job, indent=1) + "\n")


def synthesize(cfg: SynthConfig) -> Path:
    """Run (or resume) the job; return the output dataset directory."""
    if cfg.backend != "torch":
        raise ValueError(f"backend {cfg.backend!r} is not available in this build; use 'torch'")
    real = DatasetInfo.load(cfg.real_dataset)
    size = cfg.image_size or real.image_size
    out = Path(cfg.out_dir)
    mhash = model_hash(cfg.model_dir)
    job = {**asdict(cfg), "image_size": size, "model_hash": mhash}
    for k in ("out_dir", "real_dataset", "model_dir", "batch_size"):  # do not change the images
        job.pop(k)
    _check_plan(out, job)

    plan = plan_samples(cfg, real.class_names, real.prompt_templates)
    shards = [plan[i:i + cfg.samples_per_shard] for i in range(0, len(plan), cfg.samples_per_shard)]
    done = {s.name for s in list_shards(out, "train")}
    todo = [i for i in range(len(shards)) if shard_name("train", i) not in done]
    log.info("synthesis: %d samples in %d shards, %d to do", len(plan), len(shards), len(todo))

    if todo:
        comps = load_components(cfg.model_dir)
        sampler = Sampler(TorchBackend(comps), comps.tokenizer, comps.scheduler.config,
                          SamplerConfig(cfg.scheduler, cfg.steps, cfg.guidance_scale,
                                        cfg.negative_prompt, size, size))
        pbar = tqdm(total=sum(len(shards[i]) for i in todo), desc="synth", unit="img")
        for i in todo:
            samples = []
            for b in range(0, len(shards[i]), cfg.batch_size):
                batch = shards[i][b:b + cfg.batch_size]
                images = sampler.generate([p["prompt"] for p in batch], [p["seed"] for p in batch])
                for p, img in zip(batch, images):
                    if real.channels == 1:
                        img = img.astype(np.float32).mean(-1).round().astype(np.uint8)
                    meta = {"source": "synthetic", "generator": "diffusion", "model_hash": mhash,
                            "prompt": p["prompt"], "negative_prompt": cfg.negative_prompt,
                            "seed": p["seed"], "scheduler": cfg.scheduler, "steps": cfg.steps,
                            "guidance_scale": cfg.guidance_scale, "backend": cfg.backend,
                            "class_name": real.class_names[p["cls"]], "split": "train"}
                    samples.append(Sample(p["key"], img, p["cls"], p["prompt"], meta))
                pbar.update(len(batch))
            write_shard(out, "train", i, samples, real.class_names)
        pbar.close()
    finalize_dataset(out, real.class_names, real.prompt_templates,
                     {"generator": "diffusion", "job": job, "torch": torch.__version__},
                     size, real.channels)
    return out
