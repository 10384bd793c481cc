"""Where medfake caches models and data: ``$MEDFAKE_CACHE`` or ``~/.cache/medfake``."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """Return (and create) a directory under the medfake cache root."""
    root = Path(os.environ.get("MEDFAKE_CACHE", Path.home() / ".cache" / "medfake"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def secret_file(name: str) -> Path:
    """A per-user secret ``<cache>/secrets/<name>`` (directory 0700, file 0600), holding 32
    random bytes as hex; created on first use, atomically: the full content is written to a
    private temporary file that is then hard-linked into place, which fails if another process
    got there first, so concurrent first uses of a farm agree on one secret and never read a
    half-written one. The caller reads it; nothing here logs its content."""
    import secrets

    secret_dir = cache_dir("secrets")
    secret_dir.chmod(0o700)
    path = secret_dir / name
    if path.exists():
        return path
    tmp = secret_dir / f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process created it first: use theirs
    finally:
        tmp.unlink(missing_ok=True)
    return path
