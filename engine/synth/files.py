"""Files that several processes of a synthesis farm may write at once, without a coordinator.

Every write goes to a temporary file with a name unique to this host, process and call, is
fsynced and then renamed, so readers only ever see complete files. Two kinds of publication:

- ``create_once``: the first writer wins (``os.link`` of the complete temporary file fails if
  the target exists); later writers compare contents instead of writing.
- ``replace_if_different``: whoever publishes last wins; meant for content every writer
  computes identically (e.g. ``dataset.json`` of a complete job), so the race is harmless.

Temporary names start with ``.`` and contain ``.tmp-<host>-<pid>-<nonce>`` (the owner). While
a process writes one it holds an exclusive ``fcntl.flock`` on it (``open_locked``), released
by the OS when the process dies, so ``temp_is_live`` tells a live writer's file (locked, or
owned by a running process of this host) from one a killed writer left behind.
``stray_temporaries`` lists only the latter (never read as data, safe to delete);
``live_temporaries`` the former (never deleted by anyone). Every publish fsyncs the directory.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import uuid
from pathlib import Path
from typing import Any, BinaryIO

from ..core.atomic import fsync_dir, is_disk_full
from ..core.errors import DiskFullError

_HOST = socket.gethostname().split(".")[0].replace("-", "_") or "host"


def temp_name(path: Path) -> Path:
    """A temporary sibling of ``path`` no other process or thread uses."""
    return path.with_name(f".{path.name}.tmp-{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def writer_id() -> str:
    """``host:pid`` of this process, as temporary names and error messages name writers."""
    return f"{_HOST}:{os.getpid()}"


def open_locked(path: Path, buffering: int = -1) -> BinaryIO:
    """Create ``path`` for writing and hold an exclusive ``flock`` on it until it is closed
    (or the process dies): ``temp_is_live`` then reports it as a live writer's file."""
    f = open(path, "wb", buffering=buffering)  # noqa: SIM115 (returned open, locked)
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise
    return f


def temp_owner(path: Path) -> tuple[str, int] | None:
    """(host, pid) recorded in a temporary file's name, or None if it records none."""
    _, sep, tail = path.name.partition(".tmp-")
    parts = tail.split("-")
    if not sep:
        return None
    if len(parts) == 1 and parts[0].isdigit():          # core.atomic's ``.tmp-<pid>``
        return _HOST, int(parts[0])
    if len(parts) >= 2 and parts[1].isdigit():
        return parts[0], int(parts[1])
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def temp_is_live(path: Path) -> bool:
    """True if a running process may still be writing ``path``: another open file holds its
    ``flock``, or its name records a process of this host that is still running. A file that
    vanished is not live."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
    except BlockingIOError:
        return True
    except OSError:
        pass                      # no flock on this file system: fall back to the owner
    finally:
        os.close(fd)
    owner = temp_owner(path)
    return (owner is not None and owner[0] == _HOST and owner[1] != os.getpid()
            and _pid_alive(owner[1]))


def _write_temp(path: Path, data: bytes) -> Path:
    tmp = temp_name(path)
    try:
        with open_locked(tmp) as f:
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
        fsync_dir(path.parent)
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
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return True


def _temporaries(root: Path, prefix: str) -> list[Path]:
    return sorted(p for p in Path(root).glob(f".{prefix}*.tmp-*") if p.is_file())


def stray_temporaries(root: Path, prefix: str = "") -> list[Path]:
    """Temporary files left in ``root`` by killed writers (optionally only for ``prefix``);
    files of live writers (``temp_is_live``) are not listed."""
    return [p for p in _temporaries(root, prefix) if not temp_is_live(p)]


def live_temporaries(root: Path, prefix: str = "") -> list[Path]:
    """Temporary files in ``root`` that running processes are writing (never to delete)."""
    return [p for p in _temporaries(root, prefix) if temp_is_live(p)]
