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
