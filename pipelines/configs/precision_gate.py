"""``PrecisionGateConfig``: ``medfake bench precision-gate`` (``pipelines/precision_gate.py``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ...engine.core.config import JobConfig, option

CANDIDATES = ("torch/fp32", "torch/bf16", "onnx/fp32", "openvino/fp32", "openvino/bf16")


@dataclass
class PrecisionGateConfig(JobConfig):
    """The quality gate for reduced precision: every candidate backend/precision samples the
    same prompts and seeds as the reference (``torch/fp32``); it passes when its images are
    within the stated image-difference bound of the reference's and, per job seed, its FD to
    the real images and the accuracy on real test images of a small CNN trained on its
    samples lie within the reference's seed CI (t-interval, 95%, over ``seeds``)."""

    PROFILES: ClassVar[dict[str, dict[str, Any]]] = {
        "default": {},
        "test": dict(generator="test", per_class=4, steps=3, seeds=(0, 1), cnn_steps=20),
    }

    model_dir: str | None = option(None, "diffusers model dir (default: the embedded generator, "
                                   "trained on the default phantom world's public corpus)",
                                   flag="--model")
    real_dataset: str | None = option(None, "real dataset: prompts, FD reference, CNN test set "
                                      "(default: the default phantom world's hospital)",
                                      flag="--real")
    generator: str = option("default", "embedded generator profile when --model is not given "
                            "(test: a seconds-long micro model)", choices=("default", "test"))
    candidates: tuple[str, ...] = option(CANDIDATES, "backend/precision rows (torch/fp32 is the "
                                         "reference and always runs)", nargs="+")
    seeds: tuple[int, ...] = option((0, 1, 2), "job seeds (the CI is over these)", nargs="+")
    per_class: int = option(16, "synthetic images per class and seed")
    steps: int = option(10, "denoising steps (dpm++)")
    guidance_scale: float = option(4.0, "classifier-free guidance scale", flag="--guidance")
    cnn_steps: int = option(150, "small-CNN training steps")
    batch_size: int = option(16, "images per backend call")
    threads: int | None = option(None, "backend threads (default: torch's)")
