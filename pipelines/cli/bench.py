"""``medfake bench``: the repository's benchmark suite (``bench/run.py``)."""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

# pipelines/cli/bench.py -> the repository (package) root
BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"


def _bench(a: argparse.Namespace) -> None:
    sys.exit(subprocess.call([sys.executable, str(BENCH_DIR / "run.py"), *a.args]))


def register(sub: argparse._SubParsersAction) -> None:
    be = sub.add_parser("bench", help="run the benchmark suite, write bench/RESULTS.md")
    be.add_argument("args", nargs=argparse.REMAINDER)
    be.set_defaults(fn=_bench)
