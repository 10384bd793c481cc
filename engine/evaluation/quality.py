"""Sample quality of synthetic images against real ones, in a feature space available offline.

Feature spaces (``load_encoder(spec)``; every encoder maps uint8 (N,H,W) or (N,H,W,3) images
to float32 (N, D) and carries ``name`` and ``metric``, the distance its nearest-neighbour users
should apply):

* ``pixel`` / ``pixel:SIZE``: grayscale intensities in [0, 1] at ``min(SIZE, image size)``
  pixels (SIZE defaults to 64, as the curation memorization guard), metric ``rms``.
* ``clip:PATH``: the project's CLIP image encoder (a ``medfake train clip --stage pretrain``
  output dir or a CLIP weights file, see ``curation.resolve_clip``), L2-normalised embeddings,
  metric ``cosine``.
* ``torchscript:PATH``: a user-provided TorchScript module taking float (N, 3, H, W) in [0, 1]
  (grayscale replicated) and returning (N, ...) features (flattened), metric ``euclidean``.
  A TorchScript file is a program: it is refused (``UntrustedCodeError``, before the file is
  opened) unless code is trusted (``--trust-code``, see ``engine.core.trust``).

Metrics (two feature sets ``real`` (N, D) and ``synthetic`` (M, D)):

* ``frechet_distance``: |mu_r - mu_s|^2 + tr(S_r) + tr(S_s) - 2 tr((S_r^1/2 S_s S_r^1/2)^1/2),
  computed with ``scipy.linalg.eigh`` (the eigen form is stable for singular covariances).
  torchmetrics' FID is not used: it is tied to Inception-v3 weights downloaded from the
  internet, which an offline hospital machine does not have. Rule for few samples: when either
  set has ``N <= D``, both covariances are Ledoit-Wolf shrinkage estimates
  (``sklearn.covariance.ledoit_wolf``; trace-preserving, full rank), else sample covariances.
  Fewer than 2 samples in a set -> nan.
* ``precision_recall``: Kynkaanniemi et al. 2019 -- precision = share of synthetic points
  inside the real k-NN manifold (union of balls reaching each real point's k-th neighbour),
  recall = share of real points inside the synthetic manifold. ``k`` is lowered to ``N - 1``
  for a set of N <= k points; fewer than 2 points -> nan.
* ``one_nn_accuracy``: leave-one-out 1-NN two-sample test on the pooled sets (US-DCGAN):
  ~0.5 = indistinguishable, 1.0 = separable, well below 0.5 = synthetic points sit on top of
  real ones (copies). Uses ``sklearn.neighbors.NearestNeighbors``.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import torch

from ..core.trust import require_trust
from .features import PIXEL_SIZE, clip_features, pixel_features, resolve_clip
from ..data.format import SplitArrays

log = logging.getLogger(__name__)

ENCODER_SPECS = ("pixel", "pixel:SIZE", "clip:PATH", "torchscript:PATH")
METRIC_KEYS = ("frechet_distance", "precision", "recall", "one_nn_accuracy", "n_real",
               "n_synthetic")


class FeatureEncoder(Protocol):
    name: str

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N,H,W) or (N,H,W,3) -> float32 (N, D)."""


class PixelEncoder:
    """Grayscale intensities in [0, 1] at ``min(size, image size)`` pixels (metric ``rms``)."""

    metric = "rms"

    def __init__(self, size: int = PIXEL_SIZE):
        self.size = size
        self.name = "pixel" if size == PIXEL_SIZE else f"pixel:{size}"

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return pixel_features(list(images), min(self.size, images.shape[1])).numpy()


class ClipEncoder:
    """The project's CLIP image tower: L2-normalised embeddings (metric ``cosine``)."""

    metric = "cosine"

    def __init__(self, path: str | Path, model: str | None = None):
        from ..clip.model import create_clip
        weights, name = resolve_clip(str(path), model)
        self.clip = create_clip(name, weights)[0].eval()
        self.name = f"clip:{name}"
        self.weights = str(weights)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return clip_features(self.clip, list(images)).numpy().astype(np.float32)


class TorchScriptEncoder:
    """A user-provided TorchScript feature extractor (metric ``euclidean``)."""

    metric = "euclidean"

    def __init__(self, path: str | Path, batch: int = 256, trust_code: bool | None = None):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"TorchScript encoder {path} does not exist")
        require_trust(path, "a TorchScript program (torch.jit.load deserialises it and the "
                      "evaluation runs it)", "Use --encoder pixel or clip:PATH (safetensors)",
                      explicit=trust_code)
        try:
            self.module = torch.jit.load(str(path), map_location="cpu").eval()
        except RuntimeError as e:
            raise ValueError(f"{path} is not a TorchScript module (torch.jit.save output): "
                             f"{str(e).splitlines()[0]}") from e
        self.name, self.batch = f"torchscript:{path.name}", batch

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, len(images), self.batch):
            x = torch.from_numpy(np.ascontiguousarray(images[i:i + self.batch])).float() / 255
            x = x.unsqueeze(1).expand(-1, 3, -1, -1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
            out.append(self.module(x).reshape(len(x), -1).float())
        return torch.cat(out).numpy()


def load_encoder(spec: str) -> FeatureEncoder:
    """Build the encoder for ``spec`` (see the module docstring); ValueError for a bad spec."""
    kind, _, arg = spec.partition(":")
    if kind == "pixel":
        if arg and not (arg.isdigit() and int(arg) > 0):
            raise ValueError(f"encoder {spec!r}: pixel size must be a positive integer")
        return PixelEncoder(int(arg) if arg else PIXEL_SIZE)
    if kind in ("clip", "torchscript") and arg:
        return ClipEncoder(arg) if kind == "clip" else TorchScriptEncoder(arg)
    raise ValueError(f"unknown encoder {spec!r}; use one of {', '.join(ENCODER_SPECS)}")


def _as_2d(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {x.shape}")
    return x


def frechet_distance(real: np.ndarray, synthetic: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (rule in module docstring)."""
    from scipy.linalg import eigh, eigvalsh
    from sklearn.covariance import ledoit_wolf
    a, b = _as_2d(real), _as_2d(synthetic)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dims differ: {a.shape[1]} vs {b.shape[1]}")
    if len(a) < 2 or len(b) < 2:
        return math.nan
    shrink = min(len(a), len(b)) <= a.shape[1]

    def cov(x: np.ndarray) -> np.ndarray:
        return ledoit_wolf(x)[0] if shrink else np.cov(x, rowvar=False)

    s1, s2 = cov(a), cov(b)
    w, v = eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.sqrt(np.clip(eigvalsh(root1 @ s2 @ root1), 0, None)).sum()
    diff = a.mean(0) - b.mean(0)
    return float(max(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * cross, 0.0))


def _kth_radius(x: np.ndarray, k: int) -> np.ndarray:
    """Distance from each row to its k-th nearest other row."""
    from sklearn.neighbors import NearestNeighbors
    d, _ = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x)
    return d[:, k]


def _coverage(manifold: np.ndarray, radii: np.ndarray, points: np.ndarray,
              chunk: int = 2048) -> float:
    """Share of ``points`` within ``radii[i]`` of some ``manifold[i]``."""
    from sklearn.metrics import pairwise_distances
    inside = [(pairwise_distances(points[i:i + chunk], manifold) <= radii[None]).any(1)
              for i in range(0, len(points), chunk)]
    return float(np.concatenate(inside).mean())


def precision_recall(real: np.ndarray, synthetic: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Kynkaanniemi et al. 2019 improved precision and recall (Euclidean k-NN manifolds)."""
    a, b = _as_2d(real), _as_2d(synthetic)
    if len(a) < 2 or len(b) < 2:
        return math.nan, math.nan
    precision = _coverage(a, _kth_radius(a, min(k, len(a) - 1)), b)
    recall = _coverage(b, _kth_radius(b, min(k, len(b) - 1)), a)
    return precision, recall


def one_nn_accuracy(real: np.ndarray, synthetic: np.ndarray) -> float:
    """Leave-one-out 1-NN two-sample accuracy on the pooled sets (0.5 = indistinguishable)."""
    from sklearn.neighbors import NearestNeighbors
    a, b = _as_2d(real), _as_2d(synthetic)
    if not len(a) or not len(b):
        return math.nan
    x = np.concatenate([a, b])
    y = np.r_[np.zeros(len(a), bool), np.ones(len(b), bool)]
    _, idx = NearestNeighbors(n_neighbors=2).fit(x).kneighbors(x)
    # with exact duplicates a point's first neighbour may be its twin rather than itself
    rows = np.arange(len(x))
    nn = np.where(idx[:, 0] == rows, idx[:, 1], idx[:, 0])
    return float((y[nn] == y).mean())


def encode_pair(encoder: FeatureEncoder, a: np.ndarray, b: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """Encode two image sets; ValueError when their features are not comparable."""
    fa, fb = encoder(a), encoder(b)
    if fa.shape[1] != fb.shape[1]:
        raise ValueError(f"{encoder.name} features of the two image sets differ in size "
                         f"({fa.shape[1]} vs {fb.shape[1]}: images {a.shape[1:]} vs "
                         f"{b.shape[1:]}); use --encoder pixel:N with N <= the smaller image "
                         f"size, or a CLIP encoder")
    return fa, fb


def feature_metrics(real: np.ndarray, synthetic: np.ndarray) -> dict:
    """All metrics for one pair of feature sets, keyed as ``METRIC_KEYS``."""
    p, r = precision_recall(real, synthetic)
    return {"frechet_distance": frechet_distance(real, synthetic), "precision": p, "recall": r,
            "one_nn_accuracy": one_nn_accuracy(real, synthetic), "n_real": len(real),
            "n_synthetic": len(synthetic)}


def quality_report(real: SplitArrays, synthetic: SplitArrays, encoder: FeatureEncoder,
                   class_names: Sequence[str]) -> dict:
    """``{"encoder", "feature_dim", "overall": M, "per_class": {class: M}}``, M = METRIC_KEYS.

    ``real`` is the real held-out split (e.g. test), ``synthetic`` the generated images; labels
    index ``class_names``. A class missing from either set gets nan metrics and its counts.
    """
    if not len(real) or not len(synthetic):
        raise ValueError(f"quality needs real and synthetic images, got {len(real)} real and "
                         f"{len(synthetic)} synthetic")
    fr, fs = encode_pair(encoder, real.images, synthetic.images)
    log.info("quality in %s space: %d real, %d synthetic, D=%d", encoder.name, len(fr), len(fs),
             fr.shape[1])
    per_class = {name: feature_metrics(fr[real.labels == c], fs[synthetic.labels == c])
                 for c, name in enumerate(class_names)}
    return {"encoder": encoder.name, "feature_dim": int(fr.shape[1]),
            "overall": feature_metrics(fr, fs), "per_class": per_class}
