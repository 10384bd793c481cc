"""`medfake run`: the whole chain on the embedded phantom world, ending in a real-data verdict.

phantoms (cached) -> generator pretraining on the public corpus (cached) -> synthesis into shards
(resumable) -> CLIP pretraining on synthetic shards, and on the public corpus for the control
-> fine-tuning on k real images per class -> evaluation on the real hospital test split.

Arms share one fine-tuning budget (same steps, batch, lr) and differ only in what the model saw
before it: nothing (real-only), synthetic images, or the generator's own training corpus used
directly (the control a generator must beat). The control sees exactly as many corpus images
per class as the synthetic arm sees synthetic ones (``control-equal/``, drawn once with a fixed
seed): a generator is compared with its data at equal count, never with all of it.
``synthetic-only`` never sees a real image. The small-CNN arms repeat the comparison with the
liver-lesion study's classifier trained on real, real+synthetic or real+public images (the same
count per class as the synthetic ones, drawn per seed) at an equal step budget.

The memorization audit compares the synthetic images with what the generator learned from (the
public corpus), not with the hospital data it never saw (``experiment.audit_reference``).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from ..engine.evaluation.classifiers import predict_proba, train_classifier
from ..engine.data.reader import DatasetInfo, load_split
from ..engine.data.format import SplitArrays
from ..engine.evaluation.metrics import bootstrap_ci, classification_metrics
from ..engine.data.corpus_control import ControlCorpus
from ..engine.core.seeding import derive_seed
from .configs.run import RunConfig
from .experiment import assess_sources, invocation, provenance
from .experiment_data import embedded_world, write_subset
from .report import write_report
from .synth import SynthConfig, synthesize
from .train_clip import (ClipTrainConfig, evaluate_classifier, finetune_classifier, pretrain_clip,
                         zero_shot_eval)
from ..engine.data.kshot import kshot_subset
from .train_generator import cached_generator

log = logging.getLogger(__name__)


def _concat(a: SplitArrays, b: SplitArrays) -> SplitArrays:
    return SplitArrays(np.concatenate([a.images, b.images]), np.concatenate([a.labels, b.labels]),
                       a.captions + b.captions, a.keys + b.keys, a.metas + b.metas)


def _with_seed(cfg: ClipTrainConfig, seed: int) -> ClipTrainConfig:
    return replace(cfg, seed=seed)


def _cnn_arm(train: SplitArrays, test: SplitArrays, names: list[str], steps: int,
             seed: int) -> dict:
    model = train_classifier(train.images, train.labels, steps=steps, batch=64, lr=1e-3,
                             seed=seed, augment=False)
    probs = predict_proba(model, test.images)
    m = classification_metrics(test.labels, probs, names)
    m["accuracy_ci95"] = list(bootstrap_ci(test.labels, probs, "accuracy", seed=seed))
    return m


def run_chain(cfg: RunConfig) -> Path:
    """Run every stage (each cached or resumable); return the run directory."""
    t0 = time.time()
    run_dir = Path(cfg.out_root) / cfg.name
    run_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def stage(name: str, t: float) -> None:
        timings[name] = round(time.time() - t, 1)
        log.info("stage %s done in %.1f s", name, timings[name])

    t = time.time()
    public, hospital = embedded_world(cfg.phantoms)
    stage("phantoms", t)

    t = time.time()
    model_dir = cached_generator(public, cfg.generator)
    stage("generator", t)

    t = time.time()
    synth_dir = synthesize(SynthConfig(model_dir=str(model_dir), real_dataset=str(hospital),
                                       out_dir=str(run_dir / "synthetic"),
                                       per_class=cfg.synth_per_class, seed=0,
                                       scheduler=cfg.scheduler, steps=cfg.synth_steps,
                                       guidance_scale=cfg.guidance_scale,
                                       backend=cfg.synth_backend))
    stage("synthesis", t)

    t = time.time()
    info = DatasetInfo.load(hospital)
    names = info.class_names
    # The control at equal count: as many corpus images per class as synthetic ones (by class
    # label, or by caption retrieval in the general world: engine.data.corpus_control).
    control = ControlCorpus.load(public, names, info.prompt_templates)
    n_syn = min(DatasetInfo.load(synth_dir).splits["train"]["per_class"].values())
    n_pub = control.capacity()
    if n_pub < n_syn:
        log.warning("the public corpus holds %d images of its smallest class, fewer than the %d "
                    "synthetic ones per class: the control sees %d per class", n_pub, n_syn, n_pub)
    n_ctrl = min(n_syn, n_pub)
    job = {"subset_of": str(public), "per_class": n_ctrl,
           "purpose": "control at equal count with the synthetic arm"}
    if control.method != "class-labels":
        job["method"] = control.describe()
    control_dir = write_subset(public, control.draw(n_ctrl, derive_seed("control-equal")), job,
                               run_dir / "control-equal", names, info.prompt_templates)
    ckpt_synth = pretrain_clip([str(synth_dir)], run_dir / "clip-synthetic", cfg.clip)
    ckpt_public = pretrain_clip([str(control_dir)], run_dir / "clip-control-equal", cfg.clip)
    stage("clip_pretrain", t)

    t = time.time()
    train_pool = load_split(hospital, "train", skip_bad=True)
    test = load_split(hospital, "test", skip_bad=True)
    synth = load_split(synth_dir, "train", skip_bad=True)
    rows: list[dict] = []
    for seed in cfg.seeds:
        real_k = kshot_subset(train_pool, cfg.k_shot, seed)
        fcfg = _with_seed(cfg.clip, seed)
        arms = {
            "clip real-only": (None, real_k),
            "clip synthetic-pretrain + real-finetune": (ckpt_synth, real_k),
            "clip synthetic-only": (ckpt_synth, synth),
            "clip control: public-pretrain + real-finetune": (ckpt_public, real_k),
        }
        extra = {"clip real-only": 0, "clip control: public-pretrain + real-finetune": n_ctrl}
        for arm, (init, data) in arms.items():
            model = finetune_classifier(init, data, names, info.prompt_templates, fcfg)
            rows.append({"arm": arm, "seed": seed, "n_extra_per_class": extra.get(arm, n_syn),
                         **evaluate_classifier(model, test, names)})
        rows.append({"arm": "clip synthetic-only, zero-shot", "seed": seed,
                     "n_extra_per_class": n_syn,
                     **zero_shot_eval(ckpt_synth, test, names, info.prompt_templates)})
        pub_k = control.draw(n_ctrl, derive_seed("cnn control", seed))
        cnn_arms = {"cnn real-only": (real_k, 0),
                    "cnn real + synthetic": (_concat(real_k, synth), n_syn),
                    "cnn control: real + public": (_concat(real_k, pub_k), n_ctrl)}
        for arm, (data, n_extra) in cnn_arms.items():
            rows.append({"arm": arm, "seed": seed, "n_extra_per_class": n_extra,
                         **_cnn_arm(data, test, names, cfg.cnn_steps, seed)})
        log.info("seed %d done", seed)
    stage("finetune_evaluate", t)
    timings["total"] = round(time.time() - t0, 1)

    results = {"config": asdict(cfg), "k_shot": cfg.k_shot, "class_names": names,
               "n_test": len(test),
               "rows": rows, "timings_s": timings, "model_dir": str(model_dir),
               "synthetic_dir": str(synth_dir), "hospital_dir": str(hospital),
               "public_dir": str(public), "control_dir": str(control_dir),
               "control_per_class": n_ctrl, "synthetic_per_class": n_syn,
               "control": control.describe()}
    results["quality"], results["memorization"] = assess_sources(
        {"diffusion": synth_dir}, train_pool, test, names, run_dir, control=control)
    results["provenance"] = provenance(
        invocation(f"python: medfake.pipelines.run.run_chain(RunConfig(name={cfg.name!r}, "
                   f"out_root={cfg.out_root!r}, ...)); full config in results.json"),
        {"hospital": hospital, "public": public, "synthetic": synth_dir})
    (run_dir / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    html_path, md_path = write_report(run_dir)
    for section in md_path.read_text().split("\n## ")[1:3]:   # Verdict, Results
        print("## " + section.split("\n### ")[0].rstrip() + "\n")
    print(f"report: {html_path}\n        {md_path}")
    return run_dir
