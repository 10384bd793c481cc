"""Atomic, fsynced file writes and disk-full detection, shared by every writer (shards,
dataset.json, checkpoints, job files).

Contract: ``atomic_write`` writes to a temporary name in the same directory, fsyncs, renames and
fsyncs the directory (``fsync_dir``: the rename itself survives a power loss); the previous file
survives any failure. ``publish_no_replace`` publishes a complete temporary file under its final
name only if that name is free (``os.link``), for files several writers may race to publish. A full disk or quota raises ``DiskFullError`` (a
``DatasetError``, so the CLI prints it as one line, and an ``OSError``).
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path
from typing import Any, BinaryIO, Callable

from .errors import DiskFullError

_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def is_disk_full(e: BaseException) -> bool:
    """True for the OSErrors a full disk, an exhausted quota or a file-size limit raise."""
    return isinstance(e, OSError) and e.errno in _DISK_FULL_ERRNOS


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync the directory ``path`` so renames, links and unlinks in it are durable. Every
    publish (rename or link into place) calls this; file systems that cannot fsync a
    directory (some network mounts, Windows) are skipped silently."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def publish_no_replace(tmp: Path, final: Path) -> bool:
    """Give the complete, fsynced file ``tmp`` the name ``final`` unless ``final`` exists
    (``os.link``: atomic create-if-absent, never overwrites), fsync the directory and remove
    ``tmp``. True if this call published it; False if ``final`` already existed (``tmp`` is
    kept for the caller to compare)."""
    try:
        os.link(tmp, final)
    except FileExistsError:
        return False
    fsync_dir(final.parent)
    tmp.unlink(missing_ok=True)
    return True


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
        fsync_dir(path.parent)
    except OSError as e:
        if is_disk_full(e):
            raise DiskFullError(f"disk full while writing {what or path}; the previous version "
                                f"of that file is intact. Free space and {rerun}.") from e
        raise
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=False) + "\n").encode())
