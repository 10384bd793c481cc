"""Adaptation routes vs real-only vs the equal-count control, settings chosen on val.

Usage (from the repo root; one (world, k) per call, resumable; see bench/RESULTS.md)::

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/routes.py --world near --k 5 \
        [--seeds 0 1 2 3 4] [--routes txt2img inpaint ...] [--per-class 100] [--work runs/routes]
    .venv/bin/python bench/routes.py --report [--work runs/routes]   # verdict over all runs
        # (writes report.md and results.json: every tested row and val choice)

The question each row answers: with k real images per class of the target (hospital) task,
does adding ``--per-class`` images per class from route R train a better small CNN on the real
test split than (a) the k real images alone and (b) the same k real images plus the same
number of images taken directly from the generator's own training corpus (the control)?

Protocol, fixed before any result was seen:

* Seeds 0..4. Seed s draws the k-shot subset ``kshot_subset(hospital train, k, s)``; every
  route that learns from real images sees only those (DreamBooth, GANs, inpainting sources,
  classic augmentation); the base generator is the world's cached embedded generator, which
  never saw the hospital domain. Every arm adds exactly ``--per-class`` extra images per class.
* Routes and their settings grids (``ROUTES``). A route with several settings is run with each
  on every seed; its setting is then chosen by mean accuracy on the hospital **val** split over
  the seeds (ties: the first in the grid), written to ``<route>/choice.json`` with every val
  score, and only then is the test split loaded and the chosen setting's saved classifiers
  evaluated on it. The test split is never read before that route's ``choice.json`` exists.
  Routes may run on different seed lists (the expensive ones on fewer); differences are paired
  over the seeds both arms share.
* Classifier: the small CNN of ``engine.evaluation.classifiers`` as in ``medfake run``'s CNN
  arms (200 Adam steps, batch 64, lr 1e-3, no augmentation, seed s), one thread.
* DCGAN and ACGAN learn only from the k real hospital images; both worlds' hospital splits hold
  identical images, labels and keys (``hospital_fingerprint``), so a world's GAN arm that
  another world already finished is reused from it (identical computation, deterministic per
  seed; at k=5 both were computed and agreed exactly), and the report says so; ``--no-share``
  recomputes.
* Report: per route mean test accuracy and macro AUC with the t 95% CI over seeds, and the
  paired differences (same seed = same real images) against real-only and against the control
  with their t 95% CIs. A route "beats" a reference only when the CI excludes 0.

Worlds (``--world``, docs/worlds.md): ``near`` is the default phantom world, whose corpus is
class-labelled, so the control is a seeded draw of corpus images of each class; ``general`` is
the broad-corpus world, whose corpus never names the classes, so the control is the corpus
images retrieved by caption for each class's prompt templates (``ControlCorpus``). The
generator of each world is its cached embedded generator, trained on that world's corpus.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medfake.engine.data.format import SplitArrays
from medfake.engine.data.kshot import kshot_subset
from medfake.engine.data.corpus_control import ControlCorpus
from medfake.engine.data.phantoms import PhantomConfig
from medfake.engine.data.reader import DatasetInfo, load_split
from medfake.engine.evaluation.classifiers import create_classifier, predict_proba, train_classifier
from medfake.engine.evaluation.metrics import classification_metrics
from medfake.pipelines.experiment_data import embedded_world, write_subset
from medfake.pipelines.generators import GeneratorSpec, make_synthetic_dataset
from medfake.pipelines.report import _t_half, paired_delta
from medfake.pipelines.train_generator import cached_generator

log = logging.getLogger("routes")

TXT2IMG = {"steps": 20, "scheduler": "dpm++"}
DREAMBOOTH = {"steps": 600, "batch_size": 4, "lr": 1e-4, "num_class_images": 50,
              "prior_loss_weight": 1.0, "instance_format": "{prompt} {token}"}
LORA = {**DREAMBOOTH, "lora_rank": 8, "lr": 1e-3}
GAN = {"image_size": 32, "g_features": 32, "d_features": 32, "steps": 600, "batch_size": 32,
       "checkpoint_every": 300, "grid_every": 300}

# route -> list of settings (each a dict; {} = the route's single setting). Fixed a priori.
ROUTES: dict[str, list[dict[str, Any]]] = {
    "real-only": [{}],
    "control": [{}],
    "txt2img": [{"guidance_scale": g} for g in (2.0, 4.0, 7.5)],
    "inpaint": [{"guidance_scale": 4.0, "mask_scale": [0.3, 0.6]},
                {"guidance_scale": 4.0, "mask_scale": [0.6, 0.9]}],
    "inpaint-outpaint": [{"guidance_scale": 4.0}],
    "dreambooth": [{}],
    "dreambooth-lora": [{}],
    "dcgan": [{}],
    "acgan": [{}],
    "classic": [{}],
}
CHEAP = ("real-only", "control", "txt2img", "inpaint", "inpaint-outpaint", "classic")
# routes that learn only from the hospital images and labels (no corpus, no captions): when two
# worlds' hospital splits hold identical images, labels and keys, their arms are identical
# computations (deterministic per seed; at k=5 both were run and agreed exactly), so one
# world's finished arm is reused by the other (``share_arm``; --no-share recomputes)
WORLD_FREE = ("dcgan", "acgan")
CLASS_NAMES = ["cyst", "metastasis", "hemangioma"]


def setting_id(setting: dict[str, Any]) -> str:
    """A short stable name for one setting of a route ("default" for the single one)."""
    if not setting:
        return "default"
    return "_".join(f"{k}={'-'.join(map(str, v)) if isinstance(v, list) else v}"
                    for k, v in sorted(setting.items()))


# ----------------------------------------------------------------------------- worlds

def world_dirs(world: str) -> tuple[Path, Path]:
    """(generator corpus, hospital dataset) of ``world``, cached exactly as ``medfake run``."""
    return embedded_world(PhantomConfig(world=world))


def control_arrays(corpus: Path, hospital: Path, per_class: int, seed: int) -> SplitArrays:
    """The control's extra images: ``per_class`` images per class taken directly from the
    generator's corpus (near: a seeded draw among the corpus images of the class; general:
    caption retrieval with the hospital's prompt templates; ``ControlCorpus``)."""
    h = DatasetInfo.load(hospital)
    return ControlCorpus.load(corpus, h.class_names, h.prompt_templates).draw(per_class, seed)


# ----------------------------------------------------------------------------- routes

def route_spec(route: str, setting: dict, base: Path, k: int, seed: int) -> GeneratorSpec:
    if route == "txt2img":
        return GeneratorSpec("diffusion", model=str(base), sample={**TXT2IMG, **setting})
    if route in ("inpaint", "inpaint-outpaint"):
        sample = {**TXT2IMG, **setting, "mode": route}
        if "mask_scale" in sample:
            sample["mask_scale"] = tuple(sample["mask_scale"])
        return GeneratorSpec("diffusion", model=str(base), sample=sample)
    if route in ("dreambooth", "dreambooth-lora"):
        train = {**(LORA if route == "dreambooth-lora" else DREAMBOOTH), **setting, "seed": seed}
        return GeneratorSpec("dreambooth", model=str(base), k=k, kshot_seed=seed, train=train,
                             sample={**TXT2IMG, "guidance_scale": 4.0})
    if route in ("dcgan", "acgan"):  # ACGAN's one model gets the steps of DCGAN's three
        steps = GAN["steps"] * (3 if route == "acgan" else 1)
        return GeneratorSpec(route, k=k, kshot_seed=seed,
                             train={**GAN, **setting, "steps": steps, "seed": seed})
    if route == "classic":
        return GeneratorSpec("classic", k=k, kshot_seed=seed, sample=setting)
    raise ValueError(f"unknown route {route!r}; choose from {sorted(ROUTES)}")


def extra_arrays(a, world: str, route: str, setting: dict, k: int, seed: int,
                 real: SplitArrays, gen_root: Path) -> SplitArrays | None:
    """The extra images of (route, setting) for (k, seed); None for real-only."""
    if route == "real-only":
        return None
    if route == "control":
        return control_arrays(a.corpus, a.hospital, a.per_class, seed)
    sid = setting_id(setting)
    if route == "txt2img":   # the base generator never sees real images: shared across k
        out = gen_root / "txt2img" / f"seed{seed}-{sid}"
        source = a.hospital
    elif route in ("inpaint", "inpaint-outpaint"):   # sources: exactly the k real images
        source = write_subset(a.hospital, real, {"kshot_of": str(a.hospital), "k": k,
                                                 "kshot_seed": seed},
                              gen_root / f"k{k}" / f"seed{seed}" / "kshot-real")
        out = gen_root / f"k{k}" / f"seed{seed}" / f"{route}-{sid}"
    else:
        out = gen_root / f"k{k}" / f"seed{seed}" / f"{route}-{sid}"
        source = a.hospital
    syn = make_synthetic_dataset(route_spec(route, setting, a.base, k, seed), source,
                                 a.per_class, seed, out)
    arr = load_split(syn, "train")
    counts = np.bincount(arr.labels, minlength=len(CLASS_NAMES))
    if not (counts == a.per_class).all():
        raise RuntimeError(f"{out}: {counts.tolist()} images per class, expected "
                           f"{a.per_class} each (unequal counts make the comparison unfair)")
    return arr


# ----------------------------------------------------------------------------- phases

def hospital_fingerprint(hospital: Path) -> str:
    """sha256 of the hospital splits' images, labels and keys (what WORLD_FREE routes and the
    classifier read; captions and prompts excluded)."""
    import hashlib
    h = hashlib.sha256()
    for split in ("train", "val", "test"):
        arr = load_split(hospital, split)
        h.update(np.ascontiguousarray(arr.images).tobytes())
        h.update(np.asarray(arr.labels, dtype=np.int64).tobytes())
        h.update("\n".join(arr.keys).encode())
    return h.hexdigest()


def share_arm(a, route: str, arm_dir: Path) -> bool:
    """Copy a finished WORLD_FREE arm (val.json, cnn.pt) of the same (k, route, setting, seed)
    from another world whose hospital fingerprint equals this one's; True if copied."""
    if route not in WORLD_FREE or not a.share:
        return False
    rel = arm_dir.relative_to(a.work / a.world)
    for other in ("near", "general"):
        src = a.work / other / rel
        if other == a.world or not (src / "val.json").is_file() or not (src / "cnn.pt").is_file():
            continue
        if a.fingerprints.setdefault(a.world, hospital_fingerprint(a.hospital)) != \
                a.fingerprints.setdefault(other, hospital_fingerprint(world_dirs(other)[1])):
            log.info("not sharing %s from world %s: hospital data differ", rel, other)
            continue
        import shutil
        arm_dir.mkdir(parents=True, exist_ok=True)
        part = arm_dir / f"cnn.pt.{os.getpid()}.part"   # atomic, one per writer: no truncated cnn.pt
        shutil.copyfile(src / "cnn.pt", part)
        os.replace(part, arm_dir / "cnn.pt")
        row = {**json.loads((src / "val.json").read_text()), "shared_from": str(src)}
        tmp = arm_dir / "val.json.tmp"
        tmp.write_text(json.dumps(row))
        os.replace(tmp, arm_dir / "val.json")
        log.info("k=%s %s: reused world %s's arm (identical hospital images): val acc %.3f",
                 a.k, rel, other, row["val_accuracy"])
        return True
    return False


def _cell_dir(a, k: int) -> Path:
    return a.work / a.world / f"k{k}"


def run_val(a) -> None:
    """Train every (route, setting, seed) classifier, keep its weights and its val scores."""
    val = load_split(a.hospital, "val")
    pool = load_split(a.hospital, "train")
    cell = _cell_dir(a, a.k)
    gen_root = a.work / a.world / "generated"
    for seed in a.seeds:
        real = kshot_subset(pool, a.k, seed)
        for route in a.routes:
            for setting in ROUTES[route]:
                arm_dir = cell / route / setting_id(setting) / f"seed{seed}"
                if (arm_dir / "val.json").is_file() or share_arm(a, route, arm_dir):
                    continue
                t0 = time.time()
                extra = extra_arrays(a, a.world, route, setting, a.k, seed, real, gen_root)
                t_gen = time.time() - t0
                x, y = real.images, real.labels
                if extra is not None:
                    x, y = np.concatenate([x, extra.images]), np.concatenate([y, extra.labels])
                model = train_classifier(x, y, steps=a.cnn_steps, batch=64, lr=1e-3, seed=seed,
                                         n_classes=len(CLASS_NAMES))
                m = classification_metrics(val.labels, predict_proba(model, val.images),
                                           CLASS_NAMES)
                arm_dir.mkdir(parents=True, exist_ok=True)
                torch.save(model.state_dict(), arm_dir / "cnn.pt")
                row = {"route": route, "setting": setting, "seed": seed, "k": a.k,
                       "val_accuracy": m["accuracy"], "val_macro_auc": m["macro_auc"],
                       "n_real_per_class": a.k,
                       "n_extra_per_class": 0 if extra is None else a.per_class,
                       "generator_seconds": round(t_gen, 1),
                       "total_seconds": round(time.time() - t0, 1)}
                tmp = arm_dir / "val.json.tmp"
                tmp.write_text(json.dumps(row))
                os.replace(tmp, arm_dir / "val.json")
                log.info("k=%s seed %s %s %s: val acc %.3f (%.0f s)", a.k, seed, route,
                         setting_id(setting), m["accuracy"], row["total_seconds"])


def select(a, route: str) -> dict:
    """The setting of ``route`` with the best mean val accuracy over the seeds (all must be
    done); written to ``<cell>/<route>/choice.json`` with every setting's val scores."""
    cell = _cell_dir(a, a.k)
    scores = []
    for setting in ROUTES[route]:
        rows = [cell / route / setting_id(setting) / f"seed{s}" / "val.json" for s in a.seeds]
        missing = [str(p.parent) for p in rows if not p.is_file()]
        if missing:
            raise SystemExit(f"val results missing for {missing[:3]}: run with --phase val "
                             f"first")
        acc = [json.loads(p.read_text())["val_accuracy"] for p in rows]
        scores.append({"setting": setting, "id": setting_id(setting),
                       "val_accuracy_mean": float(np.mean(acc)), "val_accuracy": acc})
    best = max(range(len(scores)), key=lambda i: (scores[i]["val_accuracy_mean"], -i))
    choice = {"world": a.world, "k": a.k, "route": route, "seeds": a.seeds,
              "chosen": scores[best]["id"], "val": scores}
    (cell / route / "choice.json").write_text(json.dumps(choice, indent=1))
    return choice


def run_test(a, route: str, choice: dict) -> list[dict]:
    """Evaluate ``route``'s chosen-setting classifiers on the test split, which is loaded only
    here, after its ``choice.json`` was written; rows in ``<cell>/<route>/test.json``."""
    test = load_split(a.hospital, "test")
    cell = _cell_dir(a, a.k)
    rows = []
    for seed in choice["seeds"]:
        arm_dir = cell / route / choice["chosen"] / f"seed{seed}"
        model = create_classifier("small-cnn", len(CLASS_NAMES), in_ch=1,
                                  image_size=test.images.shape[1])
        model.load_state_dict(torch.load(arm_dir / "cnn.pt", weights_only=True))
        model.eval()
        m = classification_metrics(test.labels, predict_proba(model, test.images), CLASS_NAMES)
        v = json.loads((arm_dir / "val.json").read_text())
        rows.append({**v, "arm": route, "accuracy": m["accuracy"], "macro_auc": m["macro_auc"],
                     "chosen": choice["chosen"]})
    (cell / route / "test.json").write_text(json.dumps(rows, indent=1))
    return rows


# ----------------------------------------------------------------------------- report

def _fmt(m: float, h: float) -> str:
    return f"{100 * m:+.1f} [{100 * (m - h):+.1f}, {100 * (m + h):+.1f}]" \
        if math.isfinite(h) else f"{100 * m:+.1f} [n/a]"


def _beats(m: float, h: float) -> str:
    if not math.isfinite(h):
        return "n/a"
    return "**yes**" if m - h > 0 else ("worse" if m + h < 0 else "no (CI includes 0)")


def load_cell(cell: Path) -> tuple[dict[str, list[dict]], dict[str, dict]]:
    """Test rows and val choices of every route of one (world, k) cell that has been tested."""
    rows, choices = {}, {}
    for route in ROUTES:
        t, c = cell / route / "test.json", cell / route / "choice.json"
        if t.is_file() and c.is_file():
            rows[route], choices[route] = json.loads(t.read_text()), json.loads(c.read_text())
    return rows, choices


def cell_report(world: str, k: int, by: dict[str, list[dict]],
                choices: dict[str, dict]) -> list[str]:
    lines = [f"### world `{world}`, k={k}", "",
             "| route | seeds | setting chosen on val (mean val acc % per setting) | test acc % "
             "(t 95% CI) | macro AUC % | vs real-only, pp (paired 95% CI) | beats real-only | "
             "vs control, pp | beats control |",
             "|---|---|---|---|---|---|---|---|---|"]
    for route, rs in by.items():
        acc = np.array([r["accuracy"] for r in rs])
        auc = np.array([r["macro_auc"] for r in rs])
        c = choices[route]
        vals = ", ".join(f"{s['id']}: {100 * s['val_accuracy_mean']:.1f}" for s in c["val"])
        shared = sorted({Path(r["shared_from"]).parts[-5] for r in rs if r.get("shared_from")})
        name = route + (f" (arms of world {', '.join(shared)}: same hospital images)"
                        if shared else "")
        cells = [name, ",".join(map(str, c["seeds"])), f"{c['chosen']} ({vals})",
                 f"{100 * acc.mean():.1f} +- {100 * _t_half(acc):.1f}", f"{100 * auc.mean():.1f}"]
        for ref in ("real-only", "control"):
            if route == ref or ref not in by:
                cells += ["", ""]
                continue
            m, h, _ = paired_delta(rs, by[ref])
            cells += [_fmt(m, h), _beats(m, h)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def report(work: Path) -> str:
    """Markdown: a Verdict (per world and k, which routes beat real-only and which beat the
    equal-count control, CI excluding 0) and one table per (world, k)."""
    verdict, tables = ["## Verdict", ""], ["## Results", ""]
    for cell in sorted(work.glob("*/k*"), key=lambda p: (p.parent.name, int(p.name[1:]))):
        by, choices = load_cell(cell)
        if not by:
            continue
        world, k = cell.parent.name, int(cell.name[1:])
        tables += cell_report(world, k, by, choices)
        wins: dict[str, list[str]] = {"real-only": [], "control": []}
        for route, rs in by.items():
            for ref in wins:
                if route not in ("real-only", "control") and ref in by:
                    m, h, _ = paired_delta(rs, by[ref])
                    if math.isfinite(h) and m - h > 0:
                        wins[ref].append(f"{route} ({_fmt(m, h)} pp)")
        routes = [r for r in by if r not in ("real-only", "control")]
        verdict.append(f"- world `{world}`, k={k} ({len(routes)} routes: {', '.join(routes)}): "
                       f"beat real-only: {', '.join(wins['real-only']) or 'none'}; beat the "
                       f"equal-count control: {', '.join(wins['control']) or 'none'}.")
    head = ["# Routes at equal counts (`bench/routes.py`)", "",
            "Small CNN on the real test split; paired differences over seeds (same seed = same "
            "k real images); 'beats' only when the 95% CI excludes 0.", ""]
    return "\n".join(head + verdict + [""] + tables)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", default="near", choices=["near", "general"])
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--routes", nargs="+", default=list(ROUTES), choices=list(ROUTES))
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--cnn-steps", type=int, default=200)
    ap.add_argument("--work", type=Path, default=Path("runs/routes"))
    ap.add_argument("--phase", default="all", choices=["val", "all"],
                    help="val: only train and score on val; all: then choose and test")
    ap.add_argument("--report", action="store_true", help="print the verdict over all runs")
    ap.add_argument("--no-share", dest="share", action="store_false",
                    help=f"recompute {', '.join(WORLD_FREE)} arms instead of reusing another "
                         f"world's when the hospital data are identical")
    a = ap.parse_args()
    a.fingerprints = {}
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if a.report:
        text = report(a.work)
        (a.work / "report.md").write_text(text)
        cells = {f"{c.parent.name}/{c.name}": dict(zip(("test", "choice"), load_cell(c)))
                 for c in sorted(a.work.glob("*/k*"))}
        (a.work / "results.json").write_text(json.dumps(cells, indent=1))
        print(text)
        return
    torch.set_num_threads(1)
    for r in ("real-only", "control"):   # every cell carries both references
        if r not in a.routes:
            a.routes.insert(0, r)
    a.corpus, a.hospital = world_dirs(a.world)
    a.base = cached_generator(a.corpus)
    (a.work / a.world).mkdir(parents=True, exist_ok=True)
    run_val(a)
    if a.phase == "all":
        for route in a.routes:
            done = _cell_dir(a, a.k) / route / "choice.json"
            if done.is_file() and set(a.seeds) <= set(json.loads(done.read_text())["seeds"]):
                continue   # already chosen and tested on these seeds (and maybe more)
            run_test(a, route, select(a, route))
        by, choices = load_cell(_cell_dir(a, a.k))
        print("\n".join(cell_report(a.world, a.k, by, choices)))


if __name__ == "__main__":
    main()
