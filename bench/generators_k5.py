"""Generators at k=5 on the embedded phantom world: which synthetic data helps a small CNN?

Usage (from the repo root; ~25 min on 1 thread)::

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/generators_k5.py \
        [--seeds 0 1 2] [--per-class 300] [--work runs/generators_k5] [--eval-split test] \
        [--arms real dreambooth ...] [--db key=value ...]

Per seed s: the real k=5 subset is ``kshot_subset(hospital train, 5, s)`` (the subsets every
classifier arm in medfake uses). Each generator arm writes ``--per-class`` images per class with
``engine.generators.make_synthetic_dataset(spec, hospital, per_class, seed=s, out)``; the adapted
generators (DreamBooth, DCGAN, ACGAN, classic augmentation) see only those 15 real images. The
base generator is the cached embedded one (``cached_generator(public corpus)``, default
profile). The small CNN of ``engine.classifiers`` (run.py's CNN arms: 200 steps, batch 64,
lr 1e-3, no augmentation, seed s) trains on real + X and is evaluated on the hospital
``--eval-split``. Everything is resumable: generators, shards and per-arm metrics are kept in
``--work``. Prints a markdown table (mean +- sample std over seeds) and writes results.json.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from medfake.engine.evaluation.classifiers import predict_proba, train_classifier
from medfake.engine.data.format import SplitArrays
from medfake.engine.data.reader import load_split
from medfake.pipelines.generators import GeneratorSpec, make_synthetic_dataset
from medfake.engine.evaluation.metrics import classification_metrics
from medfake.engine.core.paths import cache_dir
from medfake.engine.data.phantoms import PhantomConfig, make_phantom_world
from medfake.engine.core.seeding import derive_seed
from medfake.engine.data.kshot import kshot_subset
from medfake.pipelines.train_generator import cached_generator

K = 5
SYNTH = {"steps": 20, "guidance_scale": 4.0, "scheduler": "dpm++"}
DREAMBOOTH = {"steps": 600, "batch_size": 4, "lr": 1e-4, "num_class_images": 50,
              "prior_loss_weight": 1.0, "instance_format": "{prompt} {token}"}
GAN = {"image_size": 32, "g_features": 32, "d_features": 32, "steps": 600, "batch_size": 32,
       "checkpoint_every": 300, "grid_every": 300}
ARMS = ("real", "public", "base", "dreambooth", "dcgan", "acgan", "classic")
LABELS = {"real": "real only", "public": "real + public corpus (control)",
          "base": "real + base diffusion synthetic", "dreambooth": "real + DreamBooth synthetic",
          "dcgan": "real + DCGAN synthetic", "acgan": "real + ACGAN synthetic",
          "classic": "real + classic augmentation copies"}


def _world() -> tuple[Path, Path]:
    """The default phantom world, cached exactly where ``medfake run`` caches it."""
    cfg = PhantomConfig()
    world = cache_dir("phantoms", f"seed{cfg.seed}-" + str(
        derive_seed(json.dumps(asdict(cfg), sort_keys=True)) % 10**10))
    if not (world / "hospital" / "dataset.json").exists():
        make_phantom_world(world, cfg)
    return world / "public", world / "hospital"


def _spec(arm: str, base: Path, seed: int, db: dict) -> GeneratorSpec:
    if arm == "base":
        return GeneratorSpec("diffusion", model=str(base), sample=SYNTH)
    if arm == "dreambooth":
        return GeneratorSpec("dreambooth", model=str(base), k=K, kshot_seed=seed,
                             train={**DREAMBOOTH, **db, "seed": seed}, sample=SYNTH)
    if arm in ("dcgan", "acgan"):  # ACGAN's one model gets the steps of DCGAN's three
        steps = GAN["steps"] * (3 if arm == "acgan" else 1)
        return GeneratorSpec(arm, k=K, kshot_seed=seed, train={**GAN, "steps": steps, "seed": seed})
    return GeneratorSpec("classic", k=K, kshot_seed=seed)


def _concat(a: SplitArrays, b: SplitArrays) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([a.images, b.images]), np.concatenate([a.labels, b.labels])


def _parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        out[key] = json.loads(value)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--per-class", type=int, default=300)
    ap.add_argument("--work", default="runs/generators_k5")
    ap.add_argument("--eval-split", default="test", choices=["test", "val"])
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    ap.add_argument("--cnn-steps", type=int, default=200)
    ap.add_argument("--db", nargs="*", default=[], help="DreamBooth overrides key=json-value")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    db = _parse_overrides(a.db)
    work = Path(a.work)
    public, hospital = _world()
    base = cached_generator(public)
    pool, evald = load_split(hospital, "train"), load_split(hospital, a.eval_split)
    names = ["cyst", "metastasis", "hemangioma"]
    public_arr = load_split(public, "train") if "public" in a.arms else None
    tag = json.dumps({"db": db, "per_class": a.per_class, "cnn_steps": a.cnn_steps,
                      "split": a.eval_split}, sort_keys=True)
    rows = []
    for seed in a.seeds:
        real = kshot_subset(pool, K, seed)
        for arm in a.arms:
            res_path = work / f"seed{seed}" / f"{arm}-{derive_seed(tag) % 10**8}.json"
            if res_path.is_file():
                rows.append(json.loads(res_path.read_text()))
                continue
            t0 = time.time()
            if arm == "real":
                x, y = real.images, real.labels
            elif arm == "public":
                x, y = _concat(real, public_arr)
            else:
                out = work / f"seed{seed}" / (arm if arm != "dreambooth" or not db else
                                              f"dreambooth-{derive_seed(json.dumps(db, sort_keys=True)) % 10**8}")
                syn = make_synthetic_dataset(_spec(arm, base, seed, db), hospital, a.per_class,
                                             seed, out)
                x, y = _concat(real, load_split(syn, "train"))
            t_gen = time.time() - t0
            model = train_classifier(x, y, steps=a.cnn_steps, batch=64, lr=1e-3, seed=seed)
            m = classification_metrics(evald.labels, predict_proba(model, evald.images), names)
            row = {"arm": arm, "seed": seed, "accuracy": m["accuracy"], "macro_auc": m["macro_auc"],
                   "n_train": len(y), "generator_seconds": round(t_gen, 1),
                   "total_seconds": round(time.time() - t0, 1)}
            res_path.parent.mkdir(parents=True, exist_ok=True)
            res_path.write_text(json.dumps(row))
            logging.info("%s", row)
            rows.append(row)
    (work / "results.json").write_text(json.dumps({"rows": rows, "args": vars(a),
                                                   "dreambooth": {**DREAMBOOTH, **db},
                                                   "gan": GAN, "synth": SYNTH}, indent=1))
    print(f"\nk={K}, seeds {a.seeds}, {a.per_class} synthetic/class, eval split {a.eval_split} "
          f"(n={len(evald)}), small CNN {a.cnn_steps} steps")
    print("| arm | accuracy % | macro AUC % | wall s (per seed, generator + CNN) |")
    print("|---|---|---|---|")
    for arm in a.arms:
        r = [row for row in rows if row["arm"] == arm]
        acc = 100 * np.array([row["accuracy"] for row in r])
        auc = 100 * np.array([row["macro_auc"] for row in r])
        sd = lambda v: v.std(ddof=1) if len(v) > 1 else 0.0  # noqa: E731
        print(f"| {LABELS[arm]} | {acc.mean():.1f} +- {sd(acc):.1f} | {auc.mean():.1f} +- "
              f"{sd(auc):.1f} | {np.mean([row['total_seconds'] for row in r]):.0f} |")


if __name__ == "__main__":
    main()
