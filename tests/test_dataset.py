"""The shard format: round trip, atomicity, stock webdataset compatibility, clear errors."""
from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import webdataset as wds
from medfake.engine.core.errors import DatasetError
from medfake.engine.data.format import Sample
from medfake.engine.data.reader import DatasetInfo, load_split
from medfake.engine.data.writer import DatasetWriter, write_shard

NAMES = ["a", "b"]


def _write(root, n=10, per_shard=4):
    rng = np.random.default_rng(0)
    with DatasetWriter(root, NAMES, {"a": ["an a"], "b": ["a b"]}, {"who": "test"}, 8, 1,
                       per_shard) as w:
        for i in range(n):
            w.add("train", Sample(f"s{i:03d}", rng.integers(0, 255, (8, 8), dtype=np.uint8),
                                  i % 2, f"caption {i}", {"patient_id": f"p{i}"}))
    return root


def test_round_trip_and_manifest(tmp_path):
    root = _write(tmp_path / "ds")
    info = DatasetInfo.load(root)
    assert info.splits["train"]["count"] == 10
    assert info.splits["train"]["per_class"] == {"a": 5, "b": 5}
    assert len(info.shard_paths("train")) == 3
    assert info.verify() == []
    arr = load_split(root, "train")
    assert arr.images.shape == (10, 8, 8) and arr.images.dtype == np.uint8
    assert list(arr.labels) == [i % 2 for i in range(10)]
    assert arr.metas[3]["patient_id"] == "p3" and arr.captions[3] == "caption 3"
    manifest = json.loads((root / "train-000000.json").read_text())
    assert manifest["keys"] == ["s000", "s001", "s002", "s003"]
    assert not list(root.glob(".*tmp*")), "no temporary files may remain"


def test_stock_webdataset_reads_it(tmp_path):
    root = _write(tmp_path / "ds")
    urls = DatasetInfo.load(root).shard_paths("train")
    ds = wds.WebDataset(urls, shardshuffle=False, nodesplitter=wds.split_by_node,
                        empty_check=False).decode("pil").to_tuple("png", "txt", "cls")
    items = list(ds)
    assert len(items) == 10
    img, txt, cls = items[1]
    assert img.size == (8, 8) and txt == "caption 1" and int(cls) == 1


def test_corrupt_shard_is_detected_and_named(tmp_path):
    root = _write(tmp_path / "ds")
    shard = root / "train-000001.tar"
    shard.write_bytes(shard.read_bytes()[:700])
    assert any("sha256 mismatch train-000001.tar" in p for p in DatasetInfo.load(root).verify())
    with pytest.raises(DatasetError, match="train-000001.tar"):
        load_split(root, "train")


def test_missing_cls_is_a_clear_error(tmp_path):
    root = tmp_path / "ds"
    _write(root, n=2, per_shard=2)
    shard = root / "train-000000.tar"
    with tarfile.open(shard, "w") as tar:
        data = b"not used"
        info = tarfile.TarInfo("k1.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(DatasetError, match="no 'png' field|no 'cls' field"):
        load_split(root, "train")


def test_missing_dir_and_split_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        DatasetInfo.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no dataset.json"):
        DatasetInfo.load(tmp_path / "empty")
    root = _write(tmp_path / "ds")
    with pytest.raises(DatasetError, match="no split 'test'"):
        DatasetInfo.load(root).shard_paths("test")


def test_failed_shard_write_leaves_earlier_shards_intact(tmp_path):
    root = _write(tmp_path / "ds")
    before = DatasetInfo.load(root).verify()

    def bad_samples():
        yield Sample("ok", np.zeros((8, 8), np.uint8), 0, "x")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_shard(root, "train", 3, bad_samples(), NAMES)
    assert not (root / "train-000003.tar").exists()
    assert not list(root.glob(".*tmp*"))
    assert DatasetInfo.load(root).verify() == before == []
