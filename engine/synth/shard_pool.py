"""Background image encoding and shard writing, so the accelerator never waits for the disk.

``ShardPool`` takes batches of finished samples from the thread that runs the backend and
returns at once unless ``max_pending`` batches are already waiting (the bound that keeps memory
flat). ``workers`` threads encode the images (PNG/WebP/JPEG encoders release the GIL) and run
the optional curation; one writer thread appends the encoded members, in submission order, to
the shard they belong to and publishes a shard when its last batch arrives. Errors surface in
the submitting thread at the next ``submit``/``close``; an unfinished shard is never visible.

``ShardWriter`` streams one shard to a temporary file while hashing it (holding an ``flock`` on
it, so no other process takes it for a killed writer's leftover), then fsyncs it, publishes it
without replacing anything (``core.atomic.publish_no_replace``: a shard another writer already
published is accepted if byte-identical, an error naming both otherwise) and writes its
manifest, exactly as ``dataset.write_shard`` would (same tar bytes for PNG, same manifest
fields, plus ``bytes``, ``image_format`` and the curation's ``dropped`` list).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..core.atomic import is_disk_full, publish_no_replace, sha256_file
from ..core.errors import DatasetError, DiskFullError
from ..data.format import Sample, ShardRecord, encode_image, shard_name
from .files import json_bytes, open_locked, replace_if_different, temp_name, writer_id

log = logging.getLogger(__name__)

Curate = Callable[[list[Sample]], tuple[list[Sample], list[dict[str, Any]]]]
_NUL_BLOCK = b"\0" * tarfile.BLOCKSIZE


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o444, 0
    info.uname = info.gname = "medfake"
    return info


_TEMPLATE = _tar_info("x", 0).tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def tar_header(name: str, size: int) -> bytes:
    """The 512-byte header ``tarfile`` writes for a member of ``write_shard``'s shards (same
    bytes as ``TarInfo.tobuf``), built from a template: ~6x faster than ``tobuf``, which is most
    of a shard writer's CPU time. Names that are not short ASCII and huge sizes take ``tobuf``."""
    raw = name.encode("ascii", "replace")
    if len(raw) > 99 or not name.isascii() or size >= 8 ** 11:
        return _tar_info(name, size).tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    buf = bytearray(_TEMPLATE)
    buf[0:100] = raw.ljust(100, b"\0")
    buf[124:136] = b"%011o\0" % size
    buf[148:156] = b"        "
    buf[148:155] = b"%06o\0" % sum(buf)
    return bytes(buf)


class ShardWriter:
    """One shard, streamed: ``add`` samples (encoded members), then ``finish`` or ``abort``."""

    def __init__(self, root: Path, split: str, index: int, class_names: Sequence[str],
                 image_format: str = "png"):
        self.root, self.index, self.class_names = Path(root), index, list(class_names)
        self.image_format = image_format
        self.final = self.root / shard_name(split, index)
        self.tmp = temp_name(self.final)
        self._f = open_locked(self.tmp, buffering=1 << 20)
        self._hash = hashlib.sha256()
        self._size = 0
        self.keys: list[str] = []
        self.per_class: dict[str, int] = {}

    def _write(self, data: bytes) -> None:
        self._f.write(data)
        self._hash.update(data)
        self._size += len(data)

    def add(self, key: str, cls: int, members: Sequence[tuple[str, bytes]]) -> None:
        """Append one sample: ``members`` are ``(extension, bytes)`` in tar order."""
        if "." in key or "/" in key:
            raise DatasetError(f"sample key {key!r} must not contain '.' or '/'")
        for ext, data in members:
            self._write(tar_header(f"{key}.{ext}", len(data)))
            self._write(data)
            if len(data) % tarfile.BLOCKSIZE:
                self._write(b"\0" * (tarfile.BLOCKSIZE - len(data) % tarfile.BLOCKSIZE))
        self.keys.append(key)
        name = self.class_names[int(cls)]
        self.per_class[name] = self.per_class.get(name, 0) + 1

    def finish(self, manifest_extra: dict[str, Any] | None = None) -> ShardRecord:
        """End the archive as tarfile does, fsync, rename into place, write the manifest."""
        try:
            self._write(_NUL_BLOCK * 2)
            if self._size % tarfile.RECORDSIZE:
                self._write(b"\0" * (tarfile.RECORDSIZE - self._size % tarfile.RECORDSIZE))
            self._f.flush()
            os.fsync(self._f.fileno())
            digest = self._hash.hexdigest()
            published = publish_no_replace(self.tmp, self.final)   # still locked: ours
            if not published:
                self._accept_existing(digest)
            self._f.close()
            self.tmp.unlink(missing_ok=True)
            record = ShardRecord(self.final.name, digest, len(self.keys), self.per_class)
            manifest = {**record.__dict__, "keys": self.keys, "bytes": self._size,
                        "image_format": self.image_format, **(manifest_extra or {})}
            try:
                replace_if_different(self.final.with_suffix(".json"), json_bytes(manifest))
            except BaseException:
                if published:
                    self.final.unlink(missing_ok=True)   # never a shard without its manifest
                raise
            return record
        except OSError as e:
            self.abort()
            if is_disk_full(e) and not isinstance(e, DiskFullError):
                raise DiskFullError(f"disk full while writing shard {self.final.name} in "
                                    f"{self.root}: it was not written, every shard written "
                                    f"before is intact. Free space and re-run the same command."
                                    ) from e
            raise
        except BaseException:
            self.abort()
            raise

    def _accept_existing(self, digest: str) -> None:
        """Another writer published this shard first: fine if it holds exactly our bytes."""
        try:
            size = self.final.stat().st_size
            same = size == self._size and sha256_file(self.final) == digest
        except FileNotFoundError:      # removed meanwhile (--remove-corrupt): publish ours
            if publish_no_replace(self.tmp, self.final):
                return
            size, same = -1, False
        if same:
            log.info("%s was published meanwhile by another writer with identical bytes; "
                     "keeping it", self.final.name)
            return
        raise DatasetError(
            f"{self.final} was published by another writer (size {size}) while this writer "
            f"({writer_id()}) wrote different bytes (size {self._size}, sha256 {digest[:12]}): "
            f"two different jobs or versions write the same output. The published shard is "
            f"untouched and this one is dropped; stop the other writer, check with `medfake "
            f"synth status {self.root} --checksums`, then re-run.")

    def abort(self) -> None:
        """Drop the unfinished shard (its temporary file)."""
        if not self._f.closed:
            self._f.close()
        self.tmp.unlink(missing_ok=True)


def encode_sample(s: Sample, image_format: str = "png", quality: int | None = None
                  ) -> list[tuple[str, bytes]]:
    """The tar members of one sample in ``write_shard``'s order: image, cls, txt, json."""
    return [(image_format, encode_image(s.image, image_format, quality)),
            ("cls", str(int(s.cls)).encode()), ("txt", s.txt.encode()),
            ("json", json.dumps(s.meta, sort_keys=True).encode())]


@dataclass
class PoolStats:
    """Seconds are summed over threads; ``stall_s`` is time ``submit`` blocked on a full pool."""

    batches: int = 0
    shards: int = 0
    images: int = 0
    dropped: int = 0
    stall_s: float = 0.0
    encode_s: float = 0.0
    write_s: float = 0.0
    drops_by_filter: dict[str, int] = field(default_factory=dict)


@dataclass
class _Encoded:
    members: list[tuple[str, int, list[tuple[str, bytes]]]]
    drops: list[dict[str, Any]]


class ShardPool:
    """Bounded background encode + write of shards (see the module doc). Use as a context
    manager: a clean exit waits for every shard; an exception drops unfinished ones."""

    def __init__(self, root: str | Path, split: str, class_names: Sequence[str],
                 image_format: str = "png", quality: int | None = None, workers: int = 2,
                 max_pending: int = 4, curate: Curate | None = None,
                 on_shard: Callable[[ShardRecord], None] | None = None):
        if workers < 1 or max_pending < 1:
            raise ValueError("the shard pool needs workers >= 1 and max_pending >= 1")
        self.root, self.split, self.class_names = Path(root), split, list(class_names)
        self.root.mkdir(parents=True, exist_ok=True)
        self.image_format, self.quality, self.curate = image_format, quality, curate
        self.on_shard = on_shard
        self.stats = PoolStats()
        self._lock = threading.Lock()
        self._encoders = ThreadPoolExecutor(workers, thread_name_prefix="shard-encode")
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._abort = threading.Event()
        self._writer = threading.Thread(target=self._write_loop, name="shard-writer",
                                        daemon=True)
        self._writer.start()
        self._closed = False

    # -- submitting thread

    def submit(self, shard: int, samples: list[Sample], last: bool) -> None:
        """Queue ``samples`` (the next ones of ``shard``, in order); ``last`` ends the shard.
        Blocks only while ``max_pending`` batches wait."""
        self._raise_if_failed()
        fut = self._encoders.submit(self._encode, samples)
        t = time.perf_counter()
        self._queue.put((shard, last, fut))
        self.stats.stall_s += time.perf_counter() - t
        self.stats.batches += 1

    def close(self) -> PoolStats:
        """Wait until every submitted shard is written; re-raise a background error."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._writer.join()
            self._encoders.shutdown(wait=True)
        self._raise_if_failed()
        return self.stats

    def abort(self) -> None:
        """Stop now: finished shards stay, the unfinished one is discarded."""
        self._abort.set()
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._writer.join()
            self._encoders.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "ShardPool":
        return self

    def __exit__(self, exc_type, *_: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    # -- background threads

    def _encode(self, samples: list[Sample]) -> _Encoded:
        t = time.perf_counter()
        drops: list[dict[str, Any]] = []
        if self.curate is not None and samples:
            samples, drops = self.curate(samples)
        members = [(s.key, s.cls, encode_sample(s, self.image_format, self.quality))
                   for s in samples]
        with self._lock:
            self.stats.encode_s += time.perf_counter() - t
        return _Encoded(members, drops)

    def _write_loop(self) -> None:
        current: ShardWriter | None = None
        drops: list[dict[str, Any]] = []
        while True:
            item = self._queue.get()
            if item is None:
                break
            shard, last, fut = item
            if self._error is not None or self._abort.is_set():
                fut.cancel()
                continue
            try:
                batch: _Encoded = fut.result()
                t = time.perf_counter()
                if current is not None and current.index != shard:
                    raise RuntimeError(f"shard {current.index} got no last batch before "
                                       f"shard {shard} started")
                if current is None:
                    current, drops = ShardWriter(self.root, self.split, shard, self.class_names,
                                                 self.image_format), []
                for key, cls, members in batch.members:
                    current.add(key, cls, members)
                drops.extend(batch.drops)
                if last:
                    extra = {"dropped": drops} if self.curate is not None else {}
                    record = current.finish(extra)
                    current = None
                    self._count(record, drops)
                    if self.on_shard is not None:
                        self.on_shard(record)
                self.stats.write_s += time.perf_counter() - t
            except BaseException as e:   # surfaces in the submitting thread
                self._error = e
                if current is not None:
                    current.abort()
                    current = None
        if current is not None:
            current.abort()

    def _count(self, record: ShardRecord, drops: list[dict[str, Any]]) -> None:
        s = self.stats
        s.shards += 1
        s.images += record.count
        s.dropped += len(drops)
        for d in drops:
            s.drops_by_filter[d["filter"]] = s.drops_by_filter.get(d["filter"], 0) + 1
