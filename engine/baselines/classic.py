"""Classic augmentation as a baseline generator: each synthetic image is a randomly transformed
real training image (flip, rotation, warp, lighting), so it adds no new content by construction.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class ClassicAugment:
    """Random transforms of one real image; each is drawn per sample from the sample's seed."""

    hflip: bool = True
    vflip: bool = True
    rot90: bool = True
    max_rotation: float = 20.0       # degrees, reflect-padded
    crop_pad: float = 0.125          # reflect pad by this fraction of the size, then crop back
    brightness: float = 0.1          # additive shift, fraction of full scale
    contrast: float = 0.2            # multiplicative about the image mean, 1 +- this
    gamma: float = 0.2               # exponent exp(+- this)
    samples_per_shard: int = 256


def classic_transform(image: np.ndarray, rng: np.random.Generator,
                      aug: ClassicAugment) -> tuple[np.ndarray, dict[str, Any]]:
    """One augmented copy of a uint8 HxW or HxWx3 image and the parameters drawn."""
    x = image.astype(np.float32) / 255.0
    size = x.shape[0]
    p: dict[str, Any] = {
        "hflip": bool(aug.hflip and rng.random() < 0.5),
        "vflip": bool(aug.vflip and rng.random() < 0.5),
        "rot90": int(rng.integers(4)) if aug.rot90 else 0,
        "rotation": float(rng.uniform(-aug.max_rotation, aug.max_rotation)),
        "brightness": float(rng.uniform(-aug.brightness, aug.brightness)),
        "contrast": float(1 + rng.uniform(-aug.contrast, aug.contrast)),
        "gamma": float(np.exp(rng.uniform(-aug.gamma, aug.gamma))),
    }
    pad = int(round(aug.crop_pad * size))
    p["crop"] = [int(v) for v in rng.integers(0, 2 * pad + 1, size=2)]
    if p["hflip"]:
        x = x[:, ::-1]
    if p["vflip"]:
        x = x[::-1]
    x = np.rot90(x, p["rot90"], axes=(0, 1))
    if p["rotation"]:
        x = ndimage.rotate(x, p["rotation"], axes=(1, 0), reshape=False, order=1, mode="reflect")
    if pad:
        widths = [(pad, pad), (pad, pad)] + [(0, 0)] * (x.ndim - 2)
        x = np.pad(x, widths, mode="reflect")[p["crop"][0]:p["crop"][0] + size,
                                              p["crop"][1]:p["crop"][1] + size]
    x = np.clip(x, 0, 1) ** p["gamma"]
    x = (x - x.mean()) * p["contrast"] + x.mean() + p["brightness"]
    return (np.clip(x, 0, 1) * 255).round().astype(np.uint8), p
