"""``GANTrainConfig``, ``GANSampleConfig``: ``medfake gan train|sample`` (``pipelines/gan.py``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ...engine.core.config import JobConfig, api_only, option

GAN_KINDS = ("dcgan", "acgan")


@dataclass(frozen=True)
class GANTrainConfig(JobConfig):
    """Everything that determines the trained GAN(s) (``device`` aside). See engine/gan.py for
    the paper defaults; ``steps`` counts optimisation steps per model (per class for DCGAN).
    Profiles: ``default`` (the paper sizes) and ``test`` (a seconds-long run at 16x16), for
    either ``kind``."""

    PROFILES: ClassVar[dict[str, dict[str, Any]]] = {
        "default": {},
        "test": dict(image_size=16, g_features=8, d_features=8, latent_dim=16, steps=6,
                     batch_size=8, checkpoint_every=2, grid_every=3),
    }

    kind: str = option("dcgan", "dcgan: one model per class; acgan: one class-conditional "
                       "model", choices=GAN_KINDS, required=True)
    image_size: int = option(64, "32 or 64", flag="--size")
    channels: int = option(0, "default: the dataset's", choices=(1, 3))  # 0: the dataset's
    latent_dim: int = api_only(100)
    g_features: int = api_only(64)
    d_features: int = api_only(64)
    k: int = option(0, "real images per class (0: the whole split)")
    kshot_seed: int = option(0, "seed of the k-shot subset")
    split: str = api_only("train")
    steps: int = option(2000, "optimisation steps per model")
    batch_size: int = option(64, "images per step")
    lr_g: float = option(1e-4, "generator learning rate")
    lr_d: float = option(5e-5, "discriminator learning rate")
    beta1: float = api_only(0.5)
    beta2: float = api_only(0.999)
    real_label: float = api_only(1.0)          # < 1: one-sided label smoothing
    hflip: bool = api_only(True)
    checkpoint_every: int = option(500, "steps between checkpoints")
    grid_every: int = option(500, "steps between sample grids")
    seed: int = option(0, "training seed")
    device: str = option("auto", "auto, cpu, cuda, cuda:N")


@dataclass
class GANSampleConfig(JobConfig):
    """A sampling job; ``image_size`` 0 means the real dataset's (GAN output is resized)."""

    PROFILES: ClassVar[dict[str, dict[str, Any]]] = {"default": {}}

    gan_dir: str = option(help="directory written by `medfake gan train`", flag="--gan",
                          required=True)
    real_dataset: str = option(help="real dataset (class names, prompt templates)",
                               flag="--real", required=True)
    out_dir: str = option(help="output dataset dir", flag="--out", required=True)
    per_class: int = option(100, "images per class")
    seed: int = option(0, "job seed (a sample's z derives from it and its key)")
    image_size: int = option(0, "output size (default: the dataset's)", flag="--size")
    batch_size: int = option(64, "images per generator call")
    samples_per_shard: int = api_only(256)
    device: str = option("cpu", "cpu, cuda, cuda:N")
