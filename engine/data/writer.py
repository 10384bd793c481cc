"""Writing datasets: one shard at a time (temporary name, fsync, rename), and ``dataset.json``
with counts and checksums last. See ``format`` for the layout.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any, Iterable

from ..core.atomic import atomic_write_json, fsync_dir, is_disk_full, sha256_file
from ..core.errors import DatasetError, DiskFullError
from .format import FORMAT, SHARD_RE, Sample, ShardRecord, encode_png, shard_name


def write_shard(root: str | os.PathLike, split: str, index: int, samples: Iterable[Sample],
                class_names: list[str]) -> ShardRecord:
    """Write one complete shard atomically plus its manifest; return its record.

    On a full disk this raises ``DiskFullError``: the temporary file is removed, no shard of
    this index becomes visible, and every shard written before is untouched.
    """
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
        fsync_dir(root)
    except OSError as e:
        if is_disk_full(e):
            raise DiskFullError(
                f"disk full while writing shard {name} in {root}: it was not written, and every "
                f"shard written before it is intact (check with `medfake data check {root}`). "
                f"Free space or choose another output, then re-run the same command; finished "
                f"shards are kept.") from e
        raise
    finally:
        if tmp.exists():
            tmp.unlink()
    record = ShardRecord(name=name, sha256=digest, count=len(keys), per_class=per_class)
    try:
        atomic_write_json(final.with_suffix(".json"), {**record.__dict__, "keys": keys})
    except BaseException:
        final.unlink(missing_ok=True)  # a shard without its manifest must not linger
        raise
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
    atomic_write_json(root / "dataset.json", info)
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
