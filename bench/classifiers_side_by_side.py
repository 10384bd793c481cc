"""Side-by-side cost and accuracy of the three downstream classifiers.

Run: OMP_NUM_THREADS=1 nice -n 10 python bench/classifiers_side_by_side.py HOSPITAL_DIR
Trains each arch on k real images per class of the hospital train split (same subset and seed for
all), `steps` Adam steps, batch 32, lr 1e-3, transforms off and on; reports s/step and test
accuracy / macro AUC. One thread, in one process, arms interleaved per seed.
"""
import sys
import time

import numpy as np
import torch

from medfake.engine.evaluation.classifiers import CLASSIFIER_ARCHS, predict_proba, train_classifier
from medfake.engine.data.reader import load_split
from medfake.engine.evaluation.metrics import classification_metrics

torch.set_num_threads(1)
hosp = sys.argv[1]
k, steps = int(sys.argv[2]) if len(sys.argv) > 2 else 20, int(sys.argv[3]) if len(sys.argv) > 3 else 150
train, test = load_split(hosp, "train"), load_split(hosp, "test")
rng = np.random.default_rng(0)
idx = np.concatenate([rng.choice(np.flatnonzero(train.labels == c), k, replace=False)
                      for c in range(int(train.labels.max()) + 1)])
x, y = train.images[idx], train.labels[idx]
names = [str(c) for c in range(int(train.labels.max()) + 1)]
print(f"k={k} per class ({len(y)} images), {steps} steps, batch 32, test n={len(test)}")
print("| arch | transforms | s/step | test accuracy | macro AUC |\n|---|---|---|---|---|")
for augment in (False, True):
    for arch in CLASSIFIER_ARCHS:
        t = time.perf_counter()
        m = train_classifier(x, y, steps=steps, batch=32, seed=0, augment=augment, arch=arch)
        dt = (time.perf_counter() - t) / steps
        met = classification_metrics(test.labels, predict_proba(m, test.images), names)
        print(f"| {arch} | {'on' if augment else 'off'} | {dt:.3f} | {met['accuracy']:.3f} | "
              f"{met['macro_auc']:.3f} |", flush=True)
