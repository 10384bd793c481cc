"""The medfake dataset format, shared by real and synthetic data.

A dataset is a directory of WebDataset shards ``{split}-{NNNNNN}.tar``, one manifest per shard
``{split}-{NNNNNN}.json`` (keys, sha256, count; img2dataset style) and ``dataset.json``::

    {"format": "medfake-dataset/1", "class_names": [...], "prompt_templates": {class: [str]},
     "image_size": 32, "channels": 1, "provenance": {...},
     "splits": {split: {"count": n, "per_class": {class: n},
                        "shards": [{"name", "sha256", "count", "per_class"}]}}}

Each sample holds ``__key__``, ``png`` (8-bit grayscale or RGB), ``cls`` (int as text),
``txt`` (caption) and ``json`` (metadata: patient id, split, source, provenance). Stock
``webdataset`` reads it and stock ``open_clip_train`` trains on it (``png`` + ``txt``).

Contracts: a shard becomes visible only complete (written to a temporary name, fsynced, renamed);
``dataset.json`` is rewritten atomically; nothing already written is touched on error.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
from PIL import Image

FORMAT = "medfake-dataset/1"
SHARD_RE = re.compile(r"^(?P<split>[A-Za-z0-9_]+)-(?P<index>\d{6})\.tar$")


class DatasetError(ValueError):
    """A dataset directory or shard is missing, malformed or corrupt; the message says the fix."""


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


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _atomic_write_json(path: Path, obj: Any) -> None:
    _atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=False) + "\n").encode())


def encode_png(image: np.ndarray) -> bytes:
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise DatasetError(f"image must be uint8 HxW or HxWx3, got {image.dtype} {image.shape}")
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def decode_png(data: bytes, where: str = "") -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("L") if im.mode in ("L", "I", "I;16", "1", "P") else im.convert("RGB"))
    except Exception as e:  # PIL raises many types for corrupt data
        raise DatasetError(f"corrupt image {where}: {e}. Regenerate or remove that shard.") from e


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


def write_shard(root: str | os.PathLike, split: str, index: int, samples: Iterable[Sample],
                class_names: list[str]) -> ShardRecord:
    """Write one complete shard atomically plus its manifest; return its record."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    name = shard_name(split, index)
    final = root / name
    tmp = root / f".{name}.tmp-{os.getpid()}"
    keys: list[str] = []
    per_class: dict[str, int] = {}
    try:
        with tarfile.open(tmp, "w") as tar:
            for s in samples:
                if "." in s.key or "/" in s.key:
                    raise DatasetError(f"sample key {s.key!r} must not contain '.' or '/'")
                meta = dict(s.meta)
                members = {
                    "png": encode_png(s.image),
                    "cls": str(int(s.cls)).encode(),
                    "txt": s.txt.encode(),
                    "json": json.dumps(meta, sort_keys=True).encode(),
                }
                for ext, data in members.items():
                    info = tarfile.TarInfo(f"{s.key}.{ext}")
                    info.size, info.mode, info.mtime = len(data), 0o444, 0
                    info.uname = info.gname = "medfake"
                    tar.addfile(info, io.BytesIO(data))
                keys.append(s.key)
                cname = class_names[int(s.cls)]
                per_class[cname] = per_class.get(cname, 0) + 1
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        digest = sha256_file(tmp)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()
    record = ShardRecord(name=name, sha256=digest, count=len(keys), per_class=per_class)
    _atomic_write_json(final.with_suffix(".json"), {**record.__dict__, "keys": keys})
    return record


def list_shards(root: str | os.PathLike, split: str) -> list[ShardRecord]:
    """Complete shards of a split, from their manifests (a shard without manifest is ignored)."""
    out = []
    for p in sorted(Path(root).glob(f"{split}-[0-9][0-9][0-9][0-9][0-9][0-9].json")):
        m = json.loads(p.read_text())
        if (p.with_suffix(".tar")).exists():
            out.append(ShardRecord(m["name"], m["sha256"], m["count"], m["per_class"]))
    return out


def finalize_dataset(root: str | os.PathLike, class_names: list[str],
                     prompt_templates: dict[str, list[str]], provenance: dict[str, Any],
                     image_size: int, channels: int) -> dict[str, Any]:
    """(Re)write ``dataset.json`` from the shard manifests present in ``root``."""
    root = Path(root)
    splits: dict[str, Any] = {}
    names = sorted({SHARD_RE.match(p.name).group("split") for p in root.glob("*.tar")
                    if SHARD_RE.match(p.name)})
    for split in names:
        shards = list_shards(root, split)
        per_class: dict[str, int] = {c: 0 for c in class_names}
        for s in shards:
            for c, n in s.per_class.items():
                per_class[c] += n
        splits[split] = {"count": sum(s.count for s in shards), "per_class": per_class,
                         "shards": [s.__dict__ for s in shards]}
    info = {"format": FORMAT, "class_names": list(class_names),
            "prompt_templates": prompt_templates, "image_size": int(image_size),
            "channels": int(channels), "provenance": provenance, "splits": splits}
    _atomic_write_json(root / "dataset.json", info)
    return info


class DatasetWriter:
    """Buffers samples per split into fixed-size shards; ``close()`` writes ``dataset.json``."""

    def __init__(self, root: str | os.PathLike, class_names: list[str],
                 prompt_templates: dict[str, list[str]], provenance: dict[str, Any],
                 image_size: int, channels: int = 1, samples_per_shard: int = 1000):
        self.root = Path(root)
        self.class_names = list(class_names)
        self.prompt_templates = prompt_templates
        self.provenance = provenance
        self.image_size, self.channels = image_size, channels
        self.samples_per_shard = samples_per_shard
        self._buffers: dict[str, list[Sample]] = {}
        self._next_index: dict[str, int] = {}

    def add(self, split: str, sample: Sample) -> None:
        buf = self._buffers.setdefault(split, [])
        buf.append(sample)
        if len(buf) >= self.samples_per_shard:
            self._flush(split)

    def _flush(self, split: str) -> None:
        buf = self._buffers.get(split)
        if not buf:
            return
        idx = self._next_index.get(split, 0)
        write_shard(self.root, split, idx, buf, self.class_names)
        self._next_index[split] = idx + 1
        self._buffers[split] = []

    def close(self) -> dict[str, Any]:
        for split in list(self._buffers):
            self._flush(split)
        return finalize_dataset(self.root, self.class_names, self.prompt_templates,
                                self.provenance, self.image_size, self.channels)

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, exc_type, *_: Any) -> None:
        if exc_type is None:
            self.close()


@dataclass
class DatasetInfo:
    """Parsed ``dataset.json``."""

    root: Path
    class_names: list[str]
    prompt_templates: dict[str, list[str]]
    image_size: int
    channels: int
    provenance: dict[str, Any]
    splits: dict[str, Any]

    @classmethod
    def load(cls, root: str | os.PathLike) -> "DatasetInfo":
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"dataset directory {root} does not exist. Create it with "
                               f"`medfake data phantoms --out DIR` or point to an existing dataset.")
        path = root / "dataset.json"
        if not path.is_file():
            raise DatasetError(f"{root} is not a medfake dataset: no dataset.json. Create one with "
                               f"`medfake data phantoms` or `medfake synth`.")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path} is not valid JSON ({e}); regenerate the dataset.") from e
        if d.get("format") != FORMAT:
            raise DatasetError(f"{path}: format {d.get('format')!r} is not {FORMAT!r}.")
        return cls(root, d["class_names"], d.get("prompt_templates", {}), d["image_size"],
                   d.get("channels", 1), d.get("provenance", {}), d["splits"])

    def shard_paths(self, split: str) -> list[str]:
        if split not in self.splits:
            raise DatasetError(f"{self.root} has no split {split!r}; it has {sorted(self.splits)}.")
        paths = [str(self.root / s["name"]) for s in self.splits[split]["shards"]]
        missing = [p for p in paths if not os.path.exists(p)]
        if missing:
            raise DatasetError(f"{len(missing)} shard(s) listed in dataset.json are missing, e.g. "
                               f"{missing[0]}. Re-run the job that wrote {self.root}.")
        return paths

    def count(self, split: str) -> int:
        return int(self.splits[split]["count"])

    def verify(self) -> list[str]:
        """Return a list of problems (sha256 mismatch, missing shard); empty means intact."""
        problems = []
        for split, s in self.splits.items():
            for rec in s["shards"]:
                p = self.root / rec["name"]
                if not p.exists():
                    problems.append(f"missing {rec['name']}")
                elif sha256_file(p) != rec["sha256"]:
                    problems.append(f"sha256 mismatch {rec['name']}")
        return problems


def iter_tar_samples(path: str) -> Iterator[Sample]:
    """Iterate the samples of one shard with clear errors for missing fields or corruption."""
    groups: dict[str, dict[str, bytes]] = {}
    order: list[str] = []
    try:
        with tarfile.open(path, "r") as tar:
            for m in tar:
                if not m.isfile():
                    raise DatasetError(f"{path}: member {m.name!r} is not a regular file; refusing.")
                if m.name.startswith("/") or ".." in m.name.split("/"):
                    raise DatasetError(f"{path}: unsafe member path {m.name!r}; refusing.")
                key, _, ext = m.name.partition(".")
                if key not in groups:
                    groups[key] = {}
                    order.append(key)
                groups[key][ext] = tar.extractfile(m).read()
    except tarfile.TarError as e:
        raise DatasetError(f"{path} is not a readable tar shard ({e}); delete it and re-run the "
                           f"job that wrote it.") from e
    for key in order:
        g = groups[key]
        for required in ("png", "cls"):
            if required not in g:
                raise DatasetError(f"{path}: sample {key!r} has no {required!r} field; every "
                                   f"sample needs png, cls, txt, json. Rewrite the shard.")
        yield Sample(key=key, image=decode_png(g["png"], f"{path}:{key}"),
                     cls=int(g["cls"].decode()), txt=g.get("txt", b"").decode(),
                     meta=json.loads(g["json"]) if "json" in g else {})


def load_split(root: str | os.PathLike, split: str) -> SplitArrays:
    """Load a whole split into memory (fine for the small real datasets of few-shot work)."""
    info = DatasetInfo.load(root)
    images, labels, captions, keys, metas = [], [], [], [], []
    for path in info.shard_paths(split):
        for s in iter_tar_samples(path):
            images.append(s.image)
            labels.append(s.cls)
            captions.append(s.txt)
            keys.append(s.key)
            metas.append(s.meta)
    if not images:
        raise DatasetError(f"{root} split {split!r} holds no samples.")
    return SplitArrays(np.stack(images), np.asarray(labels, dtype=np.int64), captions, keys, metas)
