"""Run the benchmark suites and write ``bench/RESULTS.md``.

Every suite puts a ``candidate`` and a ``baseline`` benchmark in one pytest-benchmark group;
both run in the same process, one after the other, so the ratio (baseline median time /
candidate median time = candidate speed-up) is measured side by side on the same noisy machine.
Usage: ``python bench/run.py [pytest args]`` (``make bench`` / ``medfake bench``).
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        cmd = [sys.executable, "-m", "pytest", str(HERE), "-q", "-p", "no:cacheprovider",
               "-o", "python_files=bench_*.py", f"--benchmark-json={out}", *argv]
        rc = subprocess.call(cmd)
        if rc != 0 or not out.exists():
            print("benchmarks failed; RESULTS.md not updated", file=sys.stderr)
            return rc or 1
        data = json.loads(out.read_text())
    groups: dict[str, dict[str, dict]] = {}
    for b in data["benchmarks"]:
        role = "candidate" if "candidate" in b["name"] else "baseline"
        groups.setdefault(b["group"], {})[role] = b
    rows = []
    for group, g in groups.items():
        if set(g) != {"candidate", "baseline"}:
            continue
        c, b = g["candidate"], g["baseline"]
        n = c["extra_info"].get("images_per_round", 1)
        rows.append(f"| {group} | {c['name']}: {n / c['stats']['median']:.2f}/s | "
                    f"{b['name']}: {n / b['stats']['median']:.2f}/s | "
                    f"**{b['stats']['median'] / c['stats']['median']:.2f}x** |")
    stamp = datetime.date.today().isoformat()
    machine = f"{platform.machine()}, {os.cpu_count()} cores, torch threads 2"
    text = ["# Benchmark results", "",
            "Ratios are measured side by side in one run (`make bench`, i.e. "
            "`python bench/run.py`); absolute rates are noisy on shared machines.", "",
            f"Last run: {stamp} on {machine}.", "",
            "| benchmark | candidate | baseline | speed-up (baseline time / candidate time) |",
            "|---|---|---|---|", *rows, ""]
    (HERE / "RESULTS.md").write_text("\n".join(text))
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
