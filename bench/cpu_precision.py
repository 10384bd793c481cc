"""CPU backends and precisions side by side, end to end: ``medfake synth`` jobs writing shards.

Rows (one run, the same model, prompts, seeds, scheduler, steps, batch and threads):
``torch/fp32``, ``torch/bf16``, ``onnx/fp32`` (today's CPU default, the ratio baseline),
``openvino/fp32``, ``openvino/bf16``, and ``auto`` (``--backend auto --precision auto``, the
default CPU path: what it picked is printed from the shards' provenance). A row this machine
cannot run (no native bf16, runtime not installed) says so ("not run: ...") and is never timed:
emulated bf16 is not the bf16 path.

``auto`` measures every candidate once per machine and model (speed, memory and the image gate,
``engine.diffusion.backends.select``) when a job is large enough to pay for it; the bench's jobs
are not, so that measurement is made once before the rows (``--measure-auto``, its own
subprocess, at the rows' job shape and threads: the cache key the ``auto`` job reads) and
printed, as a farm's first large job would make it.

Each row is a fresh job in its own subprocess (``--row``), so its peak RSS is its own (``VmHWM``
of that process, whose memory map is new at exec; ``ru_maxrss`` would carry the parent's RSS at
fork over); images/s is the job's generation rate (``SynthResult``: model load
excluded, shards encoded and written included). The ONNX export is made once before the rows
(the jobs' export cache), so no row pays for it. ``--rounds N`` repeats the rows interleaved
(A, B, C, A, B, C, ...) and reports the median.

    python bench/cpu_precision.py                      # tiny preset (random weights), 32 px
    python bench/cpu_precision.py --size sd15 --per-class 1 --steps 2    # HEAVY: SD 1.5 size

``--size sd15`` builds a random-weight SD 1.5-size model (about 4 GB on disk in the bench's
cache, 512 px): a heavy job (``flock /tmp/medfake_heavy.lock nice -n 5 ...`` on shared boxes).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROWS = ("torch/fp32", "torch/bf16", "onnx/fp32", "openvino/fp32", "openvino/bf16", "auto")
BASELINE = "onnx/fp32"
SIZES = {"tiny": ("tiny", 32), "sd15": ("sd15", 512)}


def _world(work: Path) -> Path:
    from medfake.engine.data.phantoms import PhantomConfig, make_phantom_world
    hospital = work / "world" / "hospital"
    if not (hospital / "dataset.json").exists():
        make_phantom_world(work / "world", PhantomConfig(n_public_per_class=1,
                                                         n_train_per_class=4,
                                                         n_val_per_class=1, n_test_per_class=1))
    return hospital


def _model(work: Path, preset: str) -> Path:
    from medfake.engine.diffusion.sd_model import init_model
    out = work / f"model-{preset}"
    if not (out / "model_index.json").exists():
        init_model(preset, out, seed=0)
    return out


def _config(a: argparse.Namespace, row: str, out: Path):
    from medfake.pipelines.synth import SynthConfig
    backend, _, precision = row.partition("/")
    return SynthConfig(a.model, a.real, str(out), per_class=a.per_class, steps=a.steps,
                       batch_size=a.batch_size, backend=backend, precision=precision or "auto",
                       threads=a.threads, image_size=a.image_size, samples_per_shard=64)


def _made_with(out: Path) -> str:
    """``backend/precision`` from the first sample's provenance in the job's shards."""
    import tarfile
    for shard in sorted(out.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar:
                if m.name.endswith(".json"):
                    meta = json.load(tar.extractfile(m))
                    return f"{meta['backend']}/{meta['precision']}"
    raise RuntimeError(f"no sample in {out}")


def _child(a: argparse.Namespace) -> None:
    """One row: one synth job; prints one JSON line."""
    import torch
    torch.set_num_threads(a.threads)
    from medfake.pipelines.synth import run_job
    out = Path(a.work) / "jobs" / f"{a.row.replace('/', '-')}-{a.size}-{time.time_ns()}"
    res = run_job(_config(a, a.row, out))
    assert res.complete, "job not complete"
    made_with = _made_with(out)
    import shutil
    shutil.rmtree(out)
    print(json.dumps({"images": res.pool.images, "seconds": res.seconds,
                      "images_per_s": res.images_per_second, "load_s": res.load_seconds,
                      "peak_rss_mb": _peak_rss_mb(), "made_with": made_with}))


def _measure_auto(a: argparse.Namespace) -> None:
    """``--backend auto``'s one-time measurement at the rows' job shape; prints its choice."""
    import torch
    torch.set_num_threads(a.threads)
    from medfake.engine.diffusion.backends import choose_auto
    from medfake.pipelines.models import prepare_export
    from medfake.pipelines.synth import synth_job_shape
    cfg = _config(a, "auto", Path(a.work) / "unused")
    choice = choose_auto(a.model, synth_job_shape(cfg, a.image_size), precision="auto",
                         prepare=prepare_export, threads=a.threads, allow_measure=True)
    print(json.dumps({"choice": f"{choice.backend}/{choice.precision}", "why": choice.why}))


def _peak_rss_mb() -> float:
    """This process's peak resident memory: ``VmHWM`` (Linux), else ``ru_maxrss``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _unavailable(row: str) -> str | None:
    if row == "auto":
        return None
    from medfake.engine.diffusion.backends import BACKENDS
    from medfake.engine.diffusion.backends.select import native_bf16
    backend, _, precision = row.partition("/")
    why = BACKENDS[backend].unavailable()
    if why:
        return why
    if precision == "bf16" and not native_bf16(backend):
        return "no native bf16 on this CPU"
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=SIZES, default="tiny")
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    ap.add_argument("--per-class", type=int, default=16, help="images per class (3 classes)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--work", default=str(Path.home() / ".cache" / "medfake" / "bench-cpu"))
    ap.add_argument("--row", help=argparse.SUPPRESS)
    ap.add_argument("--measure-auto", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--real", help=argparse.SUPPRESS)
    ap.add_argument("--image-size", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.measure_auto:
        _measure_auto(a)
        return
    if a.row:
        _child(a)
        return
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MEDFAKE_CACHE": str(work / "cache"), "OMP_NUM_THREADS": str(a.threads)}
    os.environ.update(env)
    preset, image_size = SIZES[a.size]
    real, model = _world(work), _model(work, preset)
    skip = {r: _unavailable(r) for r in a.rows}
    if any(r.split("/")[0] in ("onnx", "openvino", "auto") and not skip[r] for r in a.rows):
        from medfake.pipelines.models import prepare_export
        prepare_export(str(model), "onnx", None)   # once, outside every row
    base = [sys.executable, __file__, "--size", a.size, "--per-class", str(a.per_class),
            "--steps", str(a.steps), "--batch-size", str(a.batch_size), "--threads",
            str(a.threads), "--work", str(work), "--model", str(model), "--real", str(real),
            "--image-size", str(image_size)]
    auto = None
    if "auto" in a.rows:
        p = subprocess.run([*base, "--measure-auto"], env=env, capture_output=True, text=True)
        if p.returncode:
            sys.exit(f"--backend auto's measurement failed:\n{p.stderr[-3000:]}")
        auto = json.loads(p.stdout.strip().splitlines()[-1])
        print(f"auto measured: {auto}", file=sys.stderr, flush=True)   # progress
    runs: dict[str, list[dict]] = {r: [] for r in a.rows if not skip[r]}
    for _ in range(a.rounds):
        for r in runs:
            p = subprocess.run([*base, "--row", r], env=env, capture_output=True, text=True)
            if p.returncode:
                sys.exit(f"row {r} failed:\n{p.stderr[-3000:]}")
            runs[r].append(json.loads(p.stdout.strip().splitlines()[-1]))
            print(f"{r}: {runs[r][-1]}", file=sys.stderr, flush=True)   # progress
    med = {r: statistics.median(x["images_per_s"] for x in v) for r, v in runs.items()}
    ref = med.get(BASELINE)
    n = 3 * a.per_class
    print(f"{a.size} ({preset}, {image_size} px), {n} images per job, {a.steps} DPM++ steps, "
          f"CFG 4, batch {a.batch_size}, {a.threads} threads, {a.rounds} round(s); "
          f"{time.strftime('%Y-%m-%d')}, load {os.getloadavg()[0]:.1f}")
    print(f"| row | images/s | vs {BASELINE} | peak RSS (MB) |")
    print("|---|---|---|---|")
    for r in a.rows:
        if skip[r]:
            print(f"| {r} | not run: {skip[r]} | | |")
            continue
        rss = max(x["peak_rss_mb"] for x in runs[r])
        ratio = f"{med[r] / ref:.2f}x" if ref else "n/a"
        name = r if r != "auto" else f"auto (made with {runs[r][0]['made_with']})"
        print(f"| {name} | {med[r]:.3g} | {ratio} | {rss:.0f} |")
    if auto:
        print(f"\n--backend auto chose {auto['choice']}: {auto['why']}")


if __name__ == "__main__":
    main()
