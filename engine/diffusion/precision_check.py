"""The image-difference gate for reduced precision: a candidate backend/precision against the
fp32 reference on the same prompts and seeds.

Images are compared as the sampler's float output in [0, 1] (before quantisation), pixel by
pixel. ``DEFAULT_BOUND`` is the stated bound a reduced-precision path must meet to be used by
``--backend auto`` or to pass ``medfake bench precision-gate``: mean absolute difference at most
0.01 (2.6 grey levels of 255) and 99th percentile at most 0.05 (13 grey levels). Measured on the
tiny preset (random weights, 6 dpm++ steps), torch bf16 autocast gives mean 0.0016 / max 0.015;
fp32 runtimes (ONNX Runtime, OpenVINO fp32) agree with torch to about 1e-4.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class ImageDiffBound:
    mean_abs: float = 0.01
    p99_abs: float = 0.05

    def __str__(self) -> str:
        return f"mean <= {self.mean_abs:g}, p99 <= {self.p99_abs:g}"


DEFAULT_BOUND = ImageDiffBound()


@dataclass(frozen=True)
class ImageDiff:
    """Per-pixel absolute difference statistics (images in [0, 1])."""

    mean_abs: float
    p99_abs: float
    max_abs: float

    def passes(self, bound: ImageDiffBound = DEFAULT_BOUND) -> bool:
        return self.mean_abs <= bound.mean_abs and self.p99_abs <= bound.p99_abs

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    def __str__(self) -> str:
        return f"mean {self.mean_abs:.4f}, p99 {self.p99_abs:.4f}, max {self.max_abs:.4f}"


def compare_images(reference: np.ndarray, candidate: np.ndarray) -> ImageDiff:
    """``ImageDiff`` of two equally shaped float image batches in [0, 1]."""
    if reference.shape != candidate.shape:
        raise ValueError(f"cannot compare images of shapes {reference.shape} and "
                         f"{candidate.shape}")
    d = np.abs(np.asarray(candidate, np.float64) - np.asarray(reference, np.float64))
    return ImageDiff(float(d.mean()), float(np.percentile(d, 99)), float(d.max()))


def image_difference(reference, candidate, prompts: list[str], seeds: list[int]) -> ImageDiff:
    """Sample ``prompts``/``seeds`` on both ``engine.diffusion.sampler.Sampler``s (same
    sampler config) and compare the float images."""
    ref = reference.generate(prompts, seeds, output="float")
    got = candidate.generate(prompts, seeds, output="float")
    return compare_images(ref, got)
