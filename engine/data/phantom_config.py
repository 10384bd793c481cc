"""``PhantomConfig``: the sizes of the embedded phantom world (``phantoms.make_phantom_world``).

Kept apart from the renderer so the CLI can build its flags without importing numpy/scipy.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from ..core.config import JobConfig, api_only, option

WORLDS = ("near", "general")
# Fields that only the ``general`` world reads. They are left out of a ``near`` world's identity
# (provenance and cache keys), so a ``near`` world is byte-identical to one written before the
# ``general`` world existed.
GENERAL_ONLY = ("world", "corpus_size")


@dataclass
class PhantomConfig(JobConfig):
    """Sizes of the embedded world. Counts are images; test and val are class-balanced.

    ``world``: ``near`` (the generator's corpus is captioned by class, in a shifted style) or
    ``general`` (a broad corpus of many kinds of content, the target lesions rare and captioned
    by appearance only; docs/worlds.md). The hospital domain is the same in both worlds.
    """

    PROFILES: ClassVar[dict[str, dict[str, Any]]] = {"default": {}}

    image_size: int = option(32, "image side in pixels", flag="--size")
    seed: int = option(0, "world seed (same config, byte-identical shards)")
    world: str = option("near", "near: the corpus is captioned by class; general: a broad corpus, "
                        "target lesions rare and described by appearance (docs/worlds.md)",
                        choices=WORLDS)
    n_public_per_class: int = option(1000, "near world: public-corpus images per class",
                                     flag="--public-per-class")
    corpus_size: int = option(6000, "general world: corpus images in all (1% of them per target "
                              "class)")
    n_train_per_class: int = option(200, "hospital train images per class",
                                    flag="--train-per-class")
    n_val_per_class: int = option(50, "hospital val images per class", flag="--val-per-class")
    n_test_per_class: int = option(100, "hospital test images per class",
                                   flag="--test-per-class")
    samples_per_shard: int = api_only(500)

    def __post_init__(self) -> None:
        if self.world not in WORLDS:
            raise ValueError(f"PhantomConfig.world {self.world!r} is not one of {', '.join(WORLDS)}")

    def identity(self) -> dict[str, Any]:
        """The fields that determine the world's bytes: written into the datasets' provenance
        and hashed into cache keys. A ``near`` world leaves out the ``general``-only fields."""
        d = asdict(self)
        if self.world == "near":
            for k in GENERAL_ONLY:
                d.pop(k)
        return d
