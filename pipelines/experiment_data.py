"""The data of an experiment, and training + evaluating one arm on it.

``ExperimentData`` resolves the real dataset (default: the embedded phantom hospital, cached
like ``medfake run``'s), the control corpus (default: the embedded public corpus, i.e. the
generator's own training data; drawn by class label, or by caption retrieval for a corpus
without the real classes: ``engine.data.corpus_control``) and the synthetic sources (existing dataset dirs, or generator
specs built with ``pipelines.generators.make_synthetic_dataset`` under ``<out>/synthetic``,
resumable, only when an arm needs them). Sources whose generator learns from real images
(``classic``, ``dreambooth``, and ``dcgan``/``acgan`` without a trained ``model``) are built per
arm from exactly that arm's k-shot real images, unless the spec fixes ``k``.
``fit_predict`` trains one arm's classifier; ``evaluate`` scores it on the real test split.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.core.atomic import fsync_dir, sha256_file
from ..engine.core.paths import cache_dir
from ..engine.core.seeding import derive_seed
from ..engine.data.corpus_control import ControlCorpus, draw_per_class
from ..engine.data.format import Sample, SplitArrays
from ..engine.data.phantoms import PhantomConfig, make_phantom_world
from ..engine.data.reader import DatasetInfo, load_split
from ..engine.data.writer import DatasetWriter
from ..engine.evaluation.metrics import bootstrap_ci, classification_metrics
from .generators import GeneratorSpec, make_synthetic_dataset
from .protocols import CONTROL, Arm

log = logging.getLogger(__name__)

CI_METRICS = ("accuracy", "balanced_accuracy", "macro_auc")
_REAL_DERIVED = ("classic", "dreambooth", "dcgan", "acgan")


def embedded_world(phantoms: PhantomConfig) -> tuple[Path, Path]:
    """(public, hospital) of the embedded phantom world, built once into the medfake cache
    (the same cache entry ``medfake run`` uses for the same ``PhantomConfig``; ``phantoms.world``
    chooses the world). Built under a file lock, so concurrent callers build it once."""
    world = cache_dir("phantoms", f"seed{phantoms.seed}-" + str(
        derive_seed(json.dumps(phantoms.identity(), sort_keys=True)) % 10**10))
    public, hospital = world / "public", world / "hospital"
    if not (hospital / "dataset.json").exists():
        from filelock import FileLock
        with FileLock(str(world.with_name(f".{world.name}.lock"))):
            if not (hospital / "dataset.json").exists():
                make_phantom_world(world, phantoms)
    return public, hospital


def concat(parts: list[SplitArrays]) -> SplitArrays:
    return SplitArrays(np.concatenate([p.images for p in parts]),
                       np.concatenate([p.labels for p in parts]),
                       [c for p in parts for c in p.captions], [k for p in parts for k in p.keys],
                       [m for p in parts for m in p.metas])


def write_subset(source_dir: str | os.PathLike, sub: SplitArrays, job: dict[str, Any],
                 out: Path, class_names: list[str] | None = None,
                 prompt_templates: dict[str, list[str]] | None = None) -> Path:
    """``sub`` (images drawn from the dataset ``source_dir``) written as the dataset ``out``
    (split ``train``, provenance ``job``); kept when ``out`` already holds the same job.
    ``class_names``/``prompt_templates``: what ``sub.labels`` index (default: the source's;
    a caption-retrieved control is labelled by the real dataset's classes).

    Written into ``<out>.partial`` and renamed into place whole, so a kill leaves no half
    dataset under the final name."""
    out = Path(out)
    if (out / "dataset.json").is_file() and \
            json.loads((out / "dataset.json").read_text())["provenance"] == job:
        return out
    info = DatasetInfo.load(source_dir)
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    names = info.class_names if class_names is None else class_names
    templates = info.prompt_templates if prompt_templates is None else prompt_templates
    with DatasetWriter(tmp, names, templates, job, info.image_size, info.channels, 256) as w:
        for i in range(len(sub)):
            w.add("train", Sample(sub.keys[i], sub.images[i], int(sub.labels[i]),
                                  sub.captions[i], sub.metas[i]))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    fsync_dir(out.parent)
    return out


def _kshot(train: SplitArrays, k: int | str, seed: int) -> SplitArrays:
    from ..engine.data.kshot import kshot_subset
    return train if k == "all" else kshot_subset(train, int(k), seed)


class ExperimentData:
    """Real train/test arrays, the control corpus and the synthetic sources of one experiment."""

    def __init__(self, cfg: Any, out: Path):
        self.cfg, self.out = cfg, out
        if cfg.real is None:
            control, real = embedded_world(PhantomConfig.from_dict(cfg.phantoms))
            self.control_dir = Path(cfg.control) if cfg.control else control
        else:
            if not cfg.control:
                raise ValueError("config sets 'real' but not 'control': name the generator's own "
                                 "training corpus (a medfake dataset dir) as 'control'")
            real, self.control_dir = Path(cfg.real), Path(cfg.control)
        self.real_dir = real
        self.info = DatasetInfo.load(real)
        DatasetInfo.load(self.control_dir)
        self.names = self.info.class_names
        self.train = load_split(real, "train", skip_bad=True)
        self.test = load_split(real, cfg.test_split, skip_bad=True)
        self.control_corpus = ControlCorpus.load(self.control_dir, self.names,
                                                 self.info.prompt_templates)
        self.control = self.control_corpus.pool
        self.sources: dict[str, dict[str, Any]] = {}
        for name, s in cfg.synthetic.items():
            if isinstance(s, str):
                DatasetInfo.load(s)
                self.sources[name] = {"dir": s, "spec": None, "per_arm": False}
            else:
                spec = GeneratorSpec.from_dict(s)  # validates keys and kind now
                per_arm = spec.kind in _REAL_DERIVED and "k" not in s and not (
                    spec.kind in ("dcgan", "acgan") and spec.model)
                self.sources[name] = {"dir": None, "spec": dict(s), "per_arm": per_arm}
        self._pools: dict[tuple, SplitArrays] = {}
        from filelock import FileLock
        out.mkdir(parents=True, exist_ok=True)
        # builds shared by arm-seeds run once even when several ranks of a farm reach them
        self._build_lock = FileLock(str(out / ".builds.lock"))
        self._clip: dict[Path, Path] = {}
        self._cap: int | None = None

    # ------------------------------------------------------------------ fingerprints and counts

    def fingerprint(self, name: str | None) -> str | None:
        """What determines a source's images: dataset.json sha256, or the generator job."""
        if name is None:
            return None
        if name == CONTROL:
            return sha256_file(self.control_dir / "dataset.json")
        s = self.sources[name]
        if s["dir"]:
            return sha256_file(Path(s["dir"]) / "dataset.json")
        job = {"spec": s["spec"], "per_class": self.cfg.synthetic_per_class,
               "generator_profile": self.cfg.generator_profile,
               "real": sha256_file(self.real_dir / "dataset.json")}
        return hashlib.sha256(json.dumps(job, sort_keys=True).encode()).hexdigest()

    def real_fingerprint(self) -> str:
        return sha256_file(self.real_dir / "dataset.json")

    def cap(self) -> int:
        """Largest per-class extra count every source and the control corpus can supply."""
        if self._cap is None:
            self._cap = self._compute_cap()
        return self._cap

    def _compute_cap(self) -> int:
        counts = [self.control_corpus.capacity()]
        for s in self.sources.values():
            if s["dir"]:
                pc = DatasetInfo.load(s["dir"]).splits["train"]["per_class"]
                counts.append(min(int(pc.get(c, 0)) for c in self.names))
            else:
                counts.append(int(self.cfg.synthetic_per_class))
        return min(counts)

    def k_effective(self, k: int | str) -> int:
        return int(np.bincount(self.train.labels).min()) if k == "all" else int(k)

    def extra_count(self, arm: Arm) -> int:
        return min(int(round(arm.per_real * self.k_effective(arm.k))), self.cap())

    # ------------------------------------------------------------------ synthetic sources

    def _model(self, spec: dict) -> dict:
        if spec.get("model") in (None, "embedded") and spec["kind"] in ("diffusion", "dreambooth"):
            from .train_generator import GeneratorTrainConfig, cached_generator
            gcfg = GeneratorTrainConfig.profile(self.cfg.generator_profile)
            spec = {**spec, "model": str(cached_generator(self.control_dir, gcfg))}
        return spec

    def source_dir(self, name: str, k: int | str | None = None, seed: int | None = None) -> Path:
        """The dataset dir of source ``name`` (built if needed) for an arm's k-shot set;
        ``k``/``seed`` None: the reference build (``cfg.k``, first seed)."""
        s = self.sources[name]
        if s["dir"]:
            return Path(s["dir"])
        spec = self._model(s["spec"])
        out = self.out / "synthetic" / name
        build = self._per_arm_build(name, k, seed)
        if build:
            spec = {**spec, "k": 0 if build[0] == "all" else int(build[0]), "kshot_seed": build[1]}
            out = out / f"k{build[0]}-seed{build[1]}"
        with self._build_lock:
            return make_synthetic_dataset(spec, self.real_dir, self.cfg.synthetic_per_class, 0,
                                          out)

    def _per_arm_build(self, name: str, k: int | str | None,
                       seed: int | None) -> tuple[int | str, int] | None:
        """(k, k-shot seed) of a per-arm source's build for an arm; None for other sources."""
        if name == CONTROL or not self.sources[name]["per_arm"]:
            return None
        k = self.cfg.k if k is None else k
        return k, 0 if k == "all" else (self.cfg.seeds[0] if seed is None else seed)

    def pool(self, name: str, k: int | str | None = None, seed: int | None = None) -> SplitArrays:
        """All images of a source (the control corpus for ``CONTROL``: all its images,
        labelled by the corpus's own classes; ``draw`` draws an arm's images)."""
        if name == CONTROL:
            return self.control
        key = (name, k, seed) if self.sources[name]["per_arm"] else (name,)
        if key not in self._pools:
            if len(self._pools) > 16:  # per-arm pools are small but many
                self._pools.clear()
            self._pools[key] = load_split(self.source_dir(name, k, seed), "train", skip_bad=True)
        return self._pools[key]

    def clip_init(self, name: str, k: int | str, seed: int) -> Path:
        """CLIP pretrained (resumable, under ``<out>/clip-pretrain/<name>``) on a corpus; for a
        per-arm source, on the build from the arm's own k-shot images (``.../k<k>-seed<s>``)."""
        build = self._per_arm_build(name, k, seed)
        out = self.out / "clip-pretrain" / name
        if build:
            out = out / f"k{build[0]}-seed{build[1]}"
        if out not in self._clip:
            from .train_clip import pretrain_clip
            src = self.control_equal_dir() if name == CONTROL else self.source_dir(name, k, seed)
            with self._build_lock:
                self._clip[out] = pretrain_clip([str(src)], out, self.cfg.clip_config())
        return self._clip[out]

    def control_equal_dir(self) -> Path:
        """The control corpus cut to ``cap()`` images per class, written once as a dataset
        (``<out>/control-equal``): what the control CLIP pretrains on, so it sees as many
        images per class as a generator spec's source."""
        with self._build_lock:
            return self._control_equal_dir()

    def _control_equal_dir(self) -> Path:
        out, n = self.out / "control-equal", self.cap()
        job = {"subset_of": str(self.control_dir), "per_class": n,
               "control_dataset_sha256": self.fingerprint(CONTROL)}
        if (out / "dataset.json").is_file() and \
                json.loads((out / "dataset.json").read_text())["provenance"] == job:
            return out
        if self.control_corpus.method != "class-labels":
            job["method"] = self.control_corpus.describe()
        sub = self.control_corpus.draw(n, derive_seed("control-equal"))
        return write_subset(self.control_dir, sub, job, out, self.names,
                            self.info.prompt_templates)

    def draw(self, name: str, n: int, draw_seed: int, k: int | str | None = None,
             seed: int | None = None) -> SplitArrays:
        """``n`` images per class of source ``name`` (the control: ``ControlCorpus.draw``,
        by class label or caption retrieval), seeded by ``draw_seed``."""
        if name == CONTROL:
            return self.control_corpus.draw(n, draw_seed)
        return draw_per_class(self.pool(name, k, seed), n, draw_seed, len(self.names))

    # ------------------------------------------------------------------ one arm

    def train_set(self, arm: Arm, seed: int) -> tuple[SplitArrays, int, int]:
        """The arm's training images for ``seed``: (arrays, real per class, extra per class)."""
        parts, n_real, n_extra = [], 0, 0
        if arm.real:
            real = _kshot(self.train, arm.k, seed)
            parts.append(real)
            n_real = int(np.bincount(real.labels).min())
        if arm.source:
            n_extra = self.extra_count(arm)
            parts.append(self.draw(arm.source, n_extra, derive_seed("extra", arm.source, seed,
                                                                    n_extra), arm.k, seed))
        if not parts:
            raise ValueError(f"arm {arm.name!r} has no training data")
        return concat(parts), n_real, n_extra

    def fit_predict(self, arm: Arm, train: SplitArrays, seed: int) -> np.ndarray:
        """Train the arm's classifier on ``train``; class probabilities on the real test split."""
        if arm.classifier == "clip":
            from ..engine.evaluation.clip_classify import predict_proba as clip_proba
            from .train_clip import finetune_classifier
            init = self.clip_init(arm.init, arm.k, seed) if arm.init else None
            ccfg = replace(self.cfg.clip_config(), seed=seed,
                           ft_augment="classic" if arm.transforms else "none")
            model = finetune_classifier(init, train, self.names, self.info.prompt_templates, ccfg)
            return clip_proba(model, self.test.images)
        from ..engine.evaluation.classifiers import predict_proba, train_classifier
        c = self.cfg
        model = train_classifier(train.images, train.labels, steps=c.steps, batch=c.batch,
                                 lr=c.lr, seed=seed, augment=arm.transforms,
                                 n_classes=len(self.names), width=c.width, arch=arm.classifier,
                                 weights=c.classifier_weights.get(arm.classifier))
        return predict_proba(model, self.test.images)

    def evaluate(self, probs: np.ndarray, seed: int) -> dict:
        """``classification_metrics`` plus percentile-bootstrap 95% CIs (``ci95``)."""
        y = self.test.labels
        m = classification_metrics(y, probs, self.names)
        m["ci95"] = {k: list(bootstrap_ci(y, probs, k, n=self.cfg.n_bootstrap, seed=seed))
                     for k in CI_METRICS}
        return m
