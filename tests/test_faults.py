"""Faults: bad samples are skipped with counts and rate-limited warnings (never a crash, never a
silent drop); a full disk gives one clear error with everything written before intact; a
SIGKILL never leaves a partial shard visible."""
from __future__ import annotations

import errno
import io
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from medfake.engine.core import atomic as atomic_mod
from medfake.engine.core.errors import DatasetError, DiskFullError
from medfake.engine.data import writer as writer_mod
from medfake.engine.data.format import Sample
from medfake.engine.data.reader import (
    DatasetInfo,
    SampleValidator,
    SkipLog,
    iter_samples,
    iter_tar_samples,
    load_split,
)
from medfake.engine.data.writer import DatasetWriter
from PIL import Image

NAMES = ["a", "b", "c"]


def _write(root: Path, n: int = 30, per_shard: int = 10) -> Path:
    rng = np.random.default_rng(0)
    with DatasetWriter(root, NAMES, {c: [c] for c in NAMES}, {}, 8, 1, per_shard) as w:
        for i in range(n):
            w.add("train", Sample(f"s{i:03d}", rng.integers(0, 256, (8, 8), dtype=np.uint8),
                                  i % 3, f"cap {i}", {"i": i}))
    return root


def _rewrite_shard(shard: Path, edit) -> None:
    """Rebuild ``shard`` with ``edit(key, ext, data) -> bytes | None`` (None drops a member)."""
    with tarfile.open(shard) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar]
    with tarfile.open(shard, "w") as tar:
        for name, data in members:
            key, _, ext = name.partition(".")
            new = edit(key, ext, data)
            if new is not None:
                info = tarfile.TarInfo(name)
                info.size = len(new)
                tar.addfile(info, io.BytesIO(new))


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def faulty(tmp_path) -> Path:
    """30 samples in 3 shards with 7 bad ones: corrupt PNG, wrong mode, wrong size, missing
    cls, cls out of range, and a shard truncated mid-member (losing its last 2 samples)."""
    root = _write(tmp_path / "ds")
    bad = {"s001": lambda e, d: b"\x89PNG\r\n\x1a\nbroken" if e == "png" else d,
           "s002": lambda e, d: _png(np.zeros((8, 8, 3), np.uint8)) if e == "png" else d,
           "s003": lambda e, d: _png(np.zeros((9, 8), np.uint8)) if e == "png" else d,
           "s004": lambda e, d: None if e == "cls" else d,
           "s015": lambda e, d: b"7" if e == "cls" else d}
    for shard in ("train-000000.tar", "train-000001.tar"):
        _rewrite_shard(root / shard, lambda k, e, d: bad[k](e, d) if k in bad else d)
    last = root / "train-000002.tar"
    with tarfile.open(last) as tar:
        cut = tar.getmember("s028.png").offset_data + 10
    last.write_bytes(last.read_bytes()[:cut])
    return root


def test_bad_samples_are_skipped_counted_and_summarised(faulty, caplog):
    caplog.set_level(logging.WARNING, logger="medfake")
    skips = SkipLog("epoch 1", first=2, every=3600)
    info = DatasetInfo.load(faulty)
    got = list(iter_samples(info.shard_paths("train"), skips, image_size=8, channels=1,
                            n_classes=3))
    assert skips.counts == {"corrupt_png": 1, "wrong_mode": 1, "wrong_size": 1, "missing_cls": 1,
                            "bad_cls": 1, "truncated_tar": 2}
    assert len(got) + skips.n_skipped == 30 and skips.n_ok == len(got) == 23
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 3, warnings  # 2 individual warnings (rate limit), then the summary
    assert "at most every 3600 s" in warnings[1]
    assert warnings[-1] == ("epoch 1: read 23 sample(s), skipped 7 (bad_cls=1, corrupt_png=1, "
                            "missing_cls=1, truncated_tar=2, wrong_mode=1, wrong_size=1)")

    with pytest.raises(DatasetError):
        load_split(faulty, "train")  # the strict default is unchanged
    arr = load_split(faulty, "train", skip_bad=True)
    assert len(arr) == 23 and arr.images.shape == (23, 8, 8)


def test_rate_limit_reports_periodically(caplog):
    caplog.set_level(logging.WARNING, logger="medfake")
    skips = SkipLog("x", first=1, every=0.05)
    for i in range(6):
        skips.skip("corrupt_png", f"k{i}")
        time.sleep(0.03)
    msgs = [r.getMessage() for r in caplog.records]
    assert 2 <= len(msgs) <= 4 and "so far (corrupt_png=" in msgs[-1]


def test_webdataset_pipeline_uses_the_same_counting(faulty):
    import webdataset as wds

    skips = SkipLog("wds")
    validate = SampleValidator(skips, image_size=8, channels=1, n_classes=3)
    urls = DatasetInfo.load(faulty).shard_paths("train")
    ds = (wds.WebDataset(urls, shardshuffle=False, handler=skips.wds_handler, empty_check=False)
          .map(validate).select(lambda s: s is not None))
    got = list(ds)
    assert len(got) == 23 and {s.cls for s in got} == {0, 1, 2}
    assert skips.counts["corrupt_png"] == skips.counts["bad_cls"] == 1
    assert skips.n_skipped >= 6  # the truncated member surfaces through the handler


def _enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_while_writing_shards(tmp_path, monkeypatch):
    root = tmp_path / "ds"
    real_addfile, calls = tarfile.TarFile.addfile, [0]

    def addfile(self, info, fileobj=None):
        calls[0] += 1
        if calls[0] > 2 * 4 * 5:  # two shards of 5 samples x 4 members, then the disk is full
            _enospc()
        return real_addfile(self, info, fileobj)

    monkeypatch.setattr(tarfile.TarFile, "addfile", addfile)
    with pytest.raises(DiskFullError, match="disk full while writing shard train-000002.tar.*"
                                            "every shard written before it is intact") as e:
        _write(root, n=20, per_shard=5)
    assert isinstance(e.value, OSError) and isinstance(e.value, DatasetError)
    assert sorted(p.name for p in root.iterdir()) == ["train-000000.json", "train-000000.tar",
                                                      "train-000001.json", "train-000001.tar"]
    for i in (0, 1):
        m = json.loads((root / f"train-00000{i}.json").read_text())
        assert atomic_mod.sha256_file(root / m["name"]) == m["sha256"] and m["count"] == 5
    monkeypatch.setattr(tarfile.TarFile, "addfile", real_addfile)
    _write(root, n=20, per_shard=5)  # after freeing space the same job completes
    assert DatasetInfo.load(root).verify() == []


def test_disk_full_keeps_old_json_and_checkpoint(tmp_path, monkeypatch):
    from medfake.engine.core.safe_load import load_checkpoint
    from medfake.pipelines import train_generator as tg

    root = _write(tmp_path / "ds")
    before = (root / "dataset.json").read_bytes()
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", _enospc)
    with pytest.raises(DiskFullError, match="dataset.json; the previous version"):
        writer_mod.finalize_dataset(root, NAMES, {}, {"x": 1}, 8, 1)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert (root / "dataset.json").read_bytes() == before and not list(root.glob(".*tmp*"))

    out = tmp_path / "gen"
    out.mkdir()
    tg._save_ckpt(out, {"stage": "unet", "step": 20, "w": torch.ones(3), "_budget": 5})
    real_save = torch.save

    def half_save(obj, f, *a, **k):
        f.write(b"PK\x03\x04partial")
        _enospc()

    monkeypatch.setattr(torch, "save", half_save)
    with pytest.raises(DiskFullError, match="stage unet, step 40.*previous checkpoint is intact"):
        tg._save_ckpt(out, {"stage": "unet", "step": 40, "w": torch.zeros(3)})
    monkeypatch.setattr(torch, "save", real_save)
    ckpt = load_checkpoint(out / tg.CHECKPOINT)
    assert ckpt["step"] == 20 and torch.equal(ckpt["w"], torch.ones(3)) and "_budget" not in ckpt
    assert sorted(p.name for p in out.iterdir()) == [tg.CHECKPOINT]


_FILL_SCRIPT = textwrap.dedent("""
    import json, sys, numpy as np
    from medfake.engine.core.atomic import DiskFullError, sha256_file
    from medfake.engine.data.format import Sample
    from medfake.engine.data.writer import DatasetWriter, list_shards
    root = sys.argv[1]
    rng = np.random.default_rng(0)
    try:
        with DatasetWriter(root, ["a"], {"a": ["a"]}, {}, 64, 1, 20) as w:
            for i in range(100000):
                w.add("train", Sample(f"s{i}", rng.integers(0, 256, (64, 64), dtype=np.uint8),
                                      0, "a", {}))
    except DiskFullError as e:
        shards = list_shards(root, "train")
        ok = all(sha256_file(f"{root}/{s.name}") == s.sha256 for s in shards)
        print(json.dumps({"error": str(e), "shards": len(shards), "intact": ok}))
""")


def test_disk_full_on_a_real_small_filesystem(tmp_path):
    """A 1 MiB tmpfs in a private mount namespace (needs root / unshare; the patched-write
    tests above cover the same paths everywhere)."""
    if not shutil.which("unshare") or os.geteuid() != 0:
        pytest.skip("needs root and unshare for a private tmpfs")
    mnt = tmp_path / "small"
    mnt.mkdir()
    script = tmp_path / "fill.py"
    script.write_text(_FILL_SCRIPT)
    cmd = (f"mount -t tmpfs -o size=1m tmpfs {mnt} && "
           f"{sys.executable} {script} {mnt}/ds")
    r = subprocess.run(["unshare", "-m", "sh", "-c", cmd], capture_output=True, text=True,
                       timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if r.returncode != 0 and "mount" in r.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()[:200]}")
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert "disk full while writing shard" in res["error"], res
    assert res["shards"] >= 3 and res["intact"], res


_KILL_SCRIPT = textwrap.dedent("""
    import sys, numpy as np
    from medfake.engine.data.format import Sample
    from medfake.engine.data.writer import list_shards, write_shard
    root, n_shards = sys.argv[1], int(sys.argv[2])
    done = {s.name for s in list_shards(root, "train")}
    print("ready", flush=True)
    for i in range(n_shards):
        if f"train-{i:06d}.tar" in done:
            continue
        rng = np.random.default_rng(i)
        write_shard(root, "train", i, [Sample(f"s{i}_{j}", rng.integers(0, 256, (48, 48),
                    dtype=np.uint8), 0, "x", {}) for j in range(60)], ["a"])
""")


def test_sigkill_never_leaves_a_visible_partial_shard(tmp_path):
    script = tmp_path / "w.py"
    script.write_text(_KILL_SCRIPT)
    root, n = tmp_path / "ds", 40
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rng = random.Random(0)
    kills = 0
    while kills < 3:
        p = subprocess.Popen([sys.executable, str(script), str(root), str(n)],
                             stdout=subprocess.PIPE, text=True, env=env)
        assert p.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.02, 0.3))
        if p.poll() is not None:
            break
        p.send_signal(signal.SIGKILL)
        p.wait()
        kills += 1
        for m in root.glob("train-*.json"):  # every registered shard matches its manifest
            rec = json.loads(m.read_text())
            assert atomic_mod.sha256_file(root / rec["name"]) == rec["sha256"] and rec["count"] == 60
        for t in root.glob("train-*.tar"):  # every visible tar is complete (a kill between
            assert len(list(iter_tar_samples(str(t)))) == 60  # rename and manifest leaves it
                                                                # unregistered: rewritten on resume
    assert kills == 3, "the writer finished before it could be killed three times"
    subprocess.run([sys.executable, str(script), str(root), str(n)], check=True, env=env,
                   capture_output=True)
    keys = [k for i in range(n)
            for k in json.loads((root / f"train-{i:06d}.json").read_text())["keys"]]
    assert len(keys) == len(set(keys)) == n * 60
    ref = tmp_path / "ref"
    subprocess.run([sys.executable, str(script), str(ref), str(n)], check=True, env=env,
                   capture_output=True)
    for i in range(n):
        name = f"train-{i:06d}.tar"
        assert (root / name).read_bytes() == (ref / name).read_bytes()
