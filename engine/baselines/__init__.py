"""Generators to compare against: DCGAN/ACGAN models and classic augmentation.

Public names are exported lazily (PEP 562): ``from medfake.engine.baselines import X`` imports
only the module that defines X, so the CLI stays fast to start.
"""
from __future__ import annotations

import importlib
from typing import Any

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
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
