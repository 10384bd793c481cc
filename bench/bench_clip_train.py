"""`medfake train clip` vs open_clip's own trainer, side by side on the same machine.

Both trainers get the same model config (a medfake preset), shards, batch size, precision
(fp32), learning-rate schedule, gradient clipping, data workers and threads
(``OMP_NUM_THREADS``), and run alternately (``--rounds``, order flipped every round). Each
reports its own step timings: medfake's ``train_log.jsonl`` (interval wall time and time
waiting for data) and open_clip_train's log lines (``Data (t)``, ``Batch (t)``, averaged since
the previous line). Steps up to ``--skip`` are start-up and are left out. Printed: samples/s
and data-stall fraction (time waiting for the next batch / wall time) per run, the ratio of
each round's two runs (adjacent in time, so they share the machine's load) and their median. The peer runs in its own environment (see ``peer_open_clip.py``).

    python bench/bench_clip_train.py [--threads 1] [--steps 40] [--rounds 2] [--json FILE]

Shards default to a phantom world's public corpus (3,000 captioned 32x32 images, 6 shards) in
the medfake cache. Not a pytest suite: ``bench/run.py`` keeps its figures beside the table.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

PEER_LINE = re.compile(r"Train Epoch: \d+ \[\s*(\d+)/\d+ .*?Data \(t\): ([\d.]+) "
                       r"Batch \(t\): ([\d.]+)")


def default_shards() -> Path:
    from medfake.engine.core.paths import cache_dir
    from medfake.engine.data.phantoms import PhantomConfig, make_phantom_world
    world = cache_dir("bench", "clip-world")
    if not (world / "public" / "dataset.json").exists():
        make_phantom_world(world, PhantomConfig())
    return world / "public"


def steady(records: list[tuple[int, int, float, float]], skip: int, batch: int) -> dict:
    """(samples/s, stall fraction) over records (step, n_steps, wall s, data-wait s) after
    step ``skip``."""
    rows = [r for r in records if r[0] - r[1] >= skip]
    if not rows:
        raise RuntimeError(f"no timing records after step {skip}: {records}")
    wall = sum(r[2] for r in rows)
    return {"samples_per_s": sum(r[1] for r in rows) * batch / wall,
            "data_stall": sum(r[3] for r in rows) / wall, "steps_timed": sum(r[1] for r in rows)}


def run_medfake(a: argparse.Namespace, shards: Path, tmp: Path, env: dict,
                extra: tuple[str, ...] = ()) -> dict:
    out = tmp / f"medfake-{time.time_ns()}"
    cmd = [sys.executable, "-m", "medfake.pipelines.cli", "train", "clip", "--stage", "pretrain",
           "--data", str(shards), "--out", str(out), "--model", a.model,
           "--batch-size", str(a.batch), "--steps", str(a.steps), "--lr", "5e-4",
           "--workers", str(a.workers), "--precision", "fp32", "--augment", "openclip",
           "--checkpoint-every", str(a.steps), "--log-every", str(a.log_every),
           "--no-tensorboard", *extra]
    t0 = time.time()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.time() - t0
    if res.returncode != 0:
        raise RuntimeError(f"medfake train clip failed:\n{res.stderr[-3000:]}")
    records, prev = [], 0
    for line in (out / "train_log.jsonl").read_text().splitlines():
        r = json.loads(line)
        records.append((r["step"], r["step"] - prev, r["interval_s"],
                        r["data_stall"] * r["interval_s"]))
        prev = r["step"]
    return {**steady(records, a.skip, a.batch), "process_wall_s": round(wall, 1)}


def run_peer(a: argparse.Namespace, shards: Path, tmp: Path, env: dict) -> dict:
    from peer_open_clip import peer_command, peer_env
    n = len(list(shards.glob("train-*.tar")))
    args = ["--dataset-type", "webdataset",
            "--train-data", str(shards / f"train-{{000000..{n - 1:06d}}}.tar"),
            "--train-num-samples", str(a.steps * a.batch), "--csv-img-key", "png",
            "--csv-caption-key", "txt", "--model", a.model, "--batch-size", str(a.batch),
            "--epochs", "1", "--workers", str(a.workers), "--device", "cpu",
            "--precision", "fp32", "--lr", "5e-4", "--wd", "0.1", "--warmup", "50",
            "--grad-clip-norm", "1.0", "--seed", "0", "--save-frequency", "0",
            "--log-every-n-steps", str(a.log_every), "--logs", str(tmp / "peer-logs"),
            "--name", f"peer-{time.time_ns()}"]
    t0 = time.time()
    res = subprocess.run(peer_command(args), env=peer_env(env), capture_output=True, text=True)
    wall = time.time() - t0
    if res.returncode != 0:
        raise RuntimeError(f"open_clip_train failed:\n{res.stderr[-3000:]}")
    records, prev = [], 0
    for m in PEER_LINE.finditer(res.stdout + res.stderr):
        step = int(m.group(1)) // a.batch
        if step == prev:
            continue
        k = step - prev
        records.append((step, k, k * float(m.group(3)), k * float(m.group(2))))
        prev = step
    return {**steady(records, a.skip, a.batch), "process_wall_s": round(wall, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="dataset dir with train shards (default: phantom corpus)")
    p.add_argument("--model", default="medfake-tiny")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--skip", type=int, default=10, help="start-up steps left out")
    p.add_argument("--log-every", type=int, default=5)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS for both")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", help="also write the figures here")
    p.add_argument("--baseline-deepspeed-zero", type=int, choices=[1, 2, 3],
                   help="instead of open_clip_train, compare medfake's default single-process "
                   "engine (candidate) with medfake --deepspeed --zero N in one process "
                   "(baseline): DeepSpeed's overhead")
    a = p.parse_args(argv)
    shards = Path(a.data) if a.data else default_shards()
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "MKL_NUM_THREADS": str(a.threads)}
    baseline = (f"medfake --deepspeed --zero {a.baseline_deepspeed_zero} (1 process)"
                if a.baseline_deepspeed_zero else "open_clip_train")
    runs: dict[str, list[dict]] = {"medfake": [], "open_clip_train": []}  # baseline's key
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        for r in range(a.rounds):
            order = ["medfake", "open_clip_train"][::1 if r % 2 == 0 else -1]
            for who in order:
                if who == "medfake":
                    res = run_medfake(a, shards, tmp, env)
                elif a.baseline_deepspeed_zero:
                    res = run_medfake(a, shards, tmp, env, ("--deepspeed", "--zero",
                                                            str(a.baseline_deepspeed_zero)))
                else:
                    res = run_peer(a, shards, tmp, env)
                runs[who].append(res)
                print(f"round {r} {who if who == 'medfake' else baseline:16s} "
                      f"{res['samples_per_s']:7.1f} samples/s  "
                      f"data stall {100 * res['data_stall']:5.1f}%  "
                      f"({res['steps_timed']} steps timed, process {res['process_wall_s']} s)",
                      flush=True)

    def median(xs: list[float]) -> float:
        xs = sorted(xs)
        return (xs[(len(xs) - 1) // 2] + xs[len(xs) // 2]) / 2

    def med(who: str, key: str) -> float:
        return median([x[key] for x in runs[who]])

    # each round's two runs are adjacent in time, so their ratio shares the machine's load
    ratios = [m["samples_per_s"] / p["samples_per_s"]
              for m, p in zip(runs["medfake"], runs["open_clip_train"])]
    summary = {"config": {k: v for k, v in vars(a).items() if k != "json"},
               "shards": str(shards), "runs": runs, "round_ratios": ratios,
               "ratio_median": median(ratios),
               "medfake_data_stall": med("medfake", "data_stall"),
               "peer_data_stall": med("open_clip_train", "data_stall")}
    print(f"per-round ratios: {', '.join(f'{r:.2f}' for r in ratios)}")
    print(f"| CLIP pretraining samples/s ({a.model}, batch {a.batch}, fp32, {a.workers} worker, "
          f"{a.threads} thread(s), median of {a.rounds} rounds) | medfake train clip: "
          f"{med('medfake', 'samples_per_s'):.1f}/s, data stall "
          f"{100 * summary['medfake_data_stall']:.1f}% | {baseline}: "
          f"{med('open_clip_train', 'samples_per_s'):.1f}/s, data stall "
          f"{100 * summary['peer_data_stall']:.1f}% | **{summary['ratio_median']:.2f}x** "
          f"(rounds {min(ratios):.2f}-{max(ratios):.2f}) |")
    if a.json:
        Path(a.json).write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
