"""Interleaved end-to-end synthesis timing for shared machines: the candidates of
``bench_synthesis.py`` (medfake ONNX with streams, ONNX one stream, torch; stock diffusers
pipeline), rounds alternating A, B, C, D, A, ... so load changes hit all alike; prints median
images/s and the ratios to stock.

Usage: python bench/synthesis_interleaved.py [THREADS] [ROUNDS]
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

from medfake.bench.bench_synthesis import PER_ROUND, medfake_runner, stock_runner
from medfake.engine.diffusion.sd_model import init_model


def main(threads: int = 2, rounds: int = 5) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        model = init_model("tiny", f"{tmp}/tiny")
        runs = {"medfake onnx (streams)": medfake_runner(model, "onnx", threads),
                "medfake onnx, 1 stream": medfake_runner(model, "onnx", threads, streams=1),
                "medfake torch": medfake_runner(model, "torch", threads),
                "stock pipeline": stock_runner(model, threads)}
        for f in runs.values():
            f()
        times: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(rounds):
            for k, f in runs.items():
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
    rate = {k: PER_ROUND / statistics.median(v) for k, v in times.items()}
    print(f"{PER_ROUND} images per round, {rounds} interleaved rounds, {threads} thread(s), "
          f"load average {os.getloadavg()[0]:.2f}")
    for k, r in rate.items():
        print(f"  {k:24s} {r:7.2f} img/s  x{r / rate['stock pipeline']:.2f} vs stock")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
