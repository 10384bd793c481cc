"""Farm scale: a ``medfake synth`` job of N images, killed once and resumed, then the tools a
farm user runs on the result. A benchmark (prints measurements), not a test.

What it does, in fresh child processes (``micro`` preset, 1 step, ``--samples-per-shard
256``):

1. ``medfake synth`` until about 40% of the N images are on disk, then SIGKILL; resume with
   the same command to the end. Every ``--every`` seconds it records the images on disk
   (from the shard manifests) and the writer's RSS, so it prints images/s over time and the
   writer's peak RSS (``VmHWM``) when the job reached N/10 and N.
2. The wall time of ``medfake synth status OUT`` (default check, from manifests and sizes),
   ``medfake synth status OUT --checksums``, ``medfake data check OUT`` (with its peak RSS)
   and ``medfake train clip`` up to its first optimizer step (1 step, batch 32, 0 workers).

``--layout N`` instead builds a synthetic N-sample job layout in seconds (plan, per-shard
manifests, sparse tar files of the recorded sizes; no images) and times only
``medfake synth status`` on it: the status figure at sizes the machine cannot synthesise.

Usage: ``python bench/farm_scale.py --images 3000 [--workdir DIR] [--threads 2]`` or
``python bench/farm_scale.py --layout 1000000``. Prints a Markdown table row.
"""
from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PER_SHARD = 256


def _medfake(*args: str) -> list[str]:
    return [sys.executable, "-m", "medfake.pipelines.cli", *args]


def _status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _images_on_disk(out: Path) -> int:
    n = 0
    for p in out.glob("train-*.json"):
        try:
            n += json.loads(p.read_text())["count"]
        except (OSError, ValueError, KeyError):
            pass
    return n


def _timed(cmd: list[str], env: dict, until: str | None = None) -> tuple[float, int, str]:
    """Wall seconds, peak RSS (MB) and output of ``cmd``; with ``until`` it is stopped (and the
    time taken) as soon as that text appears in its stderr/stdout."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
    peak, lines = 0, []
    for line in p.stdout:
        lines.append(line)
        peak = max(peak, _status_kb(p.pid, "VmHWM"))
        if until and until in line:
            elapsed = time.perf_counter() - t
            p.kill()
            p.wait()
            return elapsed, peak // 1024, "".join(lines)
    p.wait()
    return time.perf_counter() - t, peak // 1024, "".join(lines)


def _synth(cmd: list[str], env: dict, out: Path, n: int, kill_at: float | None, every: float,
           log: list, t0: float) -> dict:
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True)
    rss_at = {}
    while p.poll() is None:
        time.sleep(every)
        have = _images_on_disk(out)
        hwm = _status_kb(p.pid, "VmHWM") // 1024
        log.append((round(time.perf_counter() - t0, 1), have, hwm))
        if have >= n / 10 and "n/10" not in rss_at:
            rss_at["n/10"] = hwm
        if hwm:
            rss_at["last"] = hwm
        if kill_at is not None and have >= kill_at * n:
            p.send_signal(signal.SIGKILL)
            p.wait()
            return {"killed_at": have, **rss_at}
    err = p.stderr.read()
    if p.returncode != 0:
        raise SystemExit(f"synth failed:\n{err[-3000:]}")
    return {"killed_at": None, **rss_at}


def build_layout(out: Path, n: int) -> None:
    """A job layout of ``n`` samples (3 classes) whose manifests and sizes pass the default
    status check: plan, manifests, sparse tars. Takes seconds at 10^6."""
    from medfake.engine.synth.plan import Segment, SynthPlan
    names = ["cyst", "hemangioma", "metastasis"]
    counts = tuple(n // 3 + (c < n % 3) for c in range(3))
    params = {"generator": "diffusion", "mode": "txt2img", "seed": 0, "class_names": names,
              "samples_per_shard": PER_SHARD, "image_size": 8, "channels": 1,
              "prompt_templates": {}, "image_format": "png"}
    plan = SynthPlan(params, [Segment(0, (0, 0, 0), counts)])
    out.mkdir(parents=True, exist_ok=True)
    (out / "synth_plan.json").write_text(json.dumps(plan.to_json(), indent=1) + "\n")
    for i in range(plan.n_shards):
        keys = plan.shard_keys(i)
        size = 10240 * (1 + len(keys) // 4)
        name = f"train-{i:06d}.tar"
        per_class: dict[str, int] = {}
        for k in keys:
            c = k.split("_")[1]
            per_class[c] = per_class.get(c, 0) + 1
        (out / name).with_suffix(".json").write_text(json.dumps(
            {"name": name, "sha256": "0" * 64, "count": len(keys), "per_class": per_class,
             "keys": keys, "bytes": size, "image_format": "png"}, indent=1) + "\n")
        with open(out / name, "wb") as f:
            f.truncate(size)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=3000, help="N, images of the job")
    ap.add_argument("--layout", type=int, help="only time `synth status` on an N-sample layout")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backend", default="onnx", help="exported once beforehand, untimed")
    ap.add_argument("--every", type=float, default=2.0, help="seconds between samples")
    ap.add_argument("--kill-at", type=float, default=0.4, help="fraction of N, then SIGKILL")
    ap.add_argument("--workdir", help="default: a temporary directory")
    a = ap.parse_args(argv)
    date = datetime.date.today().isoformat()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(a.workdir or tmp)
        env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore",
               "OMP_NUM_THREADS": str(a.threads),
               "MEDFAKE_CACHE": os.environ.get("MEDFAKE_CACHE", str(work / "cache"))}
        if a.layout:
            out = work / f"layout-{a.layout}"
            t = time.perf_counter()
            if not (out / "synth_plan.json").exists():
                build_layout(out, a.layout)
            built = time.perf_counter() - t
            secs, _, text = _timed(_medfake("synth", "status", str(out)), env)
            done = next((ln for ln in text.splitlines() if " done, " in ln), text[-300:])
            print(f"| synth status, synthetic {a.layout:,}-sample layout "
                  f"({-(-a.layout // PER_SHARD)} shards; built in {built:.0f} s) | "
                  f"`python bench/farm_scale.py --layout {a.layout}` | {date}: "
                  f"**{secs:.1f} s** wall incl. start-up ({done}) |")
            return 0
        setup = ("from medfake.engine.data.phantoms import PhantomConfig, make_phantom_world\n"
                 "from medfake.engine.diffusion.sd_model import init_model\n"
                 f"make_phantom_world({str(work / 'world')!r}, PhantomConfig(n_public_per_class=1,"
                 " n_train_per_class=2, n_val_per_class=1, n_test_per_class=1))\n"
                 f"init_model('micro', {str(work / 'micro')!r})\n"
                 "from medfake.pipelines.models import load_model\n"   # export once, untimed
                 f"load_model({str(work / 'micro')!r}, {a.backend!r})\n")
        if not (work / "micro").exists():
            subprocess.run([sys.executable, "-c", setup], check=True, env=env,
                           capture_output=True)
        out = work / f"out-{a.images}"
        cmd = _medfake("synth", "--model", str(work / "micro"), "--real",
                       str(work / "world" / "hospital"), "--out", str(out), "--per-class",
                       str(-(-a.images // 3)), "--steps", "1", "--samples-per-shard",
                       str(PER_SHARD), "--batch-size", "64", "--threads", str(a.threads),
                       "--backend", a.backend)
        n = 3 * -(-a.images // 3)
        log: list = []
        t0 = time.perf_counter()
        first = _synth(cmd, env, out, n, a.kill_at, a.every, log, t0)
        second = _synth(cmd, env, out, n, None, a.every, log, t0)
        total = time.perf_counter() - t0
        # images/s between samples, from the first written shard on (start-up excluded)
        # (16 windows from the first written shard to the end; the resume's start-up shows)
        start = max(0, next((i for i, r in enumerate(log) if r[1] > 0), len(log)) - 1)
        step = max(1, -(-(len(log) - start) // 16))
        pts = log[start::step] + ([log[-1]] if (len(log) - 1 - start) % step else [])
        rates = [f"{t:.0f}s:{(b - a_) / (t - s):.0f}" for (s, a_, _), (t, b, _)
                 in itertools.pairwise(pts) if t > s]
        st, _, st_text = _timed(_medfake("synth", "status", str(out)), env)
        stc, _, _ = _timed(_medfake("synth", "status", str(out), "--checksums"), env)
        dc, dc_rss, dc_text = _timed(_medfake("data", "check", str(out)), env)
        clip, _, clip_text = _timed(_medfake(
            "train", "clip", "--stage", "pretrain", "--data", str(out), "--out",
            str(work / "clip"), "--model", "medfake-micro", "--steps", "1", "--batch-size", "32",
            "--workers", "0", "--no-tensorboard", "--log-every", "1", "--resume", "never"), env)
        ok = "shards:" in st_text and "check: OK" in dc_text
        print(json.dumps({"log": log, "first": first, "second": second}, indent=None)[:4000])
        print(f"| farm scale: micro preset, 1 step, {n:,} images ({-(-n // PER_SHARD)} shards), "
              f"SIGKILL at {first['killed_at']} images then resume, {a.threads} threads | "
              f"`python bench/farm_scale.py --images {a.images} --threads {a.threads}` | "
              f"{date}: {n / total:.0f} img/s overall incl. 2 start-ups ({total:.0f} s); "
              f"img/s over time (t:rate) {' '.join(rates)}; writer peak RSS {first.get('n/10')} MB "
              f"at N/10, {second.get('last')} MB at N; synth status {st:.1f} s, --checksums "
              f"{stc:.1f} s; data check {dc:.1f} s (peak RSS {dc_rss} MB); train clip to its "
              f"first step {clip:.1f} s (incl. start-up){'' if ok else ' (CHECK FAILED)'} |")
        if not ok:
            print(st_text[-1500:], dc_text[-1500:], clip_text[-1500:], sep="\n")
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
