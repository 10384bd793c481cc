"""Synthesis at farm scale: exactly-once shards under SIGKILL, ranks, --extend, status on a
damaged job, the conditioned modes, curation and image formats."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from medfake.engine.core.atomic import sha256_file
from medfake.engine.data.format import Sample
from medfake.engine.data.reader import DatasetInfo, iter_tar_samples, load_split
from medfake.engine.data.writer import write_shard
from medfake.engine.diffusion.inpainting import render_mask, resize_image
from medfake.engine.diffusion.sd_model import init_model
from medfake.engine.synth.plan import (
    PlanMismatchError,
    Segment,
    SynthPlan,
    open_plan,
    plan_samples,
    resolve_rank,
)
from medfake.engine.synth.shard_pool import (
    ShardPool,
    ShardWriter,
    encode_sample,
    tar_header,
)
from medfake.pipelines.cli import main
from medfake.pipelines.synth import SynthConfig, run_job, synth_status, synthesize

# The farm job every subprocess test runs: 36 samples in 9 shards of 4. One thread per stream
# everywhere: byte-identical shards across ranks, restarts and streams are promised for the same
# threads per stream. Across thread counts torch's CPU kernels may round differently (measured
# 2026-12-01 on an AVX2-only AMD EPYC: one pixel of one image differs between 1 and 2 threads).
JOB = dict(per_class=12, steps=3, samples_per_shard=4, batch_size=2, seed=7, backend="torch",
           threads=1)
JOB_ARGS = ["--per-class", "12", "--steps", "3", "--samples-per-shard", "4", "--batch-size", "2",
            "--seed", "7", "--backend", "torch", "--threads", "1"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return init_model("micro", tmp_path_factory.mktemp("model") / "micro", seed=0)


@pytest.fixture(scope="module")
def reference(model_dir, small_world, tmp_path_factory):
    """The farm job, run once uninterrupted on one rank in this process."""
    out = tmp_path_factory.mktemp("ref") / "syn"
    res = run_job(SynthConfig(str(model_dir), str(small_world[1]), str(out), **JOB))
    assert res.complete and res.pool.images == 36 and 0 < res.backend_busy <= 1
    return out


def _cli(model_dir, hospital, out, *extra) -> list[str]:
    return [sys.executable, "-m", "medfake.pipelines.cli", "synth", "--model", str(model_dir),
            "--real", str(hospital), "--out", str(out), *JOB_ARGS, *extra]


def _env(**extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK"))}
    return {**env, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore",
            **extra}


def _tars(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("train-*.tar"))}


def _samples_by_key(out: Path) -> dict[str, dict[str, bytes]]:
    """Every sample's raw members, asserting each key appears once and every tar reads."""
    found: dict[str, dict[str, bytes]] = {}
    for p in sorted(out.glob("train-*.tar")):
        with tarfile.open(p) as tar:
            for m in tar:
                key, _, ext = m.name.partition(".")
                found.setdefault(key, {})
                assert ext not in found[key], f"{key}.{ext} twice"
                found[key][ext] = tar.extractfile(m).read()
    return found


def _visible_shards_intact(out: Path) -> None:
    """Every published shard (manifest present) is complete: checksum and a clean read."""
    for man in out.glob("train-*.json"):
        m = json.loads(man.read_text())
        tar = man.with_suffix(".tar")
        if tar.exists():   # a manifest whose tar was replaced mid-rewrite is not published
            assert sha256_file(tar) == m["sha256"]
            assert [s.key for s in iter_tar_samples(str(tar))] == m["keys"]


def test_plan_is_lazy_partitioned_and_ranks_come_from_launchers():
    params = {"class_names": ["a", "b", "c"], "samples_per_shard": 4, "seed": 7,
              "prompt_templates": {"a": ["x", "y"]}}
    plan = SynthPlan(params, [Segment(0, (0, 0, 0), (5, 5, 5))])
    flat = [s.key for i in range(plan.n_shards) for s in plan.shard_samples(i)]
    cfg = type("C", (), {"per_class": 5, "seed": 7})
    assert flat == [p["key"] for p in plan_samples(cfg, params["class_names"],
                                                   params["prompt_templates"])]
    ranks = [plan.rank_shards(r, 3) for r in range(3)]
    assert sorted(sum(ranks, [])) == list(range(plan.n_shards))
    grown = SynthPlan(params, plan.segments + [Segment(plan.n_shards, (5, 5, 5), (2, 0, 1))])
    assert grown.shard_keys(plan.n_shards) == ["syn_a_000005", "syn_c_000005", "syn_a_000006"]

    r = resolve_rank(2, 4, {})
    assert (r.rank, r.world_size, r.source) == (2, 4, "cli")
    r = resolve_rank(environ={"RANK": "3", "WORLD_SIZE": "8", "TORCHELASTIC_RUN_ID": "x"})
    assert (r.rank, r.world_size, r.source) == (3, 8, "torchrun")
    r = resolve_rank(environ={"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "3",
                              "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_STEP": "2"})
    assert (r.rank, r.world_size, r.source) == (2, 3, "slurm-array")
    r = resolve_rank(environ={"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "2",
                              "RANK": "1", "WORLD_SIZE": "4"})
    assert (r.rank, r.world_size) == (5, 8)
    assert resolve_rank(environ={}).world_size == 1
    with pytest.raises(ValueError, match="outside"):
        resolve_rank(4, 4, {})
    with pytest.raises(ValueError, match="does not map"):
        resolve_rank(environ={"SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_TASK_COUNT": "2"})


def test_sigkill_at_random_points_then_resume_exactly_once(model_dir, small_world, reference,
                                                           tmp_path):
    _, hospital = small_world
    out = tmp_path / "syn"
    rng = random.Random(4)
    for attempt in range(3):
        before = len(list(out.glob("train-*.json")))
        proc = subprocess.Popen(_cli(model_dir, hospital, out), env=_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        # the first attempt may die in start-up; later ones once a new shard is published
        while (attempt and proc.poll() is None and time.monotonic() < deadline
               and len(list(out.glob("train-*.json"))) <= before):
            time.sleep(0.02)
        time.sleep(rng.uniform(0, 0.3) if attempt else rng.uniform(0.5, 3.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if out.exists():
            _visible_shards_intact(out)
    assert not (out / "dataset.json").exists() or synth_status(str(out)).complete
    synthesize(SynthConfig(str(model_dir), str(hospital), str(out), **JOB))  # resume to the end
    assert not list(out.glob(".*tmp-*")), "temporaries of killed runs are cleaned up"
    got = _samples_by_key(out)
    assert len(got) == 36 and all(len(m) == 4 for m in got.values())
    assert _tars(out) == _tars(reference)          # byte-identical to an uninterrupted run
    assert (out / "dataset.json").read_bytes() == (reference / "dataset.json").read_bytes()
    assert synth_status(str(out)).complete


def test_two_concurrent_ranks_equal_one_rank(model_dir, small_world, reference, tmp_path):
    _, hospital = small_world
    out = tmp_path / "syn"
    procs = [subprocess.Popen(_cli(model_dir, hospital, out), env=_env(RANK="0", WORLD_SIZE="2"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE),
             subprocess.Popen(_cli(model_dir, hospital, out),
                              env=_env(SLURM_ARRAY_TASK_ID="1", SLURM_ARRAY_TASK_COUNT="2"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()[-2000:]
        assert "backend busy" in err.decode()
    ref, two = _samples_by_key(reference), _samples_by_key(out)
    assert set(two) == set(ref) and all(two[k] == ref[k] for k in ref)
    assert _tars(out) == _tars(reference)
    assert (out / "dataset.json").read_bytes() == (reference / "dataset.json").read_bytes()


def test_concurrent_streams_write_the_same_bytes(model_dir, small_world, reference, tmp_path):
    """Three streams over one model (batches finishing out of order) give the one-stream
    job's shards byte for byte; the busy fraction is per stream."""
    res = run_job(SynthConfig(str(model_dir), str(small_world[1]), str(tmp_path / "syn"),
                              **{**JOB, "streams": 3, "threads": 3}))
    assert res.complete and res.streams == 3 and 0 < res.backend_busy <= 1
    assert _tars(tmp_path / "syn") == _tars(reference)


def test_sampler_streams_keep_order_bound_work_and_raise():
    import threading

    from medfake.engine.diffusion.streams import SamplerStreams, resolve_streams
    in_flight, peak, lock = [0], [0], threading.Lock()

    def work(sampler, x):
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        time.sleep(0.002 * ((x * 7) % 5))      # later items often finish first
        with lock:
            in_flight[0] -= 1
        if x == 13:
            raise RuntimeError("boom at 13")
        return sampler, x * x

    with SamplerStreams(["a", "b"]) as st:
        got = []
        with pytest.raises(RuntimeError, match="boom at 13"):
            for s, y in st.map(work, range(20)):
                got.append(y)
        assert got == [x * x for x in range(13)] and peak[0] <= 2 and st.busy_seconds > 0
    assert resolve_streams(None, "onnx", "cpu", 2) == 2
    assert resolve_streams(None, "onnx", "cuda", 8) == resolve_streams(None, "torch", "cpu", 2) == 1
    with pytest.raises(ValueError, match="--streams"):
        resolve_streams(0, "onnx", "cpu", 2)
    # never more automatic streams than the job has batches; an explicit count is kept
    assert resolve_streams(None, "onnx", "cpu", 2, n_batches=1) == 1
    assert resolve_streams(None, "onnx", "cpu", 2, n_batches=5) == 2
    assert resolve_streams(3, "onnx", "cpu", 2, n_batches=1) == 3


def test_job_passes_its_batch_count_to_the_stream_choice(model_dir, small_world, tmp_path,
                                                         monkeypatch):
    """6 samples in shards of 4 at batch 4: shards of 4 and 2 samples, one batch each."""
    from medfake.pipelines import synth as synth_mod
    seen = []
    real_load = synth_mod.load_samplers

    def spy(cfg, size, n_batches=None, **kw):
        seen.append(n_batches)
        return real_load(cfg, size, n_batches, **kw)

    monkeypatch.setattr(synth_mod, "load_samplers", spy)
    _, hospital = small_world
    synth_mod.run_job(synth_mod.SynthConfig(str(model_dir), str(hospital), str(tmp_path / "s"),
                                            per_class=2, samples_per_shard=4, batch_size=4,
                                            steps=1, backend="torch"))
    assert seen == [2]


def test_changed_parameters_refused_and_extend_appends(model_dir, small_world, tmp_path, capsys):
    _, hospital = small_world
    out = tmp_path / "syn"

    def args(steps="2", per_class="2", *extra):
        return ["synth", "--model", str(model_dir), "--real", str(hospital), "--out", str(out),
                "--samples-per-shard", "4", "--steps", steps, "--per-class", per_class,
                "--backend", "torch", *extra]

    main(args())
    first = _tars(out)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("train-*.tar")}
    for argv, expected in ((args(steps="3"), "steps: 2 -> 3"), (args(per_class="3"), "--extend")):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        assert expected in capsys.readouterr().err
    with pytest.raises(PlanMismatchError, match="more samples"):
        synthesize(SynthConfig(str(model_dir), str(hospital), str(out), per_class=1, steps=2,
                               samples_per_shard=4, extend=True, backend="torch"))
    main(args("2", "4", "--extend"))
    assert {k: v for k, v in _tars(out).items() if k in first} == first
    assert all(p.stat().st_mtime_ns == stamps[p.name] for p in out.glob("train-*.tar")
               if p.name in stamps)
    plan = json.loads((out / "synth_plan.json").read_text())
    assert plan["per_class"] == 4 and len(plan["segments"]) == 2
    assert plan["segments"][1] == {"first_shard": 2, "start": [2, 2, 2], "count": [2, 2, 2]}
    info = DatasetInfo.load(out)
    assert info.count("train") == 12 and info.verify() == []
    assert sorted(load_split(out, "train").keys) == sorted(
        f"syn_{c}_{i:06d}" for c in info.class_names for i in range(4))
    assert synth_status(str(out)).complete


def test_status_reports_and_repairs_a_damaged_job(model_dir, small_world, reference, tmp_path,
                                                  capsys):
    _, hospital = small_world
    out = tmp_path / "syn"
    shutil.copytree(reference, out)
    (out / "train-000001.tar").unlink()
    data = bytearray((out / "train-000002.tar").read_bytes())
    data[700] ^= 0xFF                                            # same size, wrong bytes
    (out / "train-000002.tar").write_bytes(bytes(data))
    (out / "train-000003.tar").write_bytes((out / "train-000003.tar").read_bytes()[:1500])
    (out / ".train-000004.tar.tmp-otherhost-123").write_bytes(b"partial")
    with pytest.raises(SystemExit) as e:
        main(["synth", "status", str(out), "--world-size", "2", "--checksums"])
    assert e.value.code == 1
    text = capsys.readouterr().out
    assert "6 done, 1 missing, 2 corrupt" in text
    assert "train-000001.tar (manifest without tar" in text
    assert "train-000002.tar (sha256 mismatch)" in text and "train-000003.tar (size" in text
    assert "stray temporary files" in text and "rank 1/2: 2/4 done" in text
    st = synth_status(str(out), checksums=True, remove_corrupt_shards=True)
    assert [s.name for s in st.by_state("missing")] == [f"train-00000{i}.tar" for i in (1, 2, 3)]
    synthesize(SynthConfig(str(model_dir), str(hospital), str(out), **JOB))
    assert _tars(out) == _tars(reference)
    main(["synth", "status", str(out)])
    assert "9 done, 0 missing, 0 corrupt" in capsys.readouterr().out


@pytest.mark.parametrize("mode", ["inpaint", "outpaint", "inpaint-outpaint"])
def test_conditioned_modes_keep_the_real_image_and_record_provenance(model_dir, small_world,
                                                                     tmp_path, mode):
    _, hospital = small_world
    out = synthesize(SynthConfig(str(model_dir), str(hospital), str(tmp_path / mode), mode=mode,
                                 per_real=1, steps=2, samples_per_shard=16, batch_size=8,
                                 backend="torch",
                                 mask="random" if mode == "inpaint" else "lesion"))
    real = load_split(hospital, "train")
    real_by_key = dict(zip(real.keys, real.images))
    syn = load_split(out, "train")
    assert len(syn) == len(real) and syn.images.shape[1:] == (32, 32)
    assert sorted(m["source_key"] for m in syn.metas) == sorted(real.keys)  # each used once
    for img, meta in zip(syn.images, syn.metas):
        assert meta["mode"] == mode and meta["source_key"] in real_by_key
        geom = meta["mask"]["outpaint"] if mode == "inpaint-outpaint" else meta["mask"]
        mask = render_mask(geom, 32, 32)
        known = mask < 0.5
        assert 0 < known.sum() < 32 * 32
        src = real_by_key[meta["source_key"]]
        if mode == "inpaint":
            assert np.array_equal(img[known], src[known])
        else:   # the shrunk real image sits in the canvas at the recorded place
            placed = resize_image(src, geom["h"], geom["w"])
            inner = img[geom["y0"]:geom["y0"] + geom["h"], geom["x0"]:geom["x0"] + geom["w"]]
            if mode == "outpaint":
                assert np.array_equal(inner, placed)
            else:
                keep = render_mask(meta["mask"]["inpaint"], 32, 32)[
                    geom["y0"]:geom["y0"] + geom["h"], geom["x0"]:geom["x0"] + geom["w"]] < 0.5
                assert np.array_equal(inner[keep], placed[keep])
    from medfake.pipelines.data_check import check_dataset
    report = check_dataset(str(hospital), [str(out)])
    assert report.ok, report.text()


def test_curation_records_every_drop(model_dir, small_world, tmp_path):
    from medfake.engine.clip.model import create_clip
    from medfake.engine.core.safe_load import save_weights
    _, hospital = small_world
    weights = tmp_path / "clip.safetensors"
    save_weights(create_clip("medfake-micro")[0].state_dict(), weights)
    out = synthesize(SynthConfig(str(model_dir), str(hospital), str(tmp_path / "syn"),
                                 mode="inpaint", per_class=4, steps=2, samples_per_shard=6,
                                 batch_size=4, backend="torch", mask_scale=(0.1, 0.15),
                                 clip_filter=str(weights),
                                 clip_model="medfake-micro", memorization="pixel",
                                 memorization_threshold=0.024))
    st = synth_status(str(out))
    assert st.complete
    drops = [d for s in st.shards for d in s.manifest["dropped"]]
    kept = [k for s in st.shards for k in s.manifest["keys"]]
    assert len(drops) + len(kept) == 12 and not set(kept) & {d["key"] for d in drops}
    assert {d["filter"] for d in drops} == {"clip", "memorization"}
    for d in drops:
        assert d["reason"] and d["source_key"]
        if d["filter"] == "clip":   # random CLIP weights: most samples are assigned elsewhere
            assert d["clip_predicted"] != d["key"].split("_")[1]
        else:   # a tiny inpainted region: the near-copy of its own source is caught
            assert d["nearest_distance"] < 0.024 and d["nearest_real"] == d["source_key"]
    info = DatasetInfo.load(out)
    assert info.provenance["curation"] == {"dropped": len(drops), "by_filter": {
        f: sum(d["filter"] == f for d in drops) for f in ("clip", "memorization")}}
    if kept:
        for m in load_split(out, "train").metas:
            c = m["curation"]
            assert c["clip_predicted"] == m["class_name"] and c["nearest_distance"] >= 0.024


def test_webp_and_jpg_shards_read_back(model_dir, small_world, tmp_path):
    _, hospital = small_world
    arrays = {}
    for fmt in ("png", "webp", "jpg"):
        out = synthesize(SynthConfig(str(model_dir), str(hospital), str(tmp_path / fmt),
                                     per_class=1, steps=2, image_format=fmt, backend="torch"))
        arrays[fmt] = load_split(out, "train")
        assert DatasetInfo.load(out).verify() == []
    assert arrays["webp"].images.shape == arrays["png"].images.shape == (3, 32, 32)
    assert np.array_equal(arrays["webp"].images, arrays["png"].images)       # lossless
    assert np.abs(arrays["jpg"].images.astype(int) - arrays["png"].images).mean() < 8


def test_shard_writer_equals_write_shard_and_pool_errors_hide_partial_shards(tmp_path):
    rng = np.random.default_rng(0)
    samples = [Sample(f"k{i}", rng.integers(0, 255, (8, 8), dtype=np.uint8), i % 2, f"t{i}",
                      {"i": i}) for i in range(5)]
    write_shard(tmp_path / "a", "train", 0, samples, ["x", "y"])
    (tmp_path / "b").mkdir()
    w = ShardWriter(tmp_path / "b", "train", 0, ["x", "y"])
    for s in samples:
        w.add(s.key, s.cls, encode_sample(s))
    rec = w.finish()
    assert (tmp_path / "b" / "train-000000.tar").read_bytes() == \
        (tmp_path / "a" / "train-000000.tar").read_bytes()
    assert rec.sha256 == json.loads((tmp_path / "a" / "train-000000.json").read_text())["sha256"]
    for name in ("syn_cyst_000001.png", "k" * 99 + ".json", "k" * 120 + ".png", "é.txt"):
        for size in (0, 511, 512, 10 ** 9):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime, info.uname, info.gname = size, 0o444, 0, \
                "medfake", "medfake"
            assert tar_header(name, size) == info.tobuf(tarfile.PAX_FORMAT, "utf-8",
                                                        "surrogateescape")

    def failing(batch):
        raise RuntimeError("curation failed")

    with pytest.raises(RuntimeError, match="curation failed"):
        with ShardPool(tmp_path / "c", "train", ["x", "y"], max_pending=1, curate=failing) as pool:
            for i in range(6):
                pool.submit(0, samples[:2], last=False)
    assert not list((tmp_path / "c").iterdir())           # nothing visible, no temporary left


def test_concurrent_plan_creation_is_write_once(tmp_path):
    params = {"class_names": ["a"], "samples_per_shard": 2, "seed": 0, "steps": 2}
    plans = [open_plan(tmp_path, params, (3,)) for _ in range(2)]
    assert plans[0].to_json() == plans[1].to_json()
    with pytest.raises(PlanMismatchError, match="steps: 2 -> 4"):
        open_plan(tmp_path, {**params, "steps": 4}, (3,))


def test_live_writers_temporaries_are_never_stray_and_publish_never_replaces(tmp_path):
    """A temporary file held by a writer (flock) or owned by a running process of this host is
    live: never listed as stray. Two writers of one shard: identical bytes are accepted,
    different bytes are refused naming this writer, the published shard untouched."""
    from medfake.engine.core.errors import DatasetError
    from medfake.engine.synth.files import (
        _HOST,
        live_temporaries,
        open_locked,
        stray_temporaries,
        temp_name,
    )
    held = open_locked(temp_name(tmp_path / "train-000000.tar"))
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        other = tmp_path / f".train-000001.tar.tmp-{_HOST}-{sleeper.pid}-abcd1234"
        other.write_bytes(b"x")
        dead = tmp_path / ".train-000002.tar.tmp-otherhost-1-abcd1234"
        dead.write_bytes(b"x")
        assert stray_temporaries(tmp_path) == [dead]
        assert sorted(live_temporaries(tmp_path)) == sorted([Path(held.name), other])
    finally:
        sleeper.kill()
        sleeper.wait()
        held.close()
    assert len(stray_temporaries(tmp_path)) == 3 and live_temporaries(tmp_path) == []

    def writer(cls: int) -> ShardWriter:
        w = ShardWriter(tmp_path / "out", "train", 0, ["a", "b"])
        w.add("k0", cls, [("png", b"img"), ("cls", str(cls).encode())])
        return w

    (tmp_path / "out").mkdir()
    first, twin, rival = writer(0), writer(0), writer(1)
    first.finish()
    published = (tmp_path / "out" / "train-000000.tar").read_bytes()
    twin.finish()                                    # identical: accepted
    with pytest.raises(DatasetError, match=r"published by another writer .* while this writer "
                                           r"\(.+:\d+\) wrote different bytes"):
        rival.finish()
    assert (tmp_path / "out" / "train-000000.tar").read_bytes() == published
    assert not list((tmp_path / "out").glob(".*tmp-*"))


def test_duplicate_launch_on_one_rank_never_deletes_a_live_shard(model_dir, small_world,
                                                                 tmp_path):
    """A second run on the same rank and output while another writer is mid-shard (a SLURM
    requeue while the old task lives), deterministic: the live writer's temporary shard
    (flock held) is neither deleted nor rewritten, the run skips it and exits cleanly; once
    that writer is gone a re-run completes the job byte-identical to a single run."""
    from medfake.engine.synth.files import open_locked, temp_name
    _, hospital = small_world
    out = tmp_path / "syn"
    out.mkdir()
    job = {**JOB, "per_class": 4, "threads": 1}           # 12 samples in 3 shards of 4
    live = open_locked(temp_name(out / "train-000001.tar"))
    live.write(b"half a shard")
    try:
        res = run_job(SynthConfig(str(model_dir), str(hospital), str(out), **job))
        assert Path(live.name).exists(), "a live writer's temporary file was deleted"
        assert not res.complete and not (out / "train-000001.tar").exists()
        assert (out / "train-000000.tar").exists() and (out / "train-000002.tar").exists()
        assert synth_status(str(out)).live == [Path(live.name)]
    finally:
        live.close()                                       # that writer dies mid-shard
    assert run_job(SynthConfig(str(model_dir), str(hospital), str(out), **job)).complete
    single = run_job(SynthConfig(str(model_dir), str(hospital), str(tmp_path / "single"), **job))
    assert _tars(out) == _tars(single.out) and len(_tars(out)) == 3
    assert (out / "dataset.json").read_bytes() == (single.out / "dataset.json").read_bytes()
    assert not list(out.glob(".*tmp-*"))
