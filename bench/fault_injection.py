"""Fault injection: SIGKILL synthesis and generator training at random points, resume, verify.

For each job an uninterrupted reference run is timed first: T, its wall time after the
process has imported its libraries. Then the same job is started again and again on one output
directory, each attempt killed with SIGKILL after a delay drawn uniformly from [0, T] counted
from the end of its imports (so kills land in data and model loading, generation or training
steps, shard and checkpoint writes and final saves alike). When an attempt completes before
its kill, that round ends and the next round starts in a fresh directory, until ``--kills``
kills have landed; every round ends with one uninterrupted run. After every kill the visible
output is checked (registered shards match their sha256; every visible tar parses). For
every round:

- synthesis: 0 lost keys, 0 duplicated keys, 0 partial shards, every shard byte-identical to
  the reference, and ``medfake data check`` passes;
- training: every tensor of the final UNet, VAE and text encoder equals the reference bitwise.

Usage: ``python bench/fault_injection.py [--kills 20] [--seed 0] [--workdir DIR] [--json FILE]``.
Prints a Markdown summary. Run it with ``nice -n 10`` on a shared machine: it uses one thread.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import json, sys
import torch
torch.set_num_threads(1)
kind, args = sys.argv[1], json.loads(sys.argv[2])
from medfake.pipelines.synth import SynthConfig, synthesize
from medfake.pipelines.train_generator import GeneratorTrainConfig, train_generator
print("ready", flush=True)
if kind == "synth":
    synthesize(SynthConfig(**args))
else:
    cfg = GeneratorTrainConfig.profile("test", **args["cfg"])
    train_generator(args["corpus"], args["out"], cfg)
"""


def _env(workdir: Path) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MEDFAKE_CACHE": str(workdir / "cache"),
            "TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore"}


def _start(kind: str, args: dict, workdir: Path) -> subprocess.Popen:
    """Start a job and return once it has imported everything (it printed ``ready``)."""
    err = open(workdir / "child_stderr.txt", "wb")  # a file: a full pipe would block the child
    try:
        p = subprocess.Popen([sys.executable, "-c", CHILD, kind, json.dumps(args)],
                             stdout=subprocess.PIPE, stderr=err, env=_env(workdir))
    finally:
        err.close()
    if p.stdout.readline().strip() != b"ready":
        p.wait()
        raise RuntimeError(f"{kind} failed to start:\n{_stderr_tail(workdir)}")
    return p


def _stderr_tail(workdir: Path) -> str:
    return (workdir / "child_stderr.txt").read_text(errors="replace")[-3000:]


def _run_to_end(kind: str, args: dict, workdir: Path) -> float:
    """Run a job uninterrupted; return its working time (after start-up imports)."""
    p = _start(kind, args, workdir)
    t0 = time.perf_counter()
    if p.wait() != 0:
        raise RuntimeError(f"{kind} failed:\n{_stderr_tail(workdir)}")
    return time.perf_counter() - t0


def _visible_state(out: Path) -> dict:
    """Check what a killed job left visible; return counts for the summary."""
    from medfake.engine.core.atomic import sha256_file
    from medfake.engine.core.errors import DatasetError
    from medfake.engine.data.reader import iter_tar_samples

    registered = bad = unregistered = 0
    for m in sorted(out.glob("train-*.json")):
        rec = json.loads(m.read_text())
        tar = out / rec["name"]
        if tar.exists():
            registered += 1
            bad += sha256_file(tar) != rec["sha256"]
    for tar in sorted(out.glob("train-*.tar")):
        if not tar.with_suffix(".json").exists():
            unregistered += 1
        try:
            list(iter_tar_samples(str(tar)))
        except DatasetError:
            bad += 1
    return {"registered": registered, "partial_visible": bad, "unregistered": unregistered,
            "tmp_files": len(list(out.glob(".*.tmp*")))}


def _chaos(kind: str, make_args, base: Path, workdir: Path, t_ref: float, kills: int,
           rng: random.Random, probe, compare) -> dict:
    """Kill attempts (delay ~ U[0, t_ref] after start-up) until ``kills`` kills landed. When
    an attempt completes before its kill, that round is finished and verified and a new round
    starts in a fresh directory; every round ends with an uninterrupted run and ``compare``."""
    landed = attempts = rounds = partial_seen = 0
    log, verdicts = [], []
    while landed < kills:
        rounds += 1
        out = base / f"round{rounds}"
        args = make_args(out)
        while landed < kills:
            attempts += 1
            delay = rng.uniform(0.0, t_ref)
            p = _start(kind, args, workdir)
            try:
                if p.wait(timeout=delay) != 0:
                    raise RuntimeError(f"{kind} attempt failed:\n{_stderr_tail(workdir)}")
                log.append({"round": rounds, "delay": round(delay, 2), "killed": False})
                break
            except subprocess.TimeoutExpired:
                p.send_signal(signal.SIGKILL)
                p.wait()
                landed += 1
            state = probe(out)
            partial_seen += state.get("partial_visible", 0)
            log.append({"round": rounds, "delay": round(delay, 2), "killed": True, **state})
        _run_to_end(kind, args, workdir)
        attempts += 1
        verdicts.append(compare(out))
    merged = {k: sum(v[k] for v in verdicts) for k in verdicts[0] if k != "data_check_ok"}
    if "data_check_ok" in verdicts[0]:
        merged["data_check_ok"] = all(v["data_check_ok"] for v in verdicts)
    return {"kills": landed, "attempts": attempts, "rounds": rounds,
            "partial_visible_after_kills": partial_seen, "log": log, **merged}


def _synth_probe(out: Path) -> dict:
    return _visible_state(out) if out.exists() else {"registered": 0, "partial_visible": 0}


def _train_probe(out: Path) -> dict:
    from medfake.engine.core.safe_load import load_checkpoint

    ck = out / "checkpoint.pt"
    if not ck.exists():
        return {"checkpoint": None, "marker": (out / "medfake_train.json").exists()}
    c = load_checkpoint(ck)  # a torn checkpoint would raise here
    return {"checkpoint": f"{c['stage']}:{c['step']}"}


def _compare_synth(ref: Path, out: Path) -> dict:
    from medfake.pipelines.data_check import check_dataset

    ref_m = {p.name: json.loads(p.read_text()) for p in ref.glob("train-*.json")}
    out_m = {p.name: json.loads(p.read_text()) for p in out.glob("train-*.json")}
    ref_keys = [k for m in ref_m.values() for k in m["keys"]]
    out_keys = [k for m in out_m.values() for k in m["keys"]]
    state = _visible_state(out)
    report = check_dataset(out)
    if not report.ok:
        print(report.text(), file=sys.stderr)
    return {"shards": len(ref_m), "samples": len(ref_keys),
            "lost": len(set(ref_keys) - set(out_keys)),
            "duplicated": len(out_keys) - len(set(out_keys)),
            "partial": state["partial_visible"] + state["unregistered"],
            "identical_shards": sum((ref / n).read_bytes() == (out / n).read_bytes()
                                    for n in ref_m if (out / n).exists()),
            "leftover_tmp_files": state["tmp_files"], "data_check_ok": report.ok}


def _compare_weights(ref: Path, out: Path) -> dict:
    import torch
    from safetensors.torch import load_file

    n = differ = 0
    max_abs = 0.0
    for comp in ("unet", "vae", "text_encoder"):
        for f in sorted((ref / comp).glob("*.safetensors")):
            a, b = load_file(f), load_file(out / comp / f.name)
            for k in a:
                n += 1
                if not torch.equal(a[k], b[k]):
                    differ += 1
                    max_abs = max(max_abs, (a[k].double() - b[k].double()).abs().max().item())
    return {"tensors": n, "tensors_differing": differ, "max_abs_diff": max_abs}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20, help="kills per job")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", help="default: a temporary directory")
    ap.add_argument("--json", help="also write the results as JSON here")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(a.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        os.environ.update({k: v for k, v in _env(work).items() if k != "PYTHONWARNINGS"})
        from medfake.engine.data.phantoms import PhantomConfig, make_phantom_world
        from medfake.engine.diffusion.sd_model import init_model

        public, hospital = make_phantom_world(work / "world", PhantomConfig(
            n_public_per_class=60, n_train_per_class=8, n_val_per_class=2, n_test_per_class=2,
            samples_per_shard=64))
        model = init_model("micro", work / "model", seed=0)
        rng = random.Random(a.seed)
        results = {}

        synth = lambda out: {"model_dir": str(model), "real_dataset": str(hospital),  # noqa: E731
                             "out_dir": str(out), "per_class": 40, "steps": 12, "batch_size": 4,
                             "samples_per_shard": 8, "backend": "torch"}
        ref = work / "synth_ref"
        t_ref = _run_to_end("synth", synth(ref), work)
        chaos = _chaos("synth", synth, work / "synth_chaos", work, t_ref, a.kills, rng,
                       _synth_probe, lambda out: _compare_synth(ref, out))
        results["synthesis"] = {"reference_seconds": round(t_ref, 1), **chaos}

        train = lambda out: {"corpus": str(public), "out": str(out),  # noqa: E731
                             "cfg": {"checkpoint_every": 5}}
        ref = work / "train_ref"
        t_ref = _run_to_end("train", train(ref), work)
        chaos = _chaos("train", train, work / "train_chaos", work, t_ref, a.kills, rng,
                       _train_probe, lambda out: _compare_weights(ref, out))
        results["training"] = {"reference_seconds": round(t_ref, 1), **chaos}
    _print(results, a)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1) + "\n")
    s, t = results["synthesis"], results["training"]
    ok = (s["lost"] == s["duplicated"] == s["partial"] == s["partial_visible_after_kills"] == 0
          and s["identical_shards"] == s["shards"] and s["data_check_ok"]
          and t["tensors_differing"] == 0)
    return 0 if ok else 1


def _progressed(log: list[dict], field: str) -> int:
    """Kills that landed after the killed attempt had made durable progress."""
    n, prev = 0, {}
    for e in log:
        before = prev.get(e["round"])
        if e.get("killed") and e.get(field) not in (None, 0, before):
            n += 1
        prev[e["round"]] = e.get(field, before)
    return n


def _print(r: dict, a: argparse.Namespace) -> None:
    s, t = r["synthesis"], r["training"]
    mid_shard = sum(1 for e in s["log"] if e.get("killed") and e.get("tmp_files"))
    stages = sorted({e.get("checkpoint") or "none" for e in t["log"] if e.get("killed")})
    s_prog = _progressed(s["log"], "registered")
    t_prog = _progressed(t["log"], "checkpoint")
    synth_row = [
        f"synthesis ({s['samples'] // s['rounds']} images, {s['shards'] // s['rounds']} shards, "
        f"micro model)",
        f"{s['kills']} ({s_prog} after the attempt had written shards; {mid_shard} mid-shard)",
        f"{s['attempts']} in {s['rounds']} round(s)", f"{s['reference_seconds']} s",
        f"lost {s['lost']}, duplicated {s['duplicated']}, partial {s['partial']} (visible after "
        f"any kill: {s['partial_visible_after_kills']}); byte-identical shards "
        f"{s['identical_shards']}/{s['shards']}; data check "
        f"{'OK' if s['data_check_ok'] else 'FAILED'}; leftover temp files "
        f"{s['leftover_tmp_files']}"]
    train_row = [
        "generator training (test profile, checkpoint every 5 steps)",
        f"{t['kills']} ({t_prog} after the attempt had advanced the checkpoint)",
        f"{t['attempts']} in {t['rounds']} round(s)", f"{t['reference_seconds']} s",
        f"tensors differing from the uninterrupted run: {t['tensors_differing']} of "
        f"{t['tensors']} (max abs diff {t['max_abs_diff']:g}); checkpoints seen after kills: "
        f"{', '.join(stages)}"]
    print(f"\n## Fault injection (`python bench/fault_injection.py --kills {a.kills} "
          f"--seed {a.seed}`)\n")
    print("| job | SIGKILLs | attempts | reference run (after imports) | result |")
    print("|---|---|---|---|---|")
    for row in (synth_row, train_row):
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    sys.exit(main())
