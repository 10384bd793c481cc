"""Sensitivity of the default memorization rule: perturbed copies of 200 public-corpus images.

Run: OMP_NUM_THREADS=1 nice -n 10 python \
    bench/memorization_sensitivity.py PUBLIC_DIR CLIP_DIR
"""
import sys

import numpy as np, torch
torch.set_num_threads(1)
from medfake.engine.data.reader import load_split
from medfake.engine.evaluation.memorization import audit_memorization
from medfake.engine.evaluation.quality import load_encoder
P, CLIP = sys.argv[1], sys.argv[2]
pub = load_split(P, 'train')
rng = np.random.default_rng(0)
src = pub.subset(rng.choice(len(pub), 200, replace=False))
def noisy(a, s): return (a.astype(int) + rng.normal(0, s, a.shape)).round().clip(0, 255).astype(np.uint8)
variants = {"exact copy": src.images,
            "copy + noise sd 4": noisy(src.images, 4), "copy + noise sd 8": noisy(src.images, 8),
            "copy + noise sd 16": noisy(src.images, 16),
            "copy shifted 1 px": np.roll(src.images, 1, axis=2),
            "copy mirrored": src.images[:, :, ::-1].copy()}
encs = {"pixel": load_encoder("pixel"), "clip": load_encoder(f"clip:{CLIP}")}
print("| variant (200 images) | pixel flagged | clip flagged |\n|---|---|---|")
for name, imgs in variants.items():
    syn = type(src)(imgs, src.labels, src.captions, [f"s{i}" for i in range(200)], src.metas)
    row = []
    for e in encs.values():
        a = audit_memorization(syn, pub, e)
        hit = sum(pub.keys[a.nearest[i]] == src.keys[i] for i in a.flagged_indices())
        row.append(f"{len(a.flagged_indices())} ({hit} to its source)")
    print(f"| {name} | {' | '.join(row)} |", flush=True)
