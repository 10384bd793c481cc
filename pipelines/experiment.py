"""`medfake experiment NAME --config CFG.json`: run one protocol, resumably, with honest statistics.

Every arm (``pipelines/protocols.py``) is trained once per seed and evaluated on the REAL
held-out test split (``classification_metrics`` + percentile-bootstrap 95% CIs). Each arm x seed
is written atomically to ``arms/<arm>/seed<N>.json`` together with the settings that produced
it; a re-run skips every finished arm-seed (and refuses one made with other settings, naming
them). Outputs in ``--out``::

    config.json       the full config (re-run: medfake experiment NAME --config it --out DIR)
    results.json      config, provenance, datasets, rows, summary (mean +- std over seeds),
                      sample quality and memorization audit per synthetic source
    results.csv       one row per arm x seed
    plots/            accuracy-vs-real-images curves, bars with CIs, ratio curve, confusions
    memorization/     nearest-real pair grids and distance histograms per source
    report.html/.md   `medfake report DIR`
"""
from __future__ import annotations

import csv
import json
import logging
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..engine.core.atomic import atomic_write_bytes, fsync_dir, sha256_file
from ..engine.data.corpus_control import ControlCorpus
from ..engine.data.format import SplitArrays
from ..engine.data.reader import load_split
from .configs.experiment import ExperimentConfig
from .experiment_data import CI_METRICS, ExperimentData
from .protocols import PROTOCOLS, Arm, plan_arms, slugify

log = logging.getLogger(__name__)
FORMAT = "medfake-experiment/1"


# ----------------------------------------------------------------------------- provenance

def _version(pkg: str) -> str | None:
    from importlib import metadata
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        r = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                           timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def invocation(fallback: str) -> str:
    """The exact command line when this process is the ``medfake`` CLI, else ``fallback``."""
    argv0 = Path(sys.argv[0])
    if argv0.name == "medfake" or (argv0.name == "__main__.py" and argv0.parent.name == "cli"):
        return "medfake " + shlex.join(sys.argv[1:])
    return fallback


def provenance(command: str, datasets: dict[str, str | os.PathLike | None]) -> dict:
    """Command, time, host, package versions, git commit and dataset fingerprints."""
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "command": command, "argv": sys.argv, "cwd": os.getcwd(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": platform.node(),
        "python": platform.python_version(), "platform": platform.platform(),
        "versions": {p: _version(p) for p in ("medfake", "torch", "torchvision", "numpy",
                                              "scikit-learn", "scipy", "matplotlib", "timm",
                                              "open_clip_torch", "diffusers")},
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if dirty is None else bool(dirty),
        "datasets": {k: {"path": str(v), "dataset_json_sha256": sha256_file(Path(v) / "dataset.json")}
                     for k, v in datasets.items() if v and (Path(v) / "dataset.json").is_file()},
    }


# ----------------------------------------------------------------------------- quality, privacy

def audit_reference(synthetic_dir: Path, fallback: SplitArrays,
                    fallback_name: str = "the real train split") -> tuple[SplitArrays, dict]:
    """The images to audit ``synthetic_dir`` against: what its generator learned from
    (``pipelines.lineage``), else ``fallback``, and a record saying which was used and why."""
    from .lineage import dataset_lineage, load_references
    lin = dataset_lineage(synthetic_dir)
    if lin.references:
        ref = load_references(lin.references)
        rec = {"reference": "the generator's training data",
               "sources": [r.describe() for r in lin.references], "n_reference": len(ref)}
        if lin.unknown:
            rec["incomplete"] = lin.unknown
        return ref, rec
    log.warning("memorization audit of %s: %s; auditing against %s instead", synthetic_dir,
                lin.unknown, fallback_name)
    return fallback, {"reference": f"{fallback_name} (fallback: the generator's training "
                                   f"data is not recorded)", "why": lin.unknown,
                      "n_reference": len(fallback)}


def audit_source(name: str, synthetic_dir: Path, train: SplitArrays, enc: Any, out_dir: Path,
                 threshold: float | None = None, syn: SplitArrays | None = None) -> dict:
    """Memorization audit of one synthetic dataset against ``audit_reference``'s images; the
    pair grid and histogram go to ``out_dir/memorization/<slug>_{pairs,hist}.png``."""
    from ..engine.evaluation.memorization import audit_memorization, distance_histogram, pair_grid
    syn = syn if syn is not None else load_split(synthetic_dir, "train", skip_bad=True)
    ref, ref_record = audit_reference(synthetic_dir, train)
    audit = audit_memorization(syn, ref, enc, threshold)
    mdir = out_dir / "memorization"
    mdir.mkdir(parents=True, exist_ok=True)
    slug = slugify(name)
    Image.fromarray(pair_grid(audit, syn, ref)).save(mdir / f"{slug}_pairs.png")
    distance_histogram(audit, mdir / f"{slug}_hist.png")
    log.info("source %s: %d of %d flagged against %s (%d images)", name, len(audit.flagged),
             len(syn), ref_record["reference"], len(ref))
    return {**audit.to_json(), **ref_record, "dir": str(synthetic_dir),
            "pairs_png": f"memorization/{slug}_pairs.png",
            "hist_png": f"memorization/{slug}_hist.png"}


def assess_sources(sources: dict[str, Path], train: SplitArrays, test: SplitArrays,
                   class_names: list[str], out_dir: Path, encoder: str = "pixel",
                   threshold: float | None = None,
                   control: ControlCorpus | None = None) -> tuple[dict, dict]:
    """Sample quality (vs the real test split) and memorization audit of each synthetic dataset
    dir; pair grids and histograms go to ``out_dir/memorization``.

    Each source is audited against the images its generator learned from (``audit_reference``:
    the public corpus for the embedded generator, the k-shot and class images (and the base
    model's corpus) for DreamBooth, the training images for GANs, the source images for
    conditioned synthesis and classic augmentation); only where that is not recorded against
    ``train`` (the real train split), and the result says which reference it used.
    ``control``: also the quality of the control corpus (as many images per class as the
    largest source, drawn as the control arm draws them), the reference a generator should
    beat. Returns (quality, memorization)."""
    from ..engine.evaluation.quality import load_encoder, quality_report
    enc = load_encoder(encoder)
    quality, memo, largest = {}, {}, 1
    for name, d in sources.items():
        syn = load_split(d, "train", skip_bad=True)
        largest = max(largest, int(np.bincount(syn.labels).max()))
        quality[name] = quality_report(test, syn, enc, class_names)
        memo[name] = audit_source(name, Path(d), train, enc, out_dir, threshold, syn)
        log.info("source %s: FD %.3g, 1-NN acc %.3f", name,
                 quality[name]["overall"]["frechet_distance"],
                 quality[name]["overall"]["one_nn_accuracy"])
    if control is not None and sources:
        sub = control.draw(largest, 0)
        quality["control corpus (used directly)"] = quality_report(test, sub, enc, class_names)
    return quality, memo


# ----------------------------------------------------------------------------- running

def _atomic_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(obj, indent=1, default=str) + "\n").encode())


def _settings(arm: Arm, seed: int, cfg: ExperimentConfig, data: ExperimentData) -> dict:
    """Everything that determines an arm-seed's result (compared on resume)."""
    train = (asdict(cfg.clip_config()) if arm.classifier == "clip" else
             {"steps": cfg.steps, "batch": cfg.batch, "lr": cfg.lr, "width": cfg.width,
              "weights": cfg.classifier_weights.get(arm.classifier)})
    s = {"arm": asdict(arm), "seed": seed, "train": train, "test_split": cfg.test_split,
         "real": data.real_fingerprint(), "source": data.fingerprint(arm.source),
         "init": data.fingerprint(arm.init), "n_extra_per_class": data.extra_count(arm)
         if arm.source else 0, "n_bootstrap": cfg.n_bootstrap}
    return json.loads(json.dumps(s, default=str))


def run_arm_seed(arm: Arm, seed: int, data: ExperimentData, protocol: str) -> dict:
    """Train and evaluate one arm for one seed; the result row."""
    t0 = time.time()
    train, n_real, n_extra = data.train_set(arm, seed)
    probs = data.fit_predict(arm, train, seed)
    m = data.evaluate(probs, seed)
    return {"protocol": protocol, "arm": arm.name, "role": arm.role, "series": arm.series,
            "classifier": arm.classifier, "k": arm.k, "real": arm.real, "source": arm.source,
            "per_real": arm.per_real, "transforms": arm.transforms, "init": arm.init,
            "seed": seed, "n_real_per_class": n_real, "n_extra_per_class": n_extra,
            "n_train": len(train), **m, "seconds": round(time.time() - t0, 2)}


def _check_same(path: Path, stored: dict, settings: dict) -> None:
    if stored == settings:
        return
    diff = sorted(k for k in set(stored) | set(settings) if stored.get(k) != settings.get(k))
    raise ValueError(f"{path} was computed with other settings (differing: {', '.join(diff)}); "
                     f"re-run with the same config or use another --out")


def write_csv(rows: list[dict], class_names: list[str], path: Path) -> None:
    """``results.csv``: one row per arm x seed, scalars, CIs, per-class sensitivity/specificity."""
    cols = ["protocol", "arm", "role", "series", "classifier", "k", "real", "source", "per_real",
            "transforms", "init", "seed", "n_real_per_class", "n_extra_per_class", "n_train", "n"]
    cols += [c for m in CI_METRICS for c in (m, f"{m}_ci95_low", f"{m}_ci95_high")]
    cols += [f"{kind}_{c}" for c in class_names for kind in ("sensitivity", "specificity")]
    cols += ["seconds"]
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            flat = dict(r)
            for m in CI_METRICS:
                flat[f"{m}_ci95_low"], flat[f"{m}_ci95_high"] = r["ci95"][m]
            for c in class_names:
                flat[f"sensitivity_{c}"] = r["sensitivity"][c]
                flat[f"specificity_{c}"] = r["specificity"][c]
            w.writerow(flat)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def run_experiment(protocol: str, cfg: ExperimentConfig, out: str | os.PathLike,
                   command: str | None = None, report: bool = True, rank: int | None = None,
                   world_size: int | None = None) -> Path | None:
    """Run (or resume) ``protocol`` into ``out``; return ``out/results.json``.

    Across ranks (``rank``/``world_size``, else torchrun / srun / SLURM array variables, read
    as ``medfake synth`` reads them): arm-seed ``i`` of the planned list belongs to rank
    ``i % world_size``; each rank computes its missing ones (any rank can be re-run), and the
    results and report are assembled by whichever run finds every arm-seed file present (the
    last rank to finish, or a re-run with any rank). Returns None while other ranks' arm-seeds
    are missing. Builds shared by arms (synthetic sources, CLIP pretraining) are serialised
    between the ranks by a file lock in ``out``."""
    from ..engine.synth.plan import resolve_rank
    from .report import summarize_rows, write_experiment_plots, write_report
    ri = resolve_rank(rank, world_size)
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {sorted(PROTOCOLS)}")
    t0 = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _atomic_json(out / "config.json", asdict(cfg))
    reproduce = f"medfake experiment {protocol} --config {shlex.quote(str(out / 'config.json'))} " \
                f"--out {shlex.quote(str(out))}"
    data = ExperimentData(cfg, out)
    arms = plan_arms(protocol, cfg, list(data.sources))
    jobs = [(a, s) for a in arms for s in cfg.seeds]
    mine = [j for i, j in enumerate(jobs) if i % ri.world_size == ri.rank]
    rows, computed, missing = [], 0, 0
    with tqdm(total=len(mine), desc=f"experiment {protocol} rank {ri.rank}/{ri.world_size}",
              unit="arm-seed") as bar:
        for i, (arm, seed) in enumerate(jobs):
            path = out / "arms" / arm.slug / f"seed{seed}.json"
            ours = i % ri.world_size == ri.rank
            if not ours and not path.is_file():
                missing += 1        # another rank's, not written yet
                continue
            settings = _settings(arm, seed, cfg, data)
            if path.is_file():
                stored = json.loads(path.read_text())
                _check_same(path, stored["settings"], settings)
                row = stored["row"]
            else:
                bar.set_postfix_str(f"{arm.name} seed {seed}"[:60])
                row = run_arm_seed(arm, seed, data, protocol)
                _atomic_json(path, {"settings": settings, "row": row, "command": reproduce})
                computed += 1
            rows.append({**row, "file": str(path.relative_to(out))})
            bar.update(ours)
    log.info("rank %d/%d (%s): %d arm-seeds computed, %d reused, %d of other ranks missing",
             ri.rank, ri.world_size, ri.source, computed, len(rows) - computed, missing)
    if missing:
        log.info("results and report are assembled once every arm-seed file exists: by the "
                 "last rank to finish, or by re-running any rank")
        return None

    ref = {name: data.source_dir(name) for name in data.sources}  # reference builds
    quality, memo = {}, {}
    if cfg.quality and ref:
        quality, memo = assess_sources(ref, data.train, data.test, data.names, out, cfg.encoder,
                                       cfg.memorization_threshold, control=data.control_corpus)
    source_dirs = {n: str(d) for n, d in ref.items()}
    results = {
        "format": FORMAT, "protocol": protocol, "config": asdict(cfg),
        "class_names": data.names, "n_test": len(data.test), "k_shot": cfg.k,
        "cap_extra_per_class": data.cap(),
        "datasets": {"real": str(data.real_dir), "control": str(data.control_dir),
                     "control_draw": data.control_corpus.describe(),
                     "sources": {n: {**{k: v for k, v in s.items() if k != "dir"},
                                     "dir": source_dirs[n]} for n, s in data.sources.items()}},
        "arms": [asdict(a) for a in arms], "rows": rows, "summary": summarize_rows(rows),
        "quality": quality, "memorization": memo,
        "provenance": provenance(command or invocation(reproduce), {
            "real": data.real_dir, "control": data.control_dir,
            **{f"synthetic:{n}": d for n, d in source_dirs.items()}}),
        "reproduce": reproduce, "computed_arm_seeds": computed,
    }
    results["plots"] = write_experiment_plots(results, out / "plots")
    results["timings_s"] = {"total": round(time.time() - t0, 1)}
    _atomic_json(out / "results.json", results)
    write_csv(rows, data.names, out / "results.csv")
    if report:
        write_report(out)
    return out / "results.json"
