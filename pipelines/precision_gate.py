"""The quality gate for reduced precision (``medfake bench precision-gate``).

For every candidate ``backend/precision`` (``configs.precision_gate.CANDIDATES``) on one model
(default: the embedded generator, ``train_generator.cached_generator`` on the default phantom
world's public corpus), the same prompts (the real dataset's class templates) and seeds are
sampled as on the reference, ``torch/fp32``, and three checks are made:

1. image difference against the reference on the same seeds within
   ``engine.diffusion.precision_check.DEFAULT_BOUND`` (the bound ``--backend auto`` also uses);
2. FD (pixel features at ``FD_PIXELS`` x ``FD_PIXELS``, ``engine.evaluation.quality``; 256
   dimensions keep FD's covariance square roots cheap and better conditioned for a few hundred
   samples than the 1024 of the 32 px default) of its samples to the real train split, and
3. accuracy on the real test split of a small CNN trained on its samples
   (``engine.evaluation.classifiers``),

2 and 3 per job seed, the candidate's mean over the seeds within the reference's seed CI (a
95% t-interval of the reference's per-seed values). A candidate this machine cannot run (no
native bf16, runtime not installed) is a "not run" row with the reason, never a pass. The
report is a table; ``run_gate`` returns it with ``failed`` True when a candidate that ran
failed a check.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .configs.precision_gate import PrecisionGateConfig

log = logging.getLogger(__name__)
REFERENCE = "torch/fp32"
FD_PIXELS = 16


@dataclass
class GateRow:
    candidate: str
    status: str                   # "pass", "FAIL" or "not run: <why>"
    diff: dict | None = None      # ImageDiff of all its images against the reference's
    fd: list[float] = field(default_factory=list)         # per seed
    accuracy: list[float] = field(default_factory=list)   # per seed
    images_per_s: float | None = None
    why: str = ""


@dataclass
class GateReport:
    model_dir: str
    rows: list[GateRow]
    fd_ci: tuple[float, float]
    accuracy_ci: tuple[float, float]
    bound: str

    @property
    def failed(self) -> bool:
        return any(r.status == "FAIL" for r in self.rows)

    def table(self) -> str:
        lines = [f"precision gate on {self.model_dir}",
                 f"image bound vs {REFERENCE}: {self.bound}; reference seed CI: FD "
                 f"[{self.fd_ci[0]:.3f}, {self.fd_ci[1]:.3f}], CNN accuracy "
                 f"[{self.accuracy_ci[0]:.3f}, {self.accuracy_ci[1]:.3f}]", "",
                 "| candidate | result | image diff mean / p99 / max | FD mean | CNN acc mean "
                 "| img/s |", "|---|---|---|---|---|---|"]
        for r in self.rows:
            if r.status.startswith("not run"):
                lines.append(f"| {r.candidate} | {r.status} | | | | |")
                continue
            d = r.diff
            lines.append(f"| {r.candidate} | {r.status}{' (' + r.why + ')' if r.why else ''} "
                         f"| {d['mean_abs']:.4f} / {d['p99_abs']:.4f} / {d['max_abs']:.4f} "
                         f"| {np.mean(r.fd):.3f} | {np.mean(r.accuracy):.3f} "
                         f"| {r.images_per_s:.2f} |")
        return "\n".join(lines)


def seed_ci(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """The ``level`` t-interval of the mean of per-seed ``values`` (needs two or more)."""
    from scipy import stats
    v = np.asarray(values, np.float64)
    if v.size < 2:
        raise ValueError("the seed CI needs at least two seeds (--seeds)")
    half = stats.t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size)
    return float(v.mean() - half), float(v.mean() + half)


def default_world() -> tuple[Path, Path]:
    """The default phantom world (public, hospital), cached where ``medfake run`` caches it."""
    from ..engine.data.phantoms import PhantomConfig
    from .experiment_data import embedded_world
    return embedded_world(PhantomConfig())


def _unavailable(candidate: str) -> str | None:
    """Why this machine cannot run ``candidate`` (None: it can)."""
    from ..engine.core import capabilities as cap
    from ..engine.diffusion.backends import BACKENDS
    from ..engine.diffusion.backends.select import native_bf16
    backend, _, precision = candidate.partition("/")
    if backend not in BACKENDS or precision not in ("fp32", "bf16") or (
            backend == "onnx" and precision != "fp32"):
        raise ValueError(f"unknown candidate {candidate!r}; choose from torch/fp32, torch/bf16, "
                         f"onnx/fp32, openvino/fp32, openvino/bf16")
    why = BACKENDS[backend].unavailable()
    if why:
        return why
    if precision == "bf16" and not native_bf16(backend):
        return "no native bf16 on this CPU"
    if backend == "tensorrt" and not cap.cuda().available:
        return "no CUDA GPU"
    return None


def _sample(model, cfg: PrecisionGateConfig, prompts: list[str], seeds: list[int], size: int
            ) -> tuple[np.ndarray, float]:
    """Float images (N, H, W, 3) in [0, 1] and images per second."""
    import time

    from tqdm import tqdm

    from ..engine.diffusion.sampler import SamplerConfig
    sampler = model.sampler(SamplerConfig("dpm++", cfg.steps, cfg.guidance_scale, "", size,
                                          size))
    out, t = [], time.perf_counter()
    for i in tqdm(range(0, len(prompts), cfg.batch_size), desc="precision gate", unit="batch",
                  leave=False):
        out.append(sampler.generate(prompts[i:i + cfg.batch_size], seeds[i:i + cfg.batch_size],
                                    output="float"))
    return np.concatenate(out), len(prompts) / (time.perf_counter() - t)


def _as_uint8(images: np.ndarray, channels: int) -> np.ndarray:
    u8 = np.clip(np.round(images * 255), 0, 255).astype(np.uint8)
    return u8.astype(np.float32).mean(-1).round().astype(np.uint8) if channels == 1 else u8


def run_gate(cfg: PrecisionGateConfig) -> GateReport:
    """Run the gate (see the module doc)."""
    from ..engine.core.seeding import derive_seed
    from ..engine.data.reader import DatasetInfo, load_split
    from ..engine.diffusion.precision_check import DEFAULT_BOUND, compare_images
    from ..engine.evaluation.classifiers import predict_proba, train_classifier
    from ..engine.evaluation.metrics import accuracy
    from ..engine.evaluation.quality import PixelEncoder, frechet_distance
    from .models import load_model
    cands = list(dict.fromkeys([REFERENCE, *cfg.candidates]))
    reasons = {c: _unavailable(c) for c in cands}
    if reasons[REFERENCE]:
        raise RuntimeError(f"the reference {REFERENCE} cannot run: {reasons[REFERENCE]}")
    if len(cfg.seeds) < 2:
        raise ValueError("the seed CI needs at least two --seeds")
    public, hospital = (None, None) if cfg.model_dir and cfg.real_dataset else default_world()
    real_dir = cfg.real_dataset or str(hospital)
    if cfg.model_dir:
        model_dir = cfg.model_dir
    else:
        from .configs.train_generator import GeneratorTrainConfig
        from .train_generator import cached_generator
        model_dir = str(cached_generator(public, GeneratorTrainConfig.profile(cfg.generator)))
    real = DatasetInfo.load(real_dir)
    size = real.image_size
    train, test = load_split(real_dir, "train"), load_split(real_dir, "test")
    enc = PixelEncoder(FD_PIXELS)
    real_feats = enc(train.images)
    # the same prompts and seeds for every candidate: per job seed, per_class per class
    jobs = []
    for s in cfg.seeds:
        prompts, seeds, labels = [], [], []
        for ci, name in enumerate(real.class_names):
            templates = real.prompt_templates.get(name) or [f"a medical image of {name}"]
            for i in range(cfg.per_class):
                prompts.append(templates[i % len(templates)].replace("{token}", "").strip())
                seeds.append(derive_seed("precision-gate", s, name, i) % 2**31)
                labels.append(ci)
        jobs.append((s, prompts, seeds, np.asarray(labels)))
    rows, reference = [], None
    for c in cands:
        if reasons[c]:
            rows.append(GateRow(c, f"not run: {reasons[c]}"))
            continue
        backend, _, precision = c.partition("/")
        opts = {"precision": precision}
        if backend in ("onnx", "openvino"):
            opts["threads"] = cfg.threads
        model = load_model(model_dir, backend, **opts)
        row, images, rates = GateRow(c, "pass", why="" if reference else "reference"), [], []
        for s, prompts, seeds, labels in jobs:
            log.info("precision gate: %s, seed %d (%d images)", c, s, len(prompts))
            img, rate = _sample(model, cfg, prompts, seeds, size)
            images.append(img)
            rates.append(rate)
            u8 = _as_uint8(img, real.channels)
            row.fd.append(frechet_distance(real_feats, enc(u8)))
            cnn = train_classifier(u8, labels, steps=cfg.cnn_steps, seed=s,
                                   n_classes=len(real.class_names))
            row.accuracy.append(accuracy(test.labels, predict_proba(cnn, test.images)))
        row.images_per_s = float(np.mean(rates))
        del model
        if reference is None:
            reference = images
        row.diff = compare_images(np.concatenate(reference), np.concatenate(images)).as_dict()
        rows.append(row)
    return judge(GateReport(model_dir, rows, (math.nan, math.nan), (math.nan, math.nan),
                            str(DEFAULT_BOUND)), DEFAULT_BOUND)


def judge(report: GateReport, bound) -> GateReport:
    """Set every candidate's verdict (the reference, ``rows[0]``, gives the seed CIs)."""
    from ..engine.diffusion.precision_check import ImageDiff
    ref = report.rows[0]
    report.fd_ci, report.accuracy_ci = seed_ci(ref.fd), seed_ci(ref.accuracy)
    report.bound = str(bound)
    for r in report.rows[1:]:
        if r.status.startswith("not run"):
            continue
        fails = []
        if not ImageDiff(**r.diff).passes(bound):
            fails.append("image diff over the bound")
        if not report.fd_ci[0] <= np.mean(r.fd) <= report.fd_ci[1]:
            fails.append("FD outside the reference's seed CI")
        if not report.accuracy_ci[0] <= np.mean(r.accuracy) <= report.accuracy_ci[1]:
            fails.append("CNN accuracy outside the reference's seed CI")
        r.status, r.why = ("FAIL", "; ".join(fails)) if fails else ("pass", "")
    return report
