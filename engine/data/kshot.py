"""k-shot subsets of a real split: ``k`` images per class, chosen reproducibly from a seed. Every
job that learns from "the k real images" (CLIP fine-tuning, DreamBooth, GANs, classifiers)
draws them here, so all arms of an experiment see the same images.
"""
from __future__ import annotations

import numpy as np

from ..core.seeding import derive_seed
from .format import SplitArrays


def kshot_subset(train: SplitArrays, k: int, seed: int) -> SplitArrays:
    """``k`` images per class without replacement; same subsets as ``pipelines.run``'s."""
    rng = np.random.default_rng(derive_seed("kshot", seed, k))
    idx = []
    for c in np.unique(train.labels):
        pool = np.flatnonzero(train.labels == c)
        if len(pool) < k:
            raise ValueError(f"class {c} has only {len(pool)} training images; k={k} is too many")
        idx.extend(rng.choice(pool, size=k, replace=False))
    return train.subset(idx)
