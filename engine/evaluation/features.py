"""Image features and nearest neighbours shared by sample quality, the memorization audit and
synthesis-time curation: grayscale pixel features at a fixed size, CLIP image-tower features, and
exact nearest-neighbour search under rms / cosine / euclidean distance.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

CLIP_CONFIG, CLIP_WEIGHTS = "clip_config.json", "model.safetensors"   # as pretrain_clip writes
PIXEL_SIZE = 64


def resolve_clip(weights: str, model: str | None) -> tuple[Path, str]:
    """``(weights file, open_clip model name)`` of a ``pretrain_clip`` dir or a weights file."""
    from ..clip.model import DEFAULT_MODEL
    p = Path(weights)
    if p.is_dir():
        cfg = p / CLIP_CONFIG
        name = model or (json.loads(cfg.read_text())["model"] if cfg.is_file() else DEFAULT_MODEL)
        p = p / CLIP_WEIGHTS
    else:
        name = model or DEFAULT_MODEL
    if not p.is_file():
        raise FileNotFoundError(f"CLIP weights {p} not found: pass a `medfake train clip "
                                f"--stage pretrain` output dir or a weights file")
    return p, name


def _gray(image: np.ndarray) -> np.ndarray:
    """One uint8 image (H, W) or (H, W, 3) -> float32 grayscale (H, W) (channel mean)."""
    return image.astype(np.float32).mean(-1) if image.ndim == 3 else image.astype(np.float32)


DISTANCE_METRICS = ("rms", "cosine", "euclidean")


def pixel_features(images: Sequence[np.ndarray], size: int) -> torch.Tensor:
    """Grayscale intensities in [0, 1], bilinearly resized to ``size`` x ``size``: (N, size**2)."""
    small = [np.asarray(Image.fromarray(_gray(im).round().astype(np.uint8)).resize(
        (size, size), Image.BILINEAR)) for im in images]
    return torch.from_numpy(np.stack(small).reshape(len(small), -1).astype(np.float32) / 255.0)


@torch.no_grad()
def clip_features(clip: torch.nn.Module, images: Sequence[np.ndarray],
                  batch: int = 256) -> torch.Tensor:
    """L2-normalised CLIP image embeddings (N, D) of uint8 grayscale or RGB images."""
    from ..clip.model import images_to_tensor
    rgb = [np.repeat(im[..., None], 3, -1) if im.ndim == 2 else im for im in images]
    feats = []
    for i in range(0, len(rgb), batch):
        x = images_to_tensor(np.stack(rgb[i:i + batch]), clip)
        feats.append(torch.nn.functional.normalize(clip.encode_image(x).float(), dim=-1))
    return torch.cat(feats)


@torch.no_grad()
def nearest_neighbors(query: torch.Tensor, reference: torch.Tensor, metric: str,
                      exclude_self: bool = False, chunk: int = 1024
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(index into ``reference``, distance) of each query row's nearest reference row.

    ``metric``: ``rms`` (Euclidean / sqrt(D): root-mean-square feature difference),
    ``euclidean``, or ``cosine`` (1 - cosine similarity). ``exclude_self``: ``query`` IS
    ``reference`` and row i may not match itself (leave-one-out). Exact brute force, in chunks.
    """
    if metric not in DISTANCE_METRICS:
        raise ValueError(f"unknown distance {metric!r}; choose one of {DISTANCE_METRICS}")
    q, r = query.float(), reference.float()
    if metric == "cosine":
        q, r = torch.nn.functional.normalize(q, dim=-1), torch.nn.functional.normalize(r, dim=-1)
    idx, dist = [], []
    for i in range(0, len(q), chunk):
        qc = q[i:i + chunk]
        d = 1 - qc @ r.T if metric == "cosine" else torch.cdist(qc, r)
        if metric == "rms":
            d = d / np.sqrt(q.shape[1])
        if exclude_self:
            rows = torch.arange(len(qc))
            d[rows, rows + i] = float("inf")
        dc, ic = d.min(dim=1)
        if metric != "cosine":   # cdist's matmul form is inexact; recompute the winners exactly
            dc = (qc - r[ic]).norm(dim=1)
            dc = dc / np.sqrt(q.shape[1]) if metric == "rms" else dc
        idx.append(ic)
        dist.append(dc.clamp_min(0))
    return torch.cat(idx).numpy(), torch.cat(dist).numpy()
