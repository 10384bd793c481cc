"""Deterministic seeds derived from names, so a sample's randomness depends only on its key."""
from __future__ import annotations

import hashlib
import random


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts (job seed, sample key, ...); stable across runs and hosts."""
    h = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (imported here: ``derive_seed`` users such as
    ``synth status`` must not pay torch's import)."""
    import numpy as np
    import torch
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)
