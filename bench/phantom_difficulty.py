"""Calibration of the phantom world: the liver-lesion study's small CNN at k=5 vs all images.

Usage: ``python bench/phantom_difficulty.py [--steps 300] [--seeds 0 1 2]``. Builds the default
phantom world in a temporary directory and prints test accuracy / macro AUC (mean +- std over
seeds) for k=5 real images per class and for the whole hospital train pool, each with and
without classic augmentation, at the same step budget.
"""
from __future__ import annotations

import argparse
import tempfile

import numpy as np

from medfake.engine.evaluation.classifiers import predict_proba, train_classifier
from medfake.engine.data.reader import load_split
from medfake.engine.evaluation.metrics import classification_metrics
from medfake.engine.data.phantoms import CLASS_NAMES, PhantomConfig, make_phantom_world
from medfake.engine.data.kshot import kshot_subset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        _, hospital = make_phantom_world(tmp, PhantomConfig())
        pool, test = load_split(hospital, "train"), load_split(hospital, "test")
    print(f"| training set | augmentation | accuracy % | macro AUC % |  (test n={len(test)}, "
          f"{a.steps} steps, batch 64, seeds {a.seeds})")
    print("|---|---|---|---|")
    for name in ("k=5", "all"):
        for augment in (False, True):
            acc, auc = [], []
            for seed in a.seeds:
                train = kshot_subset(pool, 5, seed) if name == "k=5" else pool
                model = train_classifier(train.images, train.labels, steps=a.steps, seed=seed,
                                         augment=augment)
                m = classification_metrics(test.labels, predict_proba(model, test.images),
                                           CLASS_NAMES)
                acc.append(100 * m["accuracy"])
                auc.append(100 * m["macro_auc"])
            label = f"{name} ({len(train)} images)"
            print(f"| {label} | {'on' if augment else 'off'} | {np.mean(acc):.1f} +- "
                  f"{np.std(acc, ddof=1):.1f} | {np.mean(auc):.1f} +- {np.std(auc, ddof=1):.1f} |")


if __name__ == "__main__":
    main()
