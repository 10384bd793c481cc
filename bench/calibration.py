"""The calibrated default of `medfake synth` against the best hand-picked setting, side by side.

One ONNX Runtime job (the ``tiny`` preset at 32 px, or ``--size sd15``: a random-weight SD 1.5
at 512 px) runs with streams and batch size left automatic (``engine.diffusion.calibrate``
measures once, then reads its cache) and with every hand-picked ``streams x batch`` setting of
the same thread total, in interleaved rounds (default, setting 1, setting 2, ..., default, ...)
so that load changes hit all alike. Times are the job's generation wall time
(``SynthResult.seconds``: sampling, encoding and writing the shards; the model load and the
one-off calibration are reported apart). Prints a Markdown table and the ratio of the default's
median to the best hand-picked median; target: within 10% (ratio <= 1.10).

Usage: ``python bench/calibration.py [--size tiny|sd15] [--images 96] [--per-shard 32]
[--steps 20] [--threads 2] [--rounds 3]``. ``--size sd15`` builds and runs a real-size model:
a HEAVY job (minutes, several GB); use few images and steps (e.g. ``--images 2 --steps 2``).
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

SIZES = {"tiny": ("tiny", 32), "sd15": ("sd15", 512)}
GRID = {"tiny": (1, 2, 4, 8, 16), "sd15": (1, 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="tiny")
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--per-shard", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--model", help="an existing diffusers dir or ONNX export of the preset's "
                    "size to use instead of building one (skips the export)")
    a = ap.parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ["MEDFAKE_CACHE"] = str(work / "cache")   # a fresh calibration
        import torch
        from medfake.engine.data.phantoms import PhantomConfig, make_phantom_world
        from medfake.engine.diffusion.sd_model import init_model
        from medfake.pipelines.models import prepare_export
        from medfake.pipelines.synth import SynthConfig, run_job
        torch.set_num_threads(a.threads)
        preset, size = SIZES[a.size]
        _, hospital = make_phantom_world(work / "world", PhantomConfig(
            n_public_per_class=1, n_train_per_class=2, n_val_per_class=1, n_test_per_class=1))
        model = Path(a.model) if a.model else init_model(preset, work / preset, seed=0)
        t = time.perf_counter()
        prepare_export(str(model), "onnx")   # untimed: the export is cached by the job
        export_s = time.perf_counter() - t
        n, count = 0, [0]
        settings: dict[str, dict] = {"default (calibrated)": {}}
        for s in range(1, a.threads + 1):
            for b in GRID[a.size]:
                if b <= a.per_shard:
                    settings[f"{s} stream(s), batch {b}"] = {"streams": s, "batch_size": b}

        def job(extra: dict):
            count[0] += 1
            return run_job(SynthConfig(
                str(model), str(hospital), str(work / f"out{count[0]}"),
                per_class=max(1, a.images // 3), steps=a.steps, samples_per_shard=a.per_shard,
                image_size=size, backend="onnx", threads=a.threads, **extra))

        logging.basicConfig(format="%(message)s")
        synth_log = logging.getLogger("medfake.pipelines.synth")
        synth_log.setLevel(logging.INFO)   # the first job's choice and why
        first = job({})   # calibrates (load_seconds includes it), then runs
        synth_log.setLevel(logging.WARNING)
        times: dict[str, list[float]] = {k: [] for k in settings}
        load: dict[str, float] = {}
        for _ in range(a.rounds):
            for name, extra in settings.items():
                r = job(extra)
                times[name].append(r.seconds)
                load[name] = r.load_seconds
                n = r.pool.images
                torch.set_num_threads(a.threads)
    med = {k: statistics.median(v) for k, v in times.items()}
    hand = {k: v for k, v in med.items() if not k.startswith("default")}
    best = min(hand, key=hand.get)
    ratio = med["default (calibrated)"] / hand[best]
    print(f"{a.size}: {n} images of {size} px in shards of {a.per_shard}, {a.steps} DPM++ steps, "
          f"CFG, ONNX Runtime, {a.threads} threads, {a.rounds} interleaved rounds; export "
          f"{export_s:.1f} s; first default job: load + calibration {first.load_seconds:.1f} s "
          f"(later loads {load['default (calibrated)']:.1f} s); load average "
          f"{os.getloadavg()[0]:.2f}\n")
    print("| setting | median generation s | img/s | vs best hand-picked |\n|---|---|---|---|")
    for k, v in sorted(med.items(), key=lambda kv: kv[1]):
        print(f"| {k} | {v:.2f} | {n / v:.2f} | {v / hand[best]:.2f}x |")
    print(f"\ndefault / best hand-picked ({best}): **{ratio:.2f}x**; target <= 1.10: "
          f"{'met' if ratio <= 1.10 else 'NOT met'}")
    return 0 if ratio <= 1.10 else 1


if __name__ == "__main__":
    sys.exit(main())
