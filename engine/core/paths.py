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
    random bytes as hex; created on first use, atomically (``O_EXCL``: concurrent first uses
    of a farm agree on one secret). The caller reads it; nothing here logs its content."""
    import secrets

    secret_dir = cache_dir("secrets")
    secret_dir.chmod(0o700)
    path = secret_dir / name
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return path
