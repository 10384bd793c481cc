"""``GeneratorTrainConfig``: ``medfake train generator`` (``pipelines/train_generator.py``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ...engine.core.config import JobConfig, api_only


@dataclass(frozen=True)
class GeneratorTrainConfig(JobConfig):
    """Everything that determines the trained generator (it is hashed for the cache).

    The default is the embedded generator (~12 CPU-minutes: est. 6-7.5 min wall on 2 idle
    cores; on a shared box call ``torch.set_num_threads(1)`` first, 2 OpenMP threads thrash);
    ``profile("test")`` is a seconds-long run for tests. ``image_size`` None means the preset's.
    The CLI picks a profile (``--profile``) or a ``--config`` file; no field has its own flag.
    """

    PROFILES: ClassVar[dict[str, dict[str, Any]]] = {
        "default": {},
        "test": dict(preset="micro", vae_steps=30, vae_batch=16, unet_steps=40, unet_batch=16,
                     warmup_steps=5, checkpoint_every=20),
    }

    preset: str = api_only("tiny")
    seed: int = api_only(0)
    image_size: int | None = api_only(None)
    vae_steps: int = api_only(400)
    vae_batch: int = api_only(32)
    vae_lr: float = api_only(1e-3)
    kl_weight: float = api_only(1e-4)         # per latent element, relative to per-pixel MSE
    unet_steps: int = api_only(1200)
    unet_batch: int = api_only(48)
    unet_lr: float = api_only(1e-3)
    warmup_steps: int = api_only(100)
    cfg_dropout: float = api_only(0.1)        # probability of training on the empty caption
    snr_gamma: float | None = api_only(5.0)   # Min-SNR-gamma loss weighting; None = plain MSE
    ema_decay: float = api_only(0.995)
    hflip: bool = api_only(True)
    checkpoint_every: int = api_only(250)
