"""Interchangeable generators: a spec names one, ``make_synthetic_dataset`` does the rest.

``make_synthetic_dataset(spec, real_dataset, per_class, seed, out_dir)`` writes a synthetic
dataset (the shard format of ``engine/dataset.py``, train split, ``per_class`` images per class
of the real dataset, keys ``syn_<class>_<i>``) whatever the generator, so experiments compare
generators on the same real data by changing only the spec. Kinds (``GENERATOR_KINDS``):

* ``diffusion``: ``model`` is a diffusers SD dir; text-to-image via ``medfake synth`` with the
  dataset's prompt templates (or the model's own ``medfake_prompts.json``). ``sample`` holds
  ``SynthConfig`` fields (steps, guidance_scale, scheduler, batch_size, negative_prompt, ...).
* ``dreambooth``: ``model`` is the *base* SD dir; it is fine-tuned on the real dataset's k-shot
  images (``train`` = ``DreamBoothConfig`` fields) into ``<out>/generator`` and then sampled as
  ``diffusion``.
* ``dcgan`` / ``acgan``: ``model`` is a trained GAN dir, or None to train one on the real k-shot
  images (``train`` = ``GANTrainConfig`` fields) into ``<out>/generator``; ``sample`` holds
  ``GANSampleConfig`` fields (batch_size, ...).
* ``classic``: no model; each sample is a random flip / 90-degree turn / small rotation / crop /
  brightness-contrast-gamma transform of one k-shot real image (``sample`` = ``ClassicAugment``
  fields): the no-generator baseline.

``k`` and ``kshot_seed`` pick the real images a generator may learn from, with the same subsets
as the classifier arms (``train_clip.kshot_subset``; ``k = 0``: the whole split). Everything
resumes: training from its checkpoints, sampling shard by shard; a changed job on an existing
output directory is refused. The builders live in ``pipelines/``, imported lazily, so this
module stays importable without them.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

from ..engine.baselines.classic import ClassicAugment, classic_transform
from ..engine.core.atomic import sha256_file
from ..engine.data.format import Sample, shard_name
from ..engine.data.reader import DatasetInfo, load_split
from ..engine.data.writer import finalize_dataset, list_shards, write_shard

GENERATOR_KINDS = ("diffusion", "dreambooth", "dcgan", "acgan", "classic")
Builder = Callable[["GeneratorSpec", Path, int, int, Path], Path]
_BUILDERS: dict[str, Builder] = {}


@dataclass(frozen=True)
class GeneratorSpec:
    """Which generator, from which model, trained/sampled with which overrides (JSON-able)."""

    kind: str
    model: str | None = None
    k: int = 5
    kshot_seed: int = 0
    train: dict[str, Any] = field(default_factory=dict)
    sample: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in GENERATOR_KINDS:
            raise ValueError(f"unknown generator kind {self.kind!r}; choose one of {GENERATOR_KINDS}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GeneratorSpec":
        """Build from a config dict; unknown keys are an error naming the allowed ones."""
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - allowed)
        if unknown:
            raise ValueError(f"generator spec has unknown key(s) {unknown}; allowed: {sorted(allowed)}")
        return cls(**d)


def register(kind: str) -> Callable[[Builder], Builder]:
    def deco(fn: Builder) -> Builder:
        _BUILDERS[kind] = fn
        return fn
    return deco


def make_synthetic_dataset(spec: GeneratorSpec | dict[str, Any], real_dataset: str | os.PathLike,
                           per_class: int, seed: int, out_dir: str | os.PathLike) -> Path:
    """Write (or resume) ``per_class`` synthetic images per class into ``out_dir``; return it."""
    if isinstance(spec, dict):
        spec = GeneratorSpec.from_dict(spec)
    DatasetInfo.load(real_dataset)  # one clear error for a bad dataset, whatever the kind
    out = Path(out_dir)
    return until_complete(out, lambda: _BUILDERS[spec.kind](spec, Path(real_dataset), per_class,
                                                            seed, out))


def until_complete(out: Path, build: Callable[[], Path], poll_s: float = 1.0) -> Path:
    """``build()`` until ``out`` holds its ``dataset.json``; return what ``build`` returned.

    A duplicate launch of the same job (two experiment processes, a requeued task beside the
    old one) skips the shards another live process is writing at that moment, so its own
    ``build()`` can return before the dataset is complete. Then wait while live writers'
    temporary files remain in ``out`` and build again: that finalizes the dataset, or writes
    the shards a writer that died left. A build that leaves it incomplete with no live writer
    to wait for (shards owned by other ranks of a multi-rank job) is an error naming the fix.
    """
    from ..engine.synth.files import live_temporaries
    path, retried = build(), False
    while not (out / "dataset.json").is_file():
        waited = False
        while live_temporaries(out):
            waited = True
            time.sleep(poll_s)
        if not waited:   # a writer may have finished just now: one more build finalizes then
            if retried:
                raise RuntimeError(f"{out} is incomplete after this run and no live process "
                                   f"is writing it (shards of other ranks?): run the job on "
                                   f"every rank, then `medfake synth status {out} --finalize`")
            retried = True
        path = build()
    return path


def _need_model(spec: GeneratorSpec, what: str) -> str:
    if not spec.model:
        raise ValueError(f"generator {spec.kind!r} needs model: {what}")
    return spec.model


@register("diffusion")
def _diffusion(spec: GeneratorSpec, real: Path, per_class: int, seed: int, out: Path) -> Path:
    from .synth import SynthConfig, synthesize
    model = _need_model(spec, "a diffusers Stable Diffusion directory")
    # a spec's "sample" overrides SynthConfig fields; without "backend" it samples on torch
    return synthesize(SynthConfig.from_dict({"backend": "torch", **spec.sample,
                                             "model_dir": model, "real_dataset": str(real),
                                             "out_dir": str(out), "per_class": per_class,
                                             "seed": seed}))


@register("dreambooth")
def _dreambooth(spec: GeneratorSpec, real: Path, per_class: int, seed: int, out: Path) -> Path:
    from .dreambooth import DreamBoothConfig, finetune_dreambooth
    base = _need_model(spec, "the base diffusers Stable Diffusion directory to fine-tune")
    cfg = DreamBoothConfig.from_dict({**spec.train, "k": spec.k, "kshot_seed": spec.kshot_seed})
    tuned = finetune_dreambooth(base, real, out / "generator", cfg)
    return _diffusion(replace(spec, kind="diffusion", model=str(tuned)), real, per_class, seed, out)


@register("dcgan")
@register("acgan")
def _gan(spec: GeneratorSpec, real: Path, per_class: int, seed: int, out: Path) -> Path:
    from .gan import GANSampleConfig, GANTrainConfig, sample_gan, train_gan
    gan_dir = spec.model
    if gan_dir is None:
        cfg = GANTrainConfig.from_dict({**spec.train, "kind": spec.kind, "k": spec.k,
                                        "kshot_seed": spec.kshot_seed})
        gan_dir = str(train_gan(real, out / "generator", cfg))
    kind = json.loads((Path(gan_dir) / "gan.json").read_text())["kind"] \
        if (Path(gan_dir) / "gan.json").is_file() else spec.kind
    if kind != spec.kind:
        raise ValueError(f"{gan_dir} holds a {kind} model but the spec names {spec.kind}")
    return sample_gan(GANSampleConfig.from_dict({**spec.sample, "gan_dir": gan_dir,
                                                 "real_dataset": str(real), "out_dir": str(out),
                                                 "per_class": per_class, "seed": seed}))






@register("classic")
def _classic(spec: GeneratorSpec, real: Path, per_class: int, seed: int, out: Path) -> Path:
    from ..engine.data.kshot import kshot_subset
    from ..engine.synth.plan import check_plan, plan_samples
    aug = ClassicAugment(**spec.sample)
    info = DatasetInfo.load(real)
    train = load_split(real, "train")
    pool = kshot_subset(train, spec.k, spec.kshot_seed) if spec.k else train
    job = {"generator": "classic", "real_dataset_sha256": sha256_file(real / "dataset.json"),
           "k": spec.k, "kshot_seed": spec.kshot_seed, "per_class": per_class, "seed": seed,
           "augment": asdict(aug)}
    check_plan(out, job)
    plan = plan_samples(_PlanParams(per_class, seed), info.class_names, info.prompt_templates)
    by_class = {c: np.flatnonzero(pool.labels == c) for c in range(len(info.class_names))}
    source, seen = {}, {c: 0 for c in by_class}  # the i-th sample of a class uses image i mod k
    for p in plan:
        source[p["key"]] = by_class[p["cls"]][seen[p["cls"]] % len(by_class[p["cls"]])]
        seen[p["cls"]] += 1
    n = aug.samples_per_shard
    shards = [plan[i:i + n] for i in range(0, len(plan), n)]
    done = {s.name for s in list_shards(out, "train")}
    todo = [i for i in range(len(shards)) if shard_name("train", i) not in done]
    for i in tqdm(todo, desc="classic augment", unit="shard"):
        samples = []
        for p in shards[i]:
            src = source[p["key"]]
            img, params = classic_transform(pool.images[src], np.random.default_rng(p["seed"]), aug)
            meta = {"source": "synthetic", "generator": "classic", "seed": p["seed"],
                    "source_key": pool.keys[src], "transform": params, "prompt": p["prompt"],
                    "class_name": info.class_names[p["cls"]], "split": "train"}
            samples.append(Sample(p["key"], img, p["cls"], p["prompt"], meta))
        write_shard(out, "train", i, samples, info.class_names)
    lineage = {"real_dataset": str(real.resolve()), "source_keys": sorted(
        {pool.keys[i] for i in source.values()})}
    finalize_dataset(out, info.class_names, info.prompt_templates, {"generator": "classic",
                     "job": job, "lineage": lineage}, info.image_size, info.channels)
    return out


@dataclass(frozen=True)
class _PlanParams:
    """The two fields ``synth.plan_samples`` reads from a job config."""

    per_class: int
    seed: int
