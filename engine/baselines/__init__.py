"""Generators to compare against: DCGAN/ACGAN models and classic augmentation.

Public names are exported lazily (``engine.core.lazy``).
"""
from __future__ import annotations

from ..core.lazy import lazy_exports

_EXPORTS = {
    "ClassicAugment": "classic",
    "Discriminator": "gan",
    "GANArch": "gan",
    "GAN_KINDS": "gan",
    "Generator": "gan",
    "classic_transform": "classic",
    "init_weights": "gan",
    "to_uint8": "gan",
}
__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
