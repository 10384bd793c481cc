"""Train / val / test assignment: by patient when patient ids exist, seeded otherwise.

Every item carries a group (its patient's pseudonym, else its DICOM series, else its file's
content hash, else itself); a group never spans two splits. Without a source split, the test
split is one fold of ``round(1 / test_fraction)`` stratified group folds
(``sklearn.model_selection.StratifiedGroupKFold``, seeded), and val is carved the same way from
the rest, so class proportions are kept as far as the groups allow.
"""
from __future__ import annotations

import warnings
from collections import defaultdict
from typing import Sequence

import numpy as np

from ..core.errors import DatasetError


def check_given_splits(splits: Sequence[str], groups: Sequence[str], wheres: Sequence[str],
                       what: str) -> None:
    """Refuse a source whose own splits put one patient (group) into two splits."""
    seen: dict[str, tuple[str, str]] = {}
    clashes: list[str] = []
    for split, group, where in zip(splits, groups, wheres):
        first = seen.setdefault(group, (split, where))
        if first[0] != split:
            clashes.append(f"{first[1]} ({first[0]}) and {where} ({split})")
    if clashes:
        n = len(seen)
        raise DatasetError(
            f"the source's own splits put the same {what} into two splits ({len(clashes)} "
            f"case(s), e.g. {clashes[0]}); medfake refuses to import overlapping splits. Fix "
            f"the split column, or remove it and let medfake split by {what} "
            f"({n} {what}s found).")


def _carve(idx: np.ndarray, labels: np.ndarray, groups: np.ndarray, frac: float, seed: int,
           split: str, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Split ``idx`` into (rest, held-out) with ~``frac`` held out, groups kept whole."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    n_folds = max(2, round(1.0 / frac))
    n_groups = len(set(groups[idx].tolist()))
    if n_groups < n_folds:
        raise DatasetError(f"only {n_groups} {what}s are left for the {split} split, but a "
                           f"fraction of {frac:g} needs at least {n_folds}; lower --{split} "
                           f"(or set it to 0) or import more data")
    singletons = n_groups == len(idx)
    with warnings.catch_warnings():  # "least populated class has fewer members than n_splits"
        warnings.simplefilter("ignore", UserWarning)
        if singletons:
            folds = StratifiedKFold(n_folds, shuffle=True, random_state=seed)
            rest, held = next(folds.split(idx, labels[idx]))
        else:
            folds = StratifiedGroupKFold(n_folds, shuffle=True, random_state=seed)
            rest, held = next(folds.split(idx, labels[idx], groups[idx]))
    return idx[rest], idx[held]


def assign_splits(labels: Sequence[int], groups: Sequence[str], val_fraction: float,
                  test_fraction: float, seed: int, what: str = "patient") -> list[str]:
    """A split name per item (see the module docstring)."""
    labels_a, groups_a = np.asarray(labels), np.asarray(groups, dtype=object)
    out = np.array(["train"] * len(labels_a), dtype=object)
    idx = np.arange(len(labels_a))
    if test_fraction > 0:
        idx, held = _carve(idx, labels_a, groups_a, test_fraction, seed, "test", what)
        out[held] = "test"
    if val_fraction > 0:
        frac = val_fraction / (1.0 - test_fraction)
        idx, held = _carve(idx, labels_a, groups_a, frac, seed + 1, "val", what)
        out[held] = "val"
    return out.tolist()


def groups_per_split(splits: Sequence[str], groups: Sequence[str]) -> dict[str, int]:
    by: dict[str, set[str]] = defaultdict(set)
    for s, g in zip(splits, groups):
        by[s].add(g)
    return {s: len(v) for s, v in sorted(by.items())}
