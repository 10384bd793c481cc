"""The experiment protocols: each one enumerates the arms (training-data recipes) to compare.

An ``Arm`` says what one classifier is trained on; ``pipelines/experiment.py`` trains it once
per seed and evaluates it on the real held-out test split. Counts are per class:

* ``k`` real images (``"all"``: the whole real train split) drawn with
  ``train_clip.kshot_subset`` (the seed picks the subset); ``real=False`` leaves them out of the
  training set (synthetic-only arms) while a generator that learns from real images still
  sees those ``k``;
* ``per_real`` extra images per real image from ``source`` (a synthetic source name, or
  ``CONTROL`` = the generator's own training corpus used directly), capped by what every
  source holds so arms that are compared use equal counts;
* ``init``: CLIP arms only, the corpus CLIP was contrastively pretrained on before fine-tuning
  (None: random init).

Every protocol carries the ``real-only`` arm and, for each extra-data setting it uses, the
``control`` arm (real + control corpus at the same count): synthetic data is only worth its
cost where it beats that.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

CONTROL = "control"
ROLES = ("real-only", "synthetic", "synthetic-only", "control", "control-only")


@dataclass(frozen=True)
class Arm:
    """One training-data recipe for one classifier (JSON-able via ``dataclasses.asdict``)."""

    name: str
    role: str                  # one of ROLES
    classifier: str            # small-cnn | resnet18 | efficientnetv2 | clip
    k: int | str               # real images per class (k-shot budget) or "all"
    real: bool = True          # real images in the training set
    source: str | None = None  # extra data: a synthetic source name or CONTROL
    per_real: float = 0.0      # extra images per real image (per class: per_real * k)
    transforms: bool = False   # the shared optional image transforms during training
    init: str | None = None    # CLIP: pretraining corpus (source name or CONTROL)
    series: str = ""           # curve label: arms differing only in k share a series

    @property
    def slug(self) -> str:
        """A file-system-safe directory name for the arm."""
        return slugify(self.name)


def slugify(name: str) -> str:
    """``name`` with every character but letters, digits, ``-_.`` turned into ``_`` (runs
    collapsed)."""
    out = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
    while "__" in out:
        out = out.replace("__", "_")
    return out.strip("_")


def _label(source: str | None) -> str:
    return "public (control)" if source == CONTROL else str(source)


def _arm(role: str, clf: str, k: int | str, source: str | None = None, per_real: float = 0.0,
         transforms: bool = False, real: bool = True, init: str | None = None,
         tag: str = "") -> Arm:
    if role == "real-only":
        series = "real-only"
    elif role in ("synthetic-only", "control-only"):
        series = f"{_label(source)} only"
    elif init is not None:
        series = f"{_label(init)} pretrain + real"
    else:
        series = f"real + {_label(source)}"
    extra = f" x{per_real:g}" if source else ""
    aug = "aug on" if transforms else "aug off"
    name = f"{series}{extra} | k={k} | {aug} | {clf}{tag}"
    return Arm(name, role, clf, k, real, source, float(per_real), transforms, init, series)


def few_shot_sweep(cfg, sources: Sequence[str]) -> list[Arm]:
    """Real per class in ``cfg.k_values`` x synthetic per real in ``cfg.synth_per_real``
    (0 = real-only) x transforms ``cfg.transforms``; each nonzero ratio also for the control."""
    arms = []
    for clf in cfg.classifiers:
        for t in cfg.transforms:
            for k in cfg.k_values:
                for spr in cfg.synth_per_real:
                    if not spr:
                        arms.append(_arm("real-only", clf, k, transforms=t))
                        continue
                    arms += [_arm("synthetic", clf, k, s, spr, t) for s in sources]
                    arms.append(_arm("control", clf, k, CONTROL, spr, t))
    return arms


def substitution(cfg, sources: Sequence[str]) -> list[Arm]:
    """Real-only vs synthetic-only vs real + synthetic (and the control corpus in both roles)."""
    arms = []
    for clf in cfg.classifiers:
        a = cfg.augment
        arms.append(_arm("real-only", clf, cfg.k, transforms=a))
        for s in sources:
            arms.append(_arm("synthetic-only", clf, cfg.k, s, cfg.per_real, a, real=False))
            arms.append(_arm("synthetic", clf, cfg.k, s, cfg.per_real, a))
        arms.append(_arm("control-only", clf, cfg.k, CONTROL, cfg.per_real, a, real=False))
        arms.append(_arm("control", clf, cfg.k, CONTROL, cfg.per_real, a))
    return arms


def generators(cfg, sources: Sequence[str]) -> list[Arm]:
    """Every synthetic source added to the same real images at equal counts."""
    return [a for clf in cfg.classifiers for a in _generators_for(clf, cfg, sources)]


def ratio(cfg, sources: Sequence[str]) -> list[Arm]:
    """Synthetic-to-real ratio in ``cfg.ratios``, each with its control at the same count."""
    arms = []
    for clf in cfg.classifiers:
        arms.append(_arm("real-only", clf, cfg.k, transforms=cfg.augment))
        for r in cfg.ratios:
            arms += [_arm("synthetic", clf, cfg.k, s, r, cfg.augment) for s in sources]
            arms.append(_arm("control", clf, cfg.k, CONTROL, r, cfg.augment))
    return arms


def clip_medfake(cfg, sources: Sequence[str]) -> list[Arm]:
    """CLIP pretrained on each synthetic source (or on the control corpus) then fine-tuned on
    the real images, vs CLIP on real only, vs the CNN classifiers of ``cfg.classifiers`` on
    real, real + synthetic and real + control."""
    a = cfg.augment
    arms = [_arm("real-only", "clip", cfg.k, transforms=a)]
    arms += [_arm("synthetic", "clip", cfg.k, transforms=a, init=s) for s in sources]
    arms.append(_arm("control", "clip", cfg.k, transforms=a, init=CONTROL))
    for clf in (c for c in cfg.classifiers if c != "clip"):
        arms += _generators_for(clf, cfg, sources)
    return arms


def _generators_for(clf: str, cfg, sources: Sequence[str]) -> list[Arm]:
    return [_arm("real-only", clf, cfg.k, transforms=cfg.augment),
            *[_arm("synthetic", clf, cfg.k, s, cfg.per_real, cfg.augment) for s in sources],
            _arm("control", clf, cfg.k, CONTROL, cfg.per_real, cfg.augment)]


PROTOCOLS: dict[str, Callable[..., list[Arm]]] = {
    "few-shot-sweep": few_shot_sweep, "substitution": substitution, "generators": generators,
    "clip-medfake": clip_medfake, "ratio": ratio,
}


def plan_arms(protocol: str, cfg, sources: Sequence[str]) -> list[Arm]:
    """The arms of ``protocol`` for an ``ExperimentConfig`` and synthetic source names.

    Raises ValueError for an unknown protocol, or when two arms would share a name.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {sorted(PROTOCOLS)}")
    arms = PROTOCOLS[protocol](cfg, list(sources))
    names = [a.name for a in arms]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"protocol {protocol} would repeat arm(s) {dup}: remove duplicate "
                         f"values from the config lists")
    slugs = [a.slug for a in arms]
    if len(set(slugs)) != len(slugs):
        raise ValueError(f"protocol {protocol}: source names collide after making them file "
                         f"names; rename the synthetic sources")
    return arms
