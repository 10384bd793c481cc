"""``medfake bench``: the repository's benchmark suite (``bench/run.py``), and
``medfake bench frontier`` (the sampler quality-cost frontier, ``pipelines/frontier.py``)."""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from ..configs.frontier import FrontierConfig
from .options import add_config_args, config_from_args

# pipelines/cli/bench.py -> the repository (package) root
BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"
FRONTIER_HELP = ("sweep scheduler x steps x CFG cutoff x DeepCache interval: images/s, FD and "
                 "precision/recall against the real set, k-shot CNN accuracy for the best; "
                 "prints the Pareto frontier, writes CSV, plot and JSON")


def frontier_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medfake bench frontier", description=FRONTIER_HELP)
    add_config_args(p, FrontierConfig)
    return p


def _bench(a: argparse.Namespace) -> None:
    if a.args and a.args[0] == "frontier":
        fa = frontier_parser().parse_args(a.args[1:])
        cfg = config_from_args(FrontierConfig, fa, command="bench frontier")
        from ..frontier import run_frontier
        run_frontier(cfg)
        return
    sys.exit(subprocess.call([sys.executable, str(BENCH_DIR / "run.py"), *a.args]))


def register(sub: argparse._SubParsersAction) -> None:
    be = sub.add_parser("bench", help="run the benchmark suite, write bench/RESULTS.md; "
                        "`medfake bench frontier --model DIR --real DIR`: " + FRONTIER_HELP,
                        usage="medfake bench [bench/run.py args]\n"
                              "       medfake bench frontier --model DIR --real DIR [options]")
    be.add_argument("args", nargs=argparse.REMAINDER)
    be.set_defaults(fn=_bench)
