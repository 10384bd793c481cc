"""Peak memory of ``medfake synth`` does not grow with the number of images.

Runs the same job (``tiny`` preset, ONNX backend unless ``--backend``) twice in fresh child
processes, with N and ``factor`` x N images, and compares each child's peak RSS
(``getrusage(RUSAGE_SELF).ru_maxrss``, read at the end of the job); the model's ONNX export
is made beforehand, so neither child measures it. Target: the large job's
peak within +10% of the small one's. Also prints the growth per extra image.

Usage: ``nice -n 10 python bench/synth_memory.py [--images 480] [--factor 10] [--steps 2]
[--backend onnx] [--workdir DIR]``. Prints a Markdown table; exit code 1 if over target.
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
    a = ap.parse_args(argv)
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
