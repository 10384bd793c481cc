"""Peak memory of ``medfake synth`` does not grow with the number of images.

Runs the same job (``tiny`` preset, ONNX backend unless ``--backend``) twice in fresh child
processes, with N and ``factor`` x N images, and compares each child's peak RSS
(``getrusage(RUSAGE_SELF).ru_maxrss``, read at the end of the job); the model's ONNX export
is made beforehand, so neither child measures it. Target: the large job's
peak within +10% of the small one's. Also prints the growth per extra image.

Usage: ``nice -n 10 python bench/synth_memory.py [--images 480] [--factor 10] [--steps 2]
[--backend onnx] [--workdir DIR]``. Prints a Markdown table; exit code 1 if over target.

Real size (``--realsize MODEL_DIR``, a diffusers SD 1.5 dir; a HEAVY job): peak RSS of fresh
child processes, one after the other: the ONNX export (``export_onnx``) with this checkout and,
with ``--before PYTHONPATH`` (a checkout of the code before the change), with the old code;
then sampling one image of ``--size`` px with ``--steps`` DPM++ steps under CFG (UNet batch 2)
on ONNX Runtime (this checkout's session options), on ONNX Runtime with the CPU memory arena
back on (the old options), and on PyTorch. Targets: ONNX sampling within 1.3x of PyTorch's
peak RSS, export under 10 GB. Also prints ``engine.diffusion.backends.memory``'s estimate
next to each measured sampling peak.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, resource, sys, time
import torch
args = json.loads(sys.argv[1])
torch.set_num_threads(args.pop("threads"))
from medfake.pipelines.synth import SynthConfig, run_job
t = time.perf_counter()
r = run_job(SynthConfig(**args))
print(json.dumps({"images": r.pool.images, "seconds": round(time.perf_counter() - t, 1),
                  "backend_busy": round(r.backend_busy, 4),
                  "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


EXPORT_CHILD = """
import json, resource, sys, time
args = json.loads(sys.argv[1])
from medfake.export.onnx_export import export_onnx
t = time.perf_counter()
export_onnx(args["model"], args["out"])
print(json.dumps({"seconds": round(time.perf_counter() - t, 1),
                  "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

SAMPLE_CHILD = """
import json, resource, sys, time
import torch
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
if args.get("arena"):   # the session options before issue 21: CPU memory arena on
    from medfake.engine.diffusion.backends import ort_backend
    new = ort_backend.session_options
    def old(threads=None):
        so = new(threads)
        so.enable_cpu_mem_arena = True
        return so
    ort_backend.session_options = old
from medfake.engine.diffusion.sampler import SamplerConfig
from medfake.pipelines.models import load_model
t = time.perf_counter()
m = load_model(args["model"], args["backend"], **({"threads": args["threads"]}
               if args["backend"] == "onnx" else {}))
loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
s = m.sampler(SamplerConfig("dpm++", args["steps"], 4.0, "", args["size"], args["size"]))
s.generate(["a CT image of a liver cyst"], [0])
print(json.dumps({"seconds": round(time.perf_counter() - t, 1), "loaded_mb": loaded,
                  "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _child(code: str, args: dict, env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", code, json.dumps(args)], capture_output=True,
                         text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def realsize(a) -> int:
    """The ``--realsize`` comparison (module doc)."""
    import shutil
    work = Path(a.workdir or tempfile.mkdtemp(prefix="synth_memory"))
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore",
           "MEDFAKE_CACHE": str(work / "cache")}
    export = work / "export"
    rows = []
    if a.before:
        r = _child(EXPORT_CHILD, {"model": a.realsize, "out": str(work / "export-before")},
                   {**env, "PYTHONPATH": a.before})
        rows.append(("export, before", r))
        shutil.rmtree(work / "export-before", ignore_errors=True)
        print(rows[-1], flush=True)
    if not (export / "export_manifest.json").is_file():
        rows.append(("export", _child(EXPORT_CHILD, {"model": a.realsize, "out": str(export)},
                                      env)))
        print(rows[-1], flush=True)
    from medfake.engine.diffusion.backends.components import JobShape
    from medfake.engine.diffusion.backends.memory import estimate_peak_bytes
    job = JobShape(1, a.size, a.size, True)
    est = {}
    for name, model, backend, arena in (("sampling, onnx", export, "onnx", False),
                                        ("sampling, onnx, arena on (before)", export, "onnx", True),
                                        ("sampling, torch", a.realsize, "torch", False)):
        r = _child(SAMPLE_CHILD, {"model": str(model), "backend": backend, "arena": arena,
                                  "threads": a.threads, "steps": a.steps, "size": a.size}, env)
        rows.append((name, r))
        if not arena:
            est[name] = estimate_peak_bytes(backend, str(model), job) / 2 ** 20
        print(rows[-1], flush=True)
    print("\n| what | peak RSS (MB) | after load (MB) | estimate (MB) | seconds |\n"
          "|---|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['maxrss_mb']:.0f} | {r.get('loaded_mb', 0):.0f} | "
              f"{est.get(name, 0):.0f} | {r['seconds']} |")
    peak = dict(rows)
    ratio = peak["sampling, onnx"]["maxrss_mb"] / peak["sampling, torch"]["maxrss_mb"]
    exp_gb = next((r["maxrss_mb"] for n, r in rows if n == "export"), float("nan")) / 1024
    print(f"\nonnx / torch sampling peak: {ratio:.2f}x (target <= 1.3x: "
          f"{'met' if ratio <= 1.3 else 'NOT met'}); export peak {exp_gb:.1f} GiB (target "
          f"< 10 GB: {'met' if exp_gb * 2**30 < 10e9 else 'NOT met'})")
    return 0


def _run(args: dict, threads: int, env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps({**args, "threads": threads})],
                         capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=480, help="images of the small job")
    ap.add_argument("--factor", type=int, default=10)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--backend", default="onnx")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", help="default: a temporary directory")
    ap.add_argument("--realsize", metavar="MODEL_DIR", help="real-size comparison (doc)")
    ap.add_argument("--before", metavar="PYTHONPATH", help="--realsize: also export with the "
                    "code on this PYTHONPATH")
    ap.add_argument("--size", type=int, default=512, help="--realsize: image size")
    a = ap.parse_args(argv)
    if a.realsize:
        return realsize(a)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(a.workdir or tmp)
        env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore",
               "MEDFAKE_CACHE": os.environ.get("MEDFAKE_CACHE", str(work / "cache"))}
        setup = ("from medfake.engine.data.phantoms import PhantomConfig, make_phantom_world\n"
                 "from medfake.engine.diffusion.sd_model import init_model\n"
                 f"make_phantom_world({str(work / 'world')!r}, PhantomConfig(n_public_per_class=1,"
                 " n_train_per_class=2, n_val_per_class=1, n_test_per_class=1))\n"
                 f"init_model('tiny', {str(work / 'tiny')!r})\n"
                 "from medfake.pipelines.models import load_model\n"   # export once, untimed
                 f"load_model({str(work / 'tiny')!r}, {a.backend!r})\n")
        if not (work / "tiny").exists():
            subprocess.run([sys.executable, "-c", setup], check=True, env=env,
                           capture_output=True)
        rows = []
        for n in (a.images, a.images * a.factor):
            per_class = max(1, n // 3)
            args = dict(model_dir=str(work / "tiny"), real_dataset=str(work / "world" / "hospital"),
                        out_dir=str(work / f"out-{n}"), per_class=per_class, steps=a.steps,
                        batch_size=a.batch_size, backend=a.backend, threads=a.threads)
            rows.append(_run(args, a.threads, env))
    small, large = rows
    growth = large["maxrss_mb"] / small["maxrss_mb"] - 1
    per_image = (large["maxrss_mb"] - small["maxrss_mb"]) * 2 ** 20 / max(
        1, large["images"] - small["images"])
    print(f"| images | peak RSS (MB) | seconds | backend busy |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['images']} | {r['maxrss_mb']:.1f} | {r['seconds']} | "
              f"{100 * r['backend_busy']:.1f}% |")
    print(f"\npeak RSS growth for {a.factor}x the images: {100 * growth:+.1f}% "
          f"({per_image:.0f} bytes per extra image); target <= +10%: "
          f"{'met' if growth <= 0.10 else 'NOT met'}")
    return 0 if growth <= 0.10 else 1


if __name__ == "__main__":
    sys.exit(main())
