"""Run the benchmark suites and write ``bench/RESULTS.md``.

Every suite puts one ``baseline`` and one or more ``candidate`` benchmarks in a pytest-benchmark
group; they run in the same process, one after the other, so each ratio (candidate rate /
baseline rate, rates = ``extra_info["per_round"]`` units per median round) is measured side by
side on the same noisy machine. Units are images for throughput rows and GFLOP for the
efficiency row, whose baseline is the fp32 FMA roof (``bench/roofline.py``).

``RESULTS.md`` is a log: each run adds a section headed by its date and machine at the top, and
every row carries the date it was measured. Earlier sections (and the rows other scripts add by
hand under ``MARKER``) are kept verbatim below it: a figure is never re-dated without being
re-measured.
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
MARKER = "<!-- earlier runs and figures from other bench scripts: kept verbatim by run.py -->"
HEADER = ["# Benchmark results", "",
          "Ratios are measured side by side in one run; absolute rates are noisy on shared "
          "machines. Every row carries the date it was measured; newer sections come first, "
          "and nothing below a section's heading is re-dated without being re-measured.", ""]


def _rate(b: dict) -> float:
    """Units per second: ``per_round`` units (images, GFLOP, ...) per median round time."""
    extra = b["extra_info"]
    return extra.get("per_round", extra.get("images_per_round", 1)) / b["stats"]["median"]


def _unit(b: dict) -> str:
    return b["extra_info"].get("unit", "img")


def main(argv: list[str]) -> int:
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        cmd = [sys.executable, "-m", "pytest", str(HERE), "-q", "-p", "no:cacheprovider",
               "-o", "python_files=bench_*.py", f"--benchmark-json={out}", *argv]
        rc = subprocess.call(cmd)
        if rc != 0 or not out.exists():
            print("benchmarks failed; RESULTS.md not updated", file=sys.stderr)
            return rc or 1
        data = json.loads(out.read_text())
    groups: dict[str, dict[str, list[dict]]] = {}
    for b in data["benchmarks"]:
        role = "baseline" if "baseline" in b["name"] else "candidate"
        groups.setdefault(b["group"], {}).setdefault(role, []).append(b)
    stamp = datetime.date.today().isoformat()
    rows = []
    for group, g in groups.items():
        if not g.get("baseline") or not g.get("candidate"):
            continue
        base = g["baseline"][0]
        base_rate = _rate(base)
        for c in sorted(g["candidate"], key=_rate, reverse=True):
            rows.append(f"| {group} | {c['name']}: {_rate(c):.2f} {_unit(c)}/s | "
                        f"{base['name']}: {base_rate:.2f} {_unit(base)}/s | "
                        f"**{_rate(c) / base_rate:.2f}x** | {stamp} |")
    from medfake.engine.core import capabilities as cap
    gpu = ("GPU section: ran." if cap.cuda().available else
           f"GPU section (bench_gpu.py: TensorRT vs ORT-CUDA vs torch+xformers): skipped, "
           f"no CUDA GPU ({cap.cuda().detail}).")
    machine = (f"{platform.machine()}, {os.cpu_count()} cores, torch threads 2; 1-min load "
               f"average {load_start:.2f} at the start, {os.getloadavg()[0]:.2f} at the end")
    section = [f"## `make bench` (`python bench/run.py`), {stamp}", "",
               f"{machine}.", "",
               "| benchmark | candidate | baseline | ratio (candidate rate / baseline rate) | "
               "measured |", "|---|---|---|---|---|", *rows, "", f"{stamp}: {gpu}", ""]
    results = HERE / "RESULTS.md"
    old = results.read_text() if results.exists() else ""
    # Everything of the old file from its first section on (earlier runs, other scripts' rows),
    # verbatim, below the new section.
    body = old.replace(MARKER, "")
    earlier = body[body.index("\n## ") + 1:].strip() if "\n## " in body else ""
    text = [*HEADER, *section, MARKER, "", earlier, ""]
    results.write_text("\n".join(text))
    print("\n".join(section))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
