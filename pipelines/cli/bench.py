"""``medfake bench``: the repository's benchmark suite (``bench/run.py``),
``medfake bench precision-gate`` (``pipelines/precision_gate.py``) and ``medfake bench
frontier`` (the sampler quality-cost frontier, ``pipelines/frontier.py``)."""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from .options import add_config_args, config_from_args

# pipelines/cli/bench.py -> the repository (package) root
BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"
FRONTIER_HELP = ("sweep scheduler x steps x CFG cutoff x DeepCache interval: images/s, FD and "
                 "precision/recall against the real set, k-shot CNN accuracy for the best; "
                 "prints the Pareto frontier, writes CSV, plot and JSON")


def frontier_parser() -> argparse.ArgumentParser:
    from ..configs.frontier import FrontierConfig
    p = argparse.ArgumentParser(prog="medfake bench frontier", description=FRONTIER_HELP)
    add_config_args(p, FrontierConfig)
    return p


def _frontier(argv: list[str]) -> None:
    from ..configs.frontier import FrontierConfig
    fa = frontier_parser().parse_args(argv)
    cfg = config_from_args(FrontierConfig, fa, command="bench frontier")
    from ..frontier import run_frontier
    run_frontier(cfg)


def _precision_gate(argv: list[str]) -> None:
    from ..configs.precision_gate import PrecisionGateConfig
    p = argparse.ArgumentParser(prog="medfake bench precision-gate",
                                description="the quality gate for reduced precision: a table, "
                                "exit status 1 when a candidate fails")
    add_config_args(p, PrecisionGateConfig)
    a = p.parse_args(argv)
    cfg = config_from_args(PrecisionGateConfig, a, command="bench precision-gate")
    from ..precision_gate import run_gate
    report = run_gate(cfg)
    print(report.table())
    if report.failed:
        sys.exit(1)


def _bench(a: argparse.Namespace) -> None:
    if a.args[:1] == ["precision-gate"]:
        _precision_gate(a.args[1:])
        return
    if a.args[:1] == ["frontier"]:
        _frontier(a.args[1:])
        return
    sys.exit(subprocess.call([sys.executable, str(BENCH_DIR / "run.py"), *a.args]))


def register(sub: argparse._SubParsersAction) -> None:
    be = sub.add_parser("bench", help="run the benchmark suite, write bench/RESULTS.md; "
                        "`medfake bench precision-gate --help`: the reduced-precision gate; "
                        "`medfake bench frontier --model DIR --real DIR`: " + FRONTIER_HELP,
                        usage="medfake bench [bench/run.py args]\n"
                              "       medfake bench precision-gate [options]\n"
                              "       medfake bench frontier --model DIR --real DIR [options]")
    be.add_argument("args", nargs=argparse.REMAINDER)
    be.set_defaults(fn=_bench)
