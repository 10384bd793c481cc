"""``PhantomConfig``: the sizes of the embedded phantom world (``phantoms.make_phantom_world``).

Kept apart from the renderer so the CLI can build its flags without importing numpy/scipy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..core.config import JobConfig, api_only, option


@dataclass
class PhantomConfig(JobConfig):
    """Sizes of the embedded world. Counts are images; test and val are class-balanced."""

    PROFILES: ClassVar[dict[str, dict[str, Any]]] = {"default": {}}

    image_size: int = option(32, "image side in pixels", flag="--size")
    seed: int = option(0, "world seed (same config, byte-identical shards)")
    n_public_per_class: int = option(1000, "public-corpus images per class",
                                     flag="--public-per-class")
    n_train_per_class: int = option(200, "hospital train images per class",
                                    flag="--train-per-class")
    n_val_per_class: int = option(50, "hospital val images per class", flag="--val-per-class")
    n_test_per_class: int = option(100, "hospital test images per class",
                                   flag="--test-per-class")
    samples_per_shard: int = api_only(500)
