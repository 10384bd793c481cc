"""Files that several processes of a synthesis farm may write at once, without a coordinator.

Every write goes to a temporary file with a name unique to this host, process and call, is
fsynced and then renamed, so readers only ever see complete files. Two kinds of publication:

- ``create_once``: the first writer wins (``os.link`` of the complete temporary file fails if
  the target exists); later writers compare contents instead of writing.
- ``replace_if_different``: whoever publishes last wins; meant for content every writer
  computes identically (e.g. ``dataset.json`` of a complete job), so the race is harmless.

Temporary names start with ``.`` and contain ``.tmp-``; ``stray_temporaries`` lists the ones a
killed process left behind (never read as data, safe to delete).
"""
from __future__ import annotations

import json
import os
import socket
import uuid
from pathlib import Path
from typing import Any

from ..core.atomic import is_disk_full
from ..core.errors import DiskFullError

_HOST = socket.gethostname().split(".")[0].replace("-", "_") or "host"


def temp_name(path: Path) -> Path:
    """A temporary sibling of ``path`` no other process or thread uses."""
    return path.with_name(f".{path.name}.tmp-{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _write_temp(path: Path, data: bytes) -> Path:
    tmp = temp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if is_disk_full(e):
            raise DiskFullError(f"disk full while writing {path}; nothing was replaced. Free "
                                f"space and re-run the same command.") from e
        raise
    return tmp


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1) + "\n").encode()


def create_once(path: Path, data: bytes) -> bool:
    """Atomically create ``path`` with ``data`` unless it exists; True if this call created it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        return False
    tmp = _write_temp(path, data)
    try:
        os.link(tmp, path)   # atomic create-if-absent with the complete content
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def replace_if_different(path: Path, data: bytes) -> bool:
    """Atomically set ``path`` to ``data`` unless it already holds exactly that; True if written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    tmp = _write_temp(path, data)
    try:
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return True


def stray_temporaries(root: Path, prefix: str = "") -> list[Path]:
    """Temporary files left in ``root`` by killed writers (optionally only for ``prefix``)."""
    return sorted(p for p in root.glob(f".{prefix}*.tmp-*") if p.is_file())
