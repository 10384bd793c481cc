"""The medfake dataset format, shared by real and synthetic data.

A dataset is a directory of WebDataset shards ``{split}-{NNNNNN}.tar``, one manifest per shard
``{split}-{NNNNNN}.json`` (keys, sha256, count; img2dataset style) and ``dataset.json``::

    {"format": "medfake-dataset/1", "class_names": [...], "prompt_templates": {class: [str]},
     "image_size": 32, "channels": 1, "provenance": {...},
     "splits": {split: {"count": n, "per_class": {class: n},
                        "shards": [{"name", "sha256", "count", "per_class"}]}}}

Each sample holds ``__key__``, ``png`` (8-bit grayscale or RGB; synthetic shards may hold
``webp`` or ``jpg`` instead, see ``IMAGE_EXTS``), ``cls`` (int as text),
``txt`` (caption) and ``json`` (metadata: patient id, split, source, provenance). Stock
``webdataset`` reads it and stock ``open_clip_train`` trains on it (``png`` + ``txt``).

Contracts: a shard becomes visible only complete (written to a temporary name, fsynced, renamed);
``dataset.json`` is rewritten atomically; nothing already written is touched on error.
"""
from __future__ import annotations

import io
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
from PIL import Image

from ..core.errors import DatasetError

log = logging.getLogger(__name__)

FORMAT = "medfake-dataset/1"
SHARD_RE = re.compile(r"^(?P<split>[A-Za-z0-9_]+)-(?P<index>\d{6})\.tar$")






@dataclass
class Sample:
    """One image with its label, caption and metadata. ``image`` is uint8 HxW or HxWx3."""

    key: str
    image: np.ndarray
    cls: int
    txt: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class ShardRecord:
    name: str
    sha256: str
    count: int
    per_class: dict[str, int]


@dataclass
class SplitArrays:
    """A whole split in memory: images uint8 (N, H, W) or (N, H, W, 3)."""

    images: np.ndarray
    labels: np.ndarray
    captions: list[str]
    keys: list[str]
    metas: list[dict[str, Any]]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: Iterable[int]) -> "SplitArrays":
        idx = np.asarray(list(idx), dtype=np.int64)
        return SplitArrays(
            self.images[idx],
            self.labels[idx],
            [self.captions[i] for i in idx],
            [self.keys[i] for i in idx],
            [self.metas[i] for i in idx],
        )










def encode_png(image: np.ndarray) -> bytes:
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise DatasetError(f"image must be uint8 HxW or HxWx3, got {image.dtype} {image.shape}")
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


IMAGE_EXTS = ("png", "webp", "jpg")   # image members readers accept; writers default to png


def encode_image(image: np.ndarray, fmt: str = "png", quality: int | None = None) -> bytes:
    """``png`` (lossless), ``webp`` (lossless; lossy at ``quality`` < 100) or ``jpg``
    (``quality``, default 95) bytes of a uint8 HxW or HxWx3 image."""
    if fmt == "png":
        return encode_png(image)
    if fmt not in IMAGE_EXTS:
        raise DatasetError(f"image format {fmt!r}: choose one of {', '.join(IMAGE_EXTS)}")
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise DatasetError(f"image must be uint8 HxW or HxWx3, got {image.dtype} {image.shape}")
    buf = io.BytesIO()
    if fmt == "webp":
        lossless = quality is None or quality >= 100
        Image.fromarray(image).save(buf, format="WEBP", lossless=lossless,
                                    quality=100 if lossless else quality)
    else:
        Image.fromarray(image).save(buf, format="JPEG", quality=quality or 95)
    return buf.getvalue()


def image_member(group: dict[str, Any]) -> str | None:
    """The image member (``png``, ``webp`` or ``jpg``) of one sample's members, if any."""
    return next((e for e in IMAGE_EXTS if e in group), None)


def decode_png(data: bytes, where: str = "") -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("L") if im.mode in ("L", "I", "I;16", "1", "P") else im.convert("RGB"))
    except Exception as e:  # PIL raises many types for corrupt data
        raise DatasetError(f"corrupt image {where}: {e}. Regenerate or remove that shard.") from e


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"
















# --- tolerant reading: skip bad samples with a count, a rate-limited warning and a summary ---











