"""Optional filters on synthetic samples; every drop is recorded with its reason.

- ``ClipScoreFilter``: the project's CLIP model (``engine.clip_model``; a ``pretrain_clip``
  output dir or a weights file) classifies each image zero-shot against the real dataset's class
  prompts; a sample is dropped unless CLIP assigns it to the prompted class with probability
  >= ``threshold`` (0: the arg-max is enough).
- ``MemorizationGuard``: a sample is dropped when its nearest real *training* image is closer
  than ``threshold``: root-mean-square difference of grayscale intensities in [0, 1] at
  ``min(size, 64)`` pixels (``space="pixel"``) or cosine distance of CLIP image embeddings
  (``space="clip"``).

``Curator`` chains them for ``ShardPool(curate=...)``: it returns the kept samples (their
``meta["curation"]`` holds the scores) and one record per dropped sample
(``key, filter, reason`` and the numbers behind it), which the pool puts in the shard manifest.
The feature and nearest-neighbour helpers (``pixel_features``, ``clip_features``,
``nearest_neighbors``) are shared with ``engine.memorization``'s audit.
Filters are thread-safe (inference only), so the pool's encoder threads may share them.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ..core.atomic import sha256_file
from ..data.format import Sample
from ..evaluation.features import (
    PIXEL_SIZE,
    clip_features,
    nearest_neighbors,
    pixel_features,
    resolve_clip,
)

log = logging.getLogger(__name__)

MEMORIZATION_SPACES = ("pixel", "clip")


@dataclass(frozen=True)
class CurationConfig:
    """``clip_weights``: enables the CLIP-score filter (and is the model of ``clip`` space);
    ``memorization``: ``pixel``, ``clip`` or None (off)."""

    clip_weights: str | None = None
    clip_model: str | None = None          # None: the weights dir's clip_config.json, else default
    clip_threshold: float = 0.0
    memorization: str | None = None
    memorization_threshold: float = 0.05

    @property
    def enabled(self) -> bool:
        return bool(self.clip_weights or self.memorization)

    def validate(self) -> None:
        if self.memorization not in (None, *MEMORIZATION_SPACES):
            raise ValueError(f"memorization guard space {self.memorization!r}: choose "
                             f"{' or '.join(MEMORIZATION_SPACES)}")
        if self.memorization == "clip" and not self.clip_weights:
            raise ValueError("--memorization clip needs --clip-filter WEIGHTS (the CLIP model "
                             "whose image embeddings are compared)")
        if not 0 <= self.clip_threshold <= 1:
            raise ValueError(f"--clip-threshold must be in [0, 1], got {self.clip_threshold}")

    def identity(self) -> dict[str, Any]:
        """What changes the kept samples (goes into the job parameters)."""
        out: dict[str, Any] = {}
        if self.clip_weights:
            path, name = resolve_clip(self.clip_weights, self.clip_model)
            out.update(clip_filter_sha256=sha256_file(path), clip_model=name,
                       clip_threshold=self.clip_threshold)
        if self.memorization:
            out.update(memorization=self.memorization,
                       memorization_threshold=self.memorization_threshold)
        return out






# --- features and nearest neighbours, shared with engine.memorization / engine.sample_quality ---









class ClipScoreFilter:
    """Zero-shot CLIP classification of each sample against the class prompts."""

    def __init__(self, weights: str, model: str | None, class_names: Sequence[str],
                 prompt_templates: dict[str, list[str]], threshold: float = 0.0):
        from ..clip.model import create_clip
        from ..evaluation.clip_classify import ZeroShotClassifier, zero_shot_weights
        path, name = resolve_clip(weights, model)
        clip, _, _, tokenizer = create_clip(name, path)
        clip.eval()
        self.clip = clip
        self.classifier = ZeroShotClassifier(clip, zero_shot_weights(
            clip, tokenizer, class_names, prompt_templates))
        self.class_names, self.threshold = list(class_names), threshold

    @torch.no_grad()
    def probabilities(self, images: np.ndarray) -> np.ndarray:
        from ..clip.model import images_to_tensor
        return torch.softmax(self.classifier(images_to_tensor(images, self.classifier)), 1).numpy()

    def judge(self, samples: list[Sample]) -> list[tuple[dict | None, dict]]:
        """Per sample: (drop record or None, scores for the kept sample's provenance)."""
        probs = self.probabilities(np.stack([s.image for s in samples]))
        out = []
        for s, p in zip(samples, probs):
            pred, pc = int(p.argmax()), float(p[s.cls])
            scores = {"clip_p_prompted": round(pc, 4), "clip_predicted": self.class_names[pred]}
            drop = None
            if pred != s.cls or pc < self.threshold:
                why = (f"CLIP assigns it to {self.class_names[pred]!r} (p={p[pred]:.3f})"
                       if pred != s.cls else f"CLIP p={pc:.3f} < threshold {self.threshold}")
                drop = {"key": s.key, "filter": "clip", "reason": f"prompted "
                        f"{self.class_names[s.cls]!r}; {why}", **scores}
            out.append((drop, scores))
        return out


class MemorizationGuard:
    """Nearest real training image of each sample, in pixel or CLIP-embedding space."""

    def __init__(self, real_keys: list[str], real_images: list[np.ndarray], space: str,
                 threshold: float, clip: torch.nn.Module | None = None):
        if not real_keys:
            raise ValueError("the memorization guard needs real training images")
        self.keys, self.space, self.threshold, self.clip = real_keys, space, threshold, clip
        self._size = min(PIXEL_SIZE, real_images[0].shape[0])
        self._real = self._features(real_images)

    def _features(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        if self.space == "pixel":
            return pixel_features(images, self._size)
        return clip_features(self.clip, images)

    def nearest(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(index of the nearest real image, distance) per image."""
        return nearest_neighbors(self._features(images), self._real,
                                 "rms" if self.space == "pixel" else "cosine")

    def judge(self, samples: list[Sample]) -> list[tuple[dict | None, dict]]:
        idx, dist = self.nearest([s.image for s in samples])
        out = []
        for s, i, d in zip(samples, idx, dist):
            scores = {"nearest_real": self.keys[i], "nearest_distance": round(float(d), 5),
                      "distance_space": self.space}
            drop = None
            if d < self.threshold:
                drop = {"key": s.key, "filter": "memorization", "reason": f"nearest real train "
                        f"image {self.keys[i]!r} at {self.space} distance {d:.4f} < "
                        f"{self.threshold}", **scores}
            out.append((drop, scores))
        return out


class Curator:
    """The configured filters in order (CLIP score, then memorization)."""

    def __init__(self, filters: list):
        self.filters = filters

    def __call__(self, samples: list[Sample]) -> tuple[list[Sample], list[dict[str, Any]]]:
        drops: list[dict[str, Any]] = []
        for f in self.filters:
            if not samples:
                break
            kept = []
            for s, (drop, scores) in zip(samples, f.judge(samples)):
                if drop is None:
                    s.meta.setdefault("curation", {}).update(scores)
                    kept.append(s)
                else:
                    if "source_key" in s.meta:
                        drop["source_key"] = s.meta["source_key"]
                    drops.append(drop)
            samples = kept
        return samples, drops


def build_curator(cfg: CurationConfig, class_names: Sequence[str],
                  prompt_templates: dict[str, list[str]], real=None) -> Curator | None:
    """The ``Curator`` for ``cfg`` (None when no filter is on). ``real``: a
    ``synth_sources.RealIndex`` of the real train split (needed by the memorization guard)."""
    cfg.validate()
    if not cfg.enabled:
        return None
    filters: list = []
    clip_filter = None
    if cfg.clip_weights:
        clip_filter = ClipScoreFilter(cfg.clip_weights, cfg.clip_model, class_names,
                                      prompt_templates, cfg.clip_threshold)
        filters.append(clip_filter)
    if cfg.memorization:
        keys = real.all_keys()
        images = [real.load(k) for k in keys]
        filters.append(MemorizationGuard(keys, images, cfg.memorization,
                                         cfg.memorization_threshold,
                                         clip_filter.clip if clip_filter else None))
        log.info("memorization guard: %d real train images, %s space, threshold %g",
                 len(keys), cfg.memorization, cfg.memorization_threshold)
    return Curator(filters)
