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

import errno
import hashlib
import io
import json
import logging
import os
import re
import tarfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

FORMAT = "medfake-dataset/1"
SHARD_RE = re.compile(r"^(?P<split>[A-Za-z0-9_]+)-(?P<index>\d{6})\.tar$")


class DatasetError(ValueError):
    """A dataset directory or shard is missing, malformed or corrupt; the message says the fix."""


class DiskFullError(DatasetError, OSError):
    """The disk (or quota) filled up while writing; everything written before is intact.

    Both a ``DatasetError`` (the CLI prints it as one line) and an ``OSError``."""


_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def is_disk_full(e: BaseException) -> bool:
    """True for the OSErrors a full disk, an exhausted quota or a file-size limit raise."""
    return isinstance(e, OSError) and e.errno in _DISK_FULL_ERRNOS


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


def atomic_write(path: Path, write: Callable[[BinaryIO], Any], what: str = "",
                 rerun: str = "re-run the same command") -> None:
    """Call ``write(f)`` on a temporary file, fsync, rename to ``path``: the old file survives
    any failure. On a full disk raise ``DiskFullError`` naming ``what`` (default: the path)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if is_disk_full(e):
            raise DiskFullError(f"disk full while writing {what or path}; the previous version "
                                f"of that file is intact. Free space and {rerun}.") from e
        raise
    finally:
        tmp.unlink(missing_ok=True)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def _atomic_write_json(path: Path, obj: Any) -> None:
    _atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=False) + "\n").encode())


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
        _atomic_write_json(final.with_suffix(".json"), {**record.__dict__, "keys": keys})
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

    def shard_paths_listed(self, split: str) -> list[str]:
        """Paths of the shards ``dataset.json`` lists for ``split``, present or not."""
        if split not in self.splits:
            raise DatasetError(f"{self.root} has no split {split!r}; it has {sorted(self.splits)}.")
        return [str(self.root / s["name"]) for s in self.splits[split]["shards"]]

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


def iter_tar_samples(path: str, channels: int | None = None) -> Iterator[Sample]:
    """Iterate the samples of one shard with clear errors for missing fields or corruption.
    ``channels=1``: ``webp`` images (always stored as RGB) are returned as grayscale."""
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
        img_ext = image_member(g) or "png"
        for required in (img_ext, "cls"):
            if required not in g:
                raise DatasetError(f"{path}: sample {key!r} has no {required!r} field; every "
                                   f"sample needs png, cls, txt, json. Rewrite the shard.")
        image = decode_png(g[img_ext], f"{path}:{key}")
        if img_ext == "webp" and channels == 1 and image.ndim == 3:
            image = image[..., 0]
        yield Sample(key=key, image=image,
                     cls=int(g["cls"].decode()), txt=g.get("txt", b"").decode(),
                     meta=json.loads(g["json"]) if "json" in g else {})


def load_split(root: str | os.PathLike, split: str, *, skip_bad: bool = False,
               skips: "SkipLog | None" = None) -> SplitArrays:
    """Load a whole split into memory (fine for the small real datasets of few-shot work).

    By default any bad sample raises ``DatasetError``. With ``skip_bad=True`` corrupt PNGs,
    truncated shards, wrong image mode or size and missing or invalid ``cls`` are skipped,
    counted in ``skips`` (a new ``SkipLog`` if None), warned about at a limited rate and
    summarised once at the end; only an empty result raises.
    """
    info = DatasetInfo.load(root)
    images, labels, captions, keys, metas = [], [], [], [], []
    if skip_bad:
        own = skips is None
        skips = skips or SkipLog(f"{Path(root).name}/{split}")
        source: Iterable[Sample] = iter_samples(
            info.shard_paths_listed(split), skips, image_size=info.image_size,
            channels=info.channels, n_classes=len(info.class_names), summarize=own)
    else:
        source = (s for path in info.shard_paths(split)
                  for s in iter_tar_samples(path, info.channels))
    for s in source:
        images.append(s.image)
        labels.append(s.cls)
        captions.append(s.txt)
        keys.append(s.key)
        metas.append(s.meta)
    if not images:
        raise DatasetError(f"{root} split {split!r} holds no samples.")
    return SplitArrays(np.stack(images), np.asarray(labels, dtype=np.int64), captions, keys, metas)


# --- tolerant reading: skip bad samples with a count, a rate-limited warning and a summary ---

# Reasons a sample is skipped (the keys of ``SkipLog.counts``).
SKIP_REASONS = ("corrupt_png", "wrong_mode", "wrong_size", "missing_png", "missing_cls",
                "bad_cls", "bad_json", "unsafe_member", "truncated_tar", "missing_shard",
                "bad_sample")


class SkipLog:
    """Counts skipped samples by reason (``SKIP_REASONS``); never drops one silently.

    The first ``first`` skips are each logged as a warning; after that at most one warning
    (with the running counts) per ``every`` seconds. ``summary()`` returns the counts and
    ``log_summary()`` logs them once, at the end of an epoch or evaluation. ``wds_handler`` is
    a webdataset ``handler=`` that counts a tar-level error and continues.
    """

    def __init__(self, what: str = "samples", first: int = 5, every: float = 30.0,
                 logger: logging.Logger | None = None):
        self.what, self.first, self.every = what, first, every
        self.log = logger or log
        self.counts: Counter[str] = Counter()
        self.n_ok = 0
        self._warned = 0
        self._last_warn = float("-inf")

    @property
    def n_skipped(self) -> int:
        return sum(self.counts.values())

    def ok(self, n: int = 1) -> None:
        self.n_ok += n

    def skip(self, reason: str, where: str, detail: str = "", n: int = 1) -> None:
        """Count ``n`` skipped samples for ``reason`` at ``where`` (a shard and key, or a
        position; never anything identifying) and warn if the rate limit allows."""
        self.counts[reason] += n
        now = time.monotonic()
        if self._warned < self.first:
            self._warned += 1
            self.log.warning("%s: skipped %d sample(s) at %s: %s%s%s", self.what, n, where,
                             reason, f" ({detail})" if detail else "",
                             "; further skips are reported at most every "
                             f"{self.every:.0f} s" if self._warned == self.first else "")
            self._last_warn = now
        elif now - self._last_warn >= self.every:
            self._last_warn = now
            self.log.warning("%s: %d sample(s) skipped so far (%s)", self.what, self.n_skipped,
                             self._counts_text())

    def wds_handler(self, exn: Exception) -> bool:
        """For ``webdataset`` pipelines: count the error as one skipped sample and continue."""
        reason = ("truncated_tar" if isinstance(exn, (tarfile.TarError, EOFError))
                  else "corrupt_png" if isinstance(exn, OSError) else "bad_sample")
        self.skip(reason, "webdataset", type(exn).__name__)
        return True

    def _counts_text(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items()))

    def summary(self) -> dict[str, Any]:
        return {"ok": self.n_ok, "skipped": self.n_skipped, "by_reason": dict(self.counts)}

    def log_summary(self) -> dict[str, Any]:
        s = self.summary()
        if s["skipped"]:
            self.log.warning("%s: read %d sample(s), skipped %d (%s)", self.what, s["ok"],
                             s["skipped"], self._counts_text())
        else:
            self.log.info("%s: read %d sample(s), none skipped", self.what, s["ok"])
        return s


@dataclass
class SampleValidator:
    """Turns one raw record ``{ext: bytes}`` into a ``Sample``, or counts why it cannot.

    Expected ``image_size`` (square), ``channels`` (1 = 8-bit grayscale ``L``, 3 = ``RGB``) and
    ``n_classes`` are checked when given. Usable on webdataset records: ``.map(validator)
    .select(lambda s: s is not None)`` with ``handler=skips.wds_handler``.
    """

    skips: SkipLog
    image_size: int | None = None
    channels: int | None = None
    n_classes: int | None = None

    def __call__(self, record: dict[str, Any], where: str = "") -> Sample | None:
        key = str(record.get("__key__", "?"))
        where = where or f"{record.get('__url__', '?')}:{key}"
        img_ext = image_member(record)
        if img_ext is None:
            return self._skip("missing_png", where)
        try:
            cls = int(bytes(record["cls"]).decode()) if "cls" in record else None
        except (ValueError, UnicodeDecodeError):
            return self._skip("bad_cls", where, "not an integer")
        if cls is None:
            return self._skip("missing_cls", where)
        if cls < 0 or (self.n_classes is not None and cls >= self.n_classes):
            return self._skip("bad_cls", where, f"{cls} outside 0..{(self.n_classes or 0) - 1}")
        try:
            with Image.open(io.BytesIO(record[img_ext])) as im:
                if img_ext == "webp" and self.channels == 1 and im.mode == "RGB":
                    im = im.convert("L")   # WebP stores grayscale as RGB
                im.load()
                mode, size = im.mode, im.size
                image = np.asarray(im)
        except Exception as e:  # PIL raises many types for corrupt data
            return self._skip("corrupt_png", where, type(e).__name__)
        want_mode = {1: "L", 3: "RGB"}.get(self.channels or 0)
        if (want_mode and mode != want_mode) or mode not in ("L", "RGB"):
            return self._skip("wrong_mode", where, f"{mode}, expected {want_mode or 'L or RGB'}")
        if self.image_size and size != (self.image_size, self.image_size):
            return self._skip("wrong_size", where, f"{size[0]}x{size[1]}, expected "
                                                   f"{self.image_size}x{self.image_size}")
        try:
            meta = json.loads(record["json"]) if "json" in record else {}
            txt = bytes(record.get("txt", b"")).decode()
        except (ValueError, UnicodeDecodeError):
            return self._skip("bad_json", where)
        self.skips.ok()
        return Sample(key=key, image=image, cls=cls, txt=txt, meta=meta)

    def _skip(self, reason: str, where: str, detail: str = "") -> None:
        self.skips.skip(reason, where, detail)
        return None


def _manifest_keys(shard: Path) -> list[str] | None:
    try:
        return list(json.loads(shard.with_suffix(".json").read_text())["keys"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def iter_shard_tolerant(path: Path, validator: SampleValidator) -> Iterator[Sample]:
    """The good samples of one shard; bad ones (and a truncated rest) are counted in
    ``validator.skips``. Members that are links, devices, absolute or contain ``..`` are never
    read; their sample is skipped as ``unsafe_member``."""
    skips = validator.skips
    expected = _manifest_keys(path)
    if not path.exists():
        skips.skip("missing_shard", path.name, "shard file missing",
                   n=len(expected) if expected else 1)
        return
    done: set[str] = set()
    key, group, poisoned = None, {}, False

    def finish() -> Sample | None:
        done.add(key)
        if poisoned:
            return validator._skip("unsafe_member", f"{path.name}:{key}",
                                   "link, device, absolute or '..' member refused")
        return validator({"__key__": key, **group}, f"{path.name}:{key}")

    try:
        with tarfile.open(path, "r") as tar:
            for m in tar:
                k, _, ext = m.name.partition(".")
                if k != key:
                    if key is not None and (s := finish()) is not None:
                        yield s
                    key, group, poisoned = k, {}, False
                if not m.isfile() or m.name.startswith("/") or ".." in m.name.split("/"):
                    poisoned = True  # never read, never extracted
                    continue
                group[ext] = tar.extractfile(m).read()
        if key is not None and (s := finish()) is not None:
            yield s
    except (tarfile.TarError, EOFError, OSError) as e:
        lost = len(set(expected) - done) if expected is not None else 1
        skips.skip("truncated_tar", path.name, f"{type(e).__name__}; {lost} sample(s) lost "
                   f"from this shard", n=max(1, lost))
        return
    # tarfile ends silently when a shard is cut at a header boundary: the manifest tells.
    lost = len(set(expected) - done) if expected is not None else 0
    if lost:
        skips.skip("truncated_tar", path.name, f"ends early; {lost} sample(s) of its manifest "
                   f"missing", n=lost)


def iter_samples(paths: Iterable[str | os.PathLike], skips: SkipLog | None = None, *,
                 image_size: int | None = None, channels: int | None = None,
                 n_classes: int | None = None, summarize: bool = True) -> Iterator[Sample]:
    """Stream the samples of ``paths``, skipping bad ones (see ``SkipLog``), never raising
    mid-way for bad data. ``summarize`` logs the summary when the iteration ends."""
    skips = skips if skips is not None else SkipLog()
    validator = SampleValidator(skips, image_size, channels, n_classes)
    try:
        for p in paths:
            yield from iter_shard_tolerant(Path(p), validator)
    finally:
        if summarize:
            skips.log_summary()
