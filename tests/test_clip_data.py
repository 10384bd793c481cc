"""CLIP data streaming: exact resume, rank/worker splits with uneven shards, mixing, bad samples."""
from __future__ import annotations

import io
import itertools
import logging
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from medfake.engine.clip.data import (ClipStream, StreamConfig, StreamPosition, augment_batch,
                                      build_augment, load_sources, stream_loader)
from medfake.engine.clip.model import create_clip, image_stats
from medfake.engine.data.writer import DatasetWriter
from medfake.engine.data.format import Sample

CLASSES = ["cyst", "metastasis", "hemangioma"]
TEMPLATES = {c: [f"a CT image of a liver {c}", f"abdominal CT showing a liver {c}"]
             for c in CLASSES}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_dataset(root: Path, n: int, prefix: str, per_shard: int = 16) -> Path:
    """``n`` captioned 32x32 samples, ``per_shard`` per shard (the last shard gets the rest)."""
    rng = np.random.default_rng(len(prefix) + n)
    with DatasetWriter(root, CLASSES, TEMPLATES, {"source": "test"}, 32,
                       samples_per_shard=per_shard) as w:
        for i in range(n):
            c = i % 3
            w.add("train", Sample(f"{prefix}{i:04d}", rng.integers(0, 255, (32, 32), np.uint8),
                                  c, TEMPLATES[CLASSES[c]][i % 2]))
    return root


@pytest.fixture(scope="module")
def model_bits():
    model, _, _, tok = create_clip("medfake-micro")
    return image_stats(model), tok


@pytest.fixture(scope="module")
def uneven(tmp_path_factory):
    """37 samples in shards of 16, 16 and 5."""
    return write_dataset(tmp_path_factory.mktemp("uneven"), 37, "u")


def take(it, n):
    return list(itertools.islice(it, n))


def test_resume_mid_stream_is_exact(tmp_path, uneven, model_bits):
    """A stream rebuilt from the position after batch 3 yields batches 4.. exactly, with two
    mixed sources, a shuffle buffer, skin augmentation and two DataLoader workers."""
    small = write_dataset(tmp_path / "small", 20, "m", per_shard=8)
    sources = load_sources([uneven], [f"{small}:0.5"], "train")
    stats, tok = model_bits
    for workers in (0, 2):
        cfg = StreamConfig(batch_size=4, seed=3, shuffle_buffer=8, workers=workers,
                           augment="skin")
        pos = StreamPosition(max(1, workers))
        full = take(stream_loader(sources, cfg, stats, tok, 0, 1, pos), 7)
        mid = StreamPosition(max(1, workers))
        for _, _, info in full[:3]:
            mid.update(info)
        mid = StreamPosition.from_state_dict(mid.state_dict())  # as saved in a checkpoint
        resumed = take(stream_loader(sources, cfg, stats, tok, 0, 1, mid), 4)
        for (xa, ta, ia), (xb, tb, ib) in zip(full[3:], resumed):
            assert ia["keys"] == ib["keys"]
            assert torch.equal(xa, xb) and torch.equal(ta, tb)
        assert {k.split("/")[0] for _, _, i in full for k in i["keys"]} == {uneven.name, "small"}


def test_uneven_shards_split_by_node_equal_batches(uneven, model_bits):
    """Two ranks over shards of 16/16/5: each pass splits the reshuffled shard list by node,
    disjoint and complete; both ranks stream as many full batches as asked although their
    shares differ (the smaller share wraps into its next pass: no rank runs dry, no hang)."""
    sources = load_sources([uneven], [], "train")
    stats, tok = model_bits
    cfg = StreamConfig(batch_size=4, seed=0, shuffle_buffer=0, workers=1)
    streams = [ClipStream(sources, cfg, stats, tok, rank=r, world_size=2) for r in (0, 1)]
    assert streams[0].sample_split == [False]
    for p in range(4):
        parts = [s._pass_urls(0, slot=r, role=0, p=p) for r, s in enumerate(streams)]
        assert [len(parts[0]), len(parts[1])] == [2, 1]
        assert sorted(parts[0] + parts[1]) == sorted(sources[0].urls)
    batches = [take(s.iter_role(0), 12) for s in streams]  # 48 samples > either rank's share
    assert [len(b) for b in batches] == [12, 12]
    assert all(x.shape == (4, 3, 32, 32) for b in batches for x, _, _ in b)
    assert min(b[-1][2]["state"]["passes"][0][0] for b in batches) >= 1


def test_fewer_shards_than_slots_falls_back_to_sample_split(uneven, model_bits, caplog):
    """3 shards for 2 ranks x 2 workers: every slot reads every shard and keeps every 4th
    sample; the 4 slots of one pass partition all 37 samples."""
    sources = load_sources([uneven], [], "train")
    stats, tok = model_bits
    cfg = StreamConfig(batch_size=1, seed=0, shuffle_buffer=0, workers=2)
    with caplog.at_level(logging.WARNING):
        streams = [ClipStream(sources, cfg, stats, tok, rank=r, world_size=2) for r in (0, 1)]
    assert streams[0].sample_split == [True] and "every slot reads every shard" in caplog.text
    seen = []
    for r, s in enumerate(streams):
        for role in (0, 1):
            keys = []
            for _, _, info in s.iter_role(role):
                if info["state"]["passes"][0][0] > 0:
                    break  # first record of the next pass
                keys += info["keys"]
            seen.append(keys)
    flat = [k for keys in seen for k in keys]
    assert len(flat) == len(set(flat)) == 37


def test_mix_weights_resampled_and_deterministic(tmp_path, model_bits):
    a = write_dataset(tmp_path / "synthetic", 64, "a")
    b = write_dataset(tmp_path / "real", 16, "b")
    sources = load_sources([], [f"{a}:10", f"{b}:1"], "train")
    stats, tok = model_bits
    cfg = StreamConfig(batch_size=16, seed=1, shuffle_buffer=32, workers=0, augment="none",
                       resampled=True)
    keys = [k for _, _, i in take(ClipStream(sources, cfg, stats, tok).iter_role(0), 40)
            for k in i["keys"]]
    share = sum(k.startswith("real/") for k in keys) / len(keys)
    assert abs(share - 1 / 11) < 0.03
    again = [k for _, _, i in take(ClipStream(sources, cfg, stats, tok).iter_role(0), 40)
             for k in i["keys"]]
    assert again == keys


def test_corrupt_samples_skipped_counted_and_logged(tmp_path, model_bits, caplog):
    root = write_dataset(tmp_path / "bad", 20, "c", per_shard=10)
    shard = root / "train-000000.tar"
    members = []
    with tarfile.open(shard) as t:
        for m in t.getmembers():
            members.append((m, t.extractfile(m).read()))
    with tarfile.open(shard, "w") as t:
        for m, data in members:
            if m.name == "c0001.png":
                data = b"not a png"
            if m.name == "c0002.txt":
                data = b""
            m.size = len(data)
            t.addfile(m, io.BytesIO(data))
    sources = load_sources([root], [], "train")
    stats, tok = model_bits
    cfg = StreamConfig(batch_size=6, seed=0, shuffle_buffer=0, workers=0, augment="none")
    with caplog.at_level(logging.WARNING):
        batches = take(ClipStream(sources, cfg, stats, tok).iter_role(0), 3)
    state = batches[-1][2]["state"]
    assert state["skips"] == {"corrupt_png": 1, "missing_txt": 1}
    keys = [k for _, _, i in batches for k in i["keys"]]
    assert "bad/c0001" not in keys[:18] and "bad/c0002" not in keys[:18]
    assert "corrupt_png" in caplog.text and "missing_txt" in caplog.text


def test_augmentation_is_seeded_per_sample_and_leaves_caller_rng_alone():
    imgs = [torch.randint(0, 255, (1, 32, 32), dtype=torch.uint8) for _ in range(3)]
    aug = build_augment("skin", 32)
    torch.manual_seed(7)
    before = torch.rand(3)
    torch.manual_seed(7)
    a = augment_batch(imgs, [1, 2, 3], aug)
    after = torch.rand(3)
    assert torch.equal(before, after)
    assert torch.equal(a, augment_batch(imgs, [1, 2, 3], aug))
    assert torch.equal(a[1:], augment_batch(imgs[1:], [2, 3], aug))  # independent of neighbours
    assert not torch.equal(a[0], imgs[0])


def _write_format(root: Path, fmt: str, n: int = 24, per_shard: int = 8, size: int = 32,
                  listed_size: int = 32) -> Path:
    """``n`` grayscale samples written as ``synth --format fmt`` writes them (ShardWriter)."""
    from medfake.engine.data.writer import finalize_dataset
    from medfake.engine.synth.shard_pool import ShardWriter, encode_sample
    rng = np.random.default_rng(5)
    root.mkdir(parents=True)
    for s in range(-(-n // per_shard)):
        w = ShardWriter(root, "train", s, CLASSES, fmt)
        for i in range(s * per_shard, min(n, (s + 1) * per_shard)):
            smp = Sample(f"{fmt}{i:04d}", rng.integers(0, 255, (size, size), np.uint8), i % 3,
                         TEMPLATES[CLASSES[i % 3]][0])
            w.add(smp.key, smp.cls, encode_sample(smp, fmt))
        w.finish()
    finalize_dataset(root, CLASSES, TEMPLATES, {"source": "test"}, listed_size, 1)
    return root


@pytest.mark.parametrize("fmt", ["webp", "jpg"])
def test_every_synth_format_is_readable_by_every_reader(tmp_path, model_bits, fmt):
    """CLIP stream, load_split (classifiers, quality, memorization), data check and stock
    webdataset all read webp and jpg shards (the CLIP stream used to skip them all and spin)."""
    import webdataset as wds
    from medfake.engine.data.reader import load_split
    from medfake.pipelines.data_check import check_dataset
    root = _write_format(tmp_path / fmt, fmt)
    stats, tok = model_bits
    cfg = StreamConfig(batch_size=8, seed=0, shuffle_buffer=0, workers=0, augment="none")
    batches = take(ClipStream(load_sources([root], [], "train"), cfg, stats, tok).iter_role(0), 3)
    assert batches[-1][2]["state"]["skips"] == {}
    assert len({k for _, _, i in batches for k in i["keys"]}) == 24
    arrays = load_split(root, "train", skip_bad=True)
    assert arrays.images.shape == (24, 32, 32)
    report = check_dataset(root)
    assert report.ok, report.text()
    urls = [str(p) for p in sorted(root.glob("train-*.tar"))]
    got = [s for s in wds.WebDataset(urls, shardshuffle=False).decode("l")]
    assert len(got) == 24 and all(np.asarray(s[fmt]).shape == (32, 32) for s in got)


def test_a_stream_that_skips_a_whole_shard_stops_with_one_error(tmp_path, model_bits):
    """16 px images in a dataset that says 32: every sample is skipped; one clear error instead
    of an endless spin (the old stream never returned)."""
    from medfake.engine.core.errors import DatasetError
    root = _write_format(tmp_path / "wrong", "png", size=16, listed_size=32)
    stats, tok = model_bits
    cfg = StreamConfig(batch_size=4, seed=0, shuffle_buffer=0, workers=0, augment="none")
    with pytest.raises(DatasetError, match=r"every sample of shard train-00000\d\.tar was "
                                           r"skipped \(wrong_size="):
        take(ClipStream(load_sources([root], [], "train"), cfg, stats, tok).iter_role(0), 1)
    cfg = StreamConfig(batch_size=4, seed=0, shuffle_buffer=0, workers=0, augment="none",
                       max_skip_run=5)
    with pytest.raises(DatasetError, match="the last 5 records were all skipped"):
        take(ClipStream(load_sources([root], [], "train"), cfg, stats, tok).iter_role(0), 1)


def test_resume_seeks_to_its_window_instead_of_rereading_the_pass(tmp_path, model_bits,
                                                                  monkeypatch):
    """8 shards of 8, windows of 2 shards: resuming after 10 batches of 4 (record 40, window
    2) reads only that window's 2 shards before its first batch, and equals the full stream."""
    root = write_dataset(tmp_path / "seek", 64, "s", per_shard=8)
    sources = load_sources([root], [], "train")
    stats, tok = model_bits
    cfg = StreamConfig(batch_size=4, seed=2, shuffle_buffer=16, workers=0, augment="none")
    full = take(ClipStream(sources, cfg, stats, tok).iter_role(0), 14)
    state = full[9][2]["state"]
    assert state["passes"][0][:3] == [0, 40, 2]
    read: list[str] = []
    orig = ClipStream._read_window
    monkeypatch.setattr(ClipStream, "_read_window",
                        lambda self, si, slot, urls, h: read.extend(urls) or
                        orig(self, si, slot, urls, h))
    stream = ClipStream(sources, cfg, stats, tok, states={0: state}).iter_role(0)
    first = next(stream)
    assert len(read) == 2
    resumed = [first] + take(stream, 3)
    for (xa, ta, ia), (xb, tb, ib) in zip(full[10:], resumed):
        assert ia["keys"] == ib["keys"] and torch.equal(xa, xb) and torch.equal(ta, tb)
