"""The real images a synthesis job conditions on or compares with, read lazily from shards.

``RealIndex`` scans a real dataset's ``train`` split once (tar headers plus the small ``cls``
and ``json`` members) and remembers where each image's bytes are, so a farm rank decodes only
the source images of its own shards and memory grows with the real dataset (small in few-shot
work), never with the number of synthetic images. Only ``train`` is ever used: derived samples
must never come from validation or test images (``medfake data check`` verifies this).
"""
from __future__ import annotations

import hashlib
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import DatasetError
from ..data.format import IMAGE_EXTS, decode_png
from ..data.reader import DatasetInfo

LESION_FIELDS = ("lesion_center", "lesion_bbox")


@dataclass(frozen=True)
class _Location:
    shard: str
    offset: int
    size: int


def split_fingerprint(info: DatasetInfo, split: str = "train") -> str:
    """sha256 over the split's shard names and checksums (dataset.json only; no tar reads)."""
    h = hashlib.sha256()
    for s in info.splits[split]["shards"]:
        h.update(f"{s['name']}:{s['sha256']}\n".encode())
    return h.hexdigest()


class RealIndex:
    """Keys per class (sorted), image locations and lesion metadata of one split."""

    def __init__(self, root: str | Path, split: str = "train"):
        self.info = DatasetInfo.load(root)
        self.split = split
        self._loc: dict[str, _Location] = {}
        self._lesion: dict[str, dict[str, Any]] = {}
        by_class: dict[int, list[str]] = {}
        for path in self.info.shard_paths(split):
            try:
                with tarfile.open(path, "r") as tar:
                    for m in tar:
                        key, _, ext = m.name.partition(".")
                        if not m.isfile():
                            continue
                        if ext in IMAGE_EXTS:
                            self._loc[key] = _Location(path, m.offset_data, m.size)
                        elif ext == "cls":
                            by_class.setdefault(int(tar.extractfile(m).read()), []).append(key)
                        elif ext == "json":
                            meta = json.loads(tar.extractfile(m).read())
                            lesion = {k: meta[k] for k in LESION_FIELDS if k in meta}
                            if lesion:
                                self._lesion[key] = lesion
            except (tarfile.TarError, ValueError) as e:
                raise DatasetError(f"{path} is not a readable shard ({e}); check the real "
                                   f"dataset with `medfake data check`.") from e
        n = len(self.info.class_names)
        self.keys_by_class = [sorted(k for k in by_class.get(c, []) if k in self._loc)
                              for c in range(n)]
        self.fingerprint = split_fingerprint(self.info, split)

    def __len__(self) -> int:
        return sum(len(k) for k in self.keys_by_class)

    def all_keys(self) -> list[str]:
        return [k for keys in self.keys_by_class for k in keys]

    def source_for(self, cls: int, index: int) -> str:
        """The real image sample ``index`` of class ``cls`` derives from: the class's images
        in key order, cycled (so ``--per-real K`` uses each exactly K times)."""
        keys = self.keys_by_class[cls]
        if not keys:
            raise DatasetError(f"the real train split has no image of class "
                               f"{self.info.class_names[cls]!r} to condition on")
        return keys[index % len(keys)]

    def lesion_meta(self, key: str) -> dict[str, Any]:
        return self._lesion.get(key, {})

    def load(self, key: str) -> np.ndarray:
        """The decoded uint8 image of ``key`` (H, W) or (H, W, 3)."""
        loc = self._loc[key]
        with open(loc.shard, "rb") as f:
            f.seek(loc.offset)
            data = f.read(loc.size)
        return decode_png(data, f"{loc.shard}:{key}")

    def load_rgb(self, key: str) -> np.ndarray:
        img = self.load(key)
        return np.repeat(img[..., None], 3, axis=-1) if img.ndim == 2 else img

