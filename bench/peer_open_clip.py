"""Run open_clip's own trainer (``python -m open_clip_train.main``) as the peer of
``medfake train clip``, in its own environment.

open_clip_train 3.3.0 ships in the open_clip_torch wheel but needs pandas, and with
webdataset >= 0.2.9x it fails (KeyError 'fname') on the ``{}`` end-of-shard marker. So the peer
gets pandas and webdataset==0.2.86 from ``pip install --target <cache>/bench/peer-site``,
prepended to its PYTHONPATH only; the project's .venv is never touched. open_clip_train's CLI
cannot load model configs from a directory, so this file is also the peer's entry point: it
registers medfake's presets (``engine/presets/clip``) with ``open_clip.add_model_config`` and
then calls ``open_clip_train.main.main`` with the given arguments, unchanged.

Usage: ``python bench/peer_open_clip.py -- <open_clip_train arguments>`` (sets up the
environment on first use, then runs the peer).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PRESETS = HERE.parent / "engine" / "presets" / "clip"
# pandas and the webdataset the peer works with, plus their pure-Python dependencies
PEER_PACKAGES = ("pandas", "python-dateutil", "six", "pytz", "tzdata", "webdataset==0.2.86",
                 "braceexpand", "pyyaml")
ENTRY_FLAG = "--as-peer"


def peer_site() -> Path:
    """``<cache>/bench/peer-site`` with PEER_PACKAGES installed (once)."""
    from medfake.engine.core.paths import cache_dir
    site = cache_dir("bench", "peer-site")
    marker = site / ".medfake-peer-ok"
    if not marker.exists():
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                        "--target", str(site), *PEER_PACKAGES], check=True)
        marker.write_text("\n".join(PEER_PACKAGES) + "\n")
    return site


def peer_command(args: list[str]) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), ENTRY_FLAG, *args]


def peer_env(base: dict | None = None) -> dict:
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join([str(peer_site())]
                                        + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def _run_as_peer(args: list[str]) -> None:
    import open_clip
    open_clip.add_model_config(PRESETS)
    from open_clip_train.main import main
    main(args)


if __name__ == "__main__":
    if sys.argv[1:2] == [ENTRY_FLAG]:
        _run_as_peer(sys.argv[2:])
    else:
        argv = sys.argv[1:]
        if argv[:1] == ["--"]:
            argv = argv[1:]
        sys.exit(subprocess.call(peer_command(argv), env=peer_env()))
