"""Reading datasets: ``DatasetInfo`` (dataset.json + verification), whole splits as arrays,
and tolerant streaming readers that skip and count bad samples (``SkipLog``, ``SampleValidator``).
"""
from __future__ import annotations

import io
import json
import logging
import os
import tarfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
from PIL import Image

from ..core.atomic import sha256_file
from ..core.errors import DatasetError
from .format import FORMAT, Sample, SplitArrays, decode_png, image_member

log = logging.getLogger(__name__)


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
        try:
            cls, txt = int(g["cls"].decode()), g.get("txt", b"").decode()
            meta = json.loads(g["json"]) if "json" in g else {}
        except (ValueError, UnicodeDecodeError) as e:
            raise DatasetError(f"{path}: sample {key!r} has a corrupt cls, txt or json member "
                               f"({type(e).__name__}); rewrite the shard.") from None
        if not isinstance(meta, dict):
            raise DatasetError(f"{path}: sample {key!r} has a json member that is not an "
                               f"object; rewrite the shard.")
        yield Sample(key=key, image=image, cls=cls, txt=txt, meta=meta)


def split_patients(root: str | os.PathLike) -> dict[str, set[str]]:
    """``{patient_id: {split, ...}}`` over the listed shards of ``root``, from the samples'
    ``json`` members only (no image is decoded); a sample without ``patient_id`` is not
    counted. ``DatasetError`` for an unreadable shard."""
    info = DatasetInfo.load(root)
    out: dict[str, set[str]] = {}
    for split in info.splits:
        for path in info.shard_paths(split):
            try:
                with tarfile.open(path, "r") as tar:
                    for m in tar:
                        if not (m.isfile() and m.name.endswith(".json")):
                            continue
                        meta = json.loads(tar.extractfile(m).read())
                        pid = meta.get("patient_id") if isinstance(meta, dict) else None
                        if pid:
                            out.setdefault(str(pid), set()).add(split)
            except (tarfile.TarError, OSError, ValueError) as e:
                raise DatasetError(f"{path} is not a readable tar shard ({type(e).__name__}); "
                                   f"delete it and re-run the job that wrote it.") from e
    return out


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
        if not isinstance(meta, dict):
            return self._skip("bad_json", where, "not a JSON object")
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
