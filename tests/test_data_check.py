"""`medfake data check`: integrity, patient / image leakage across splits, and synthetic samples
derived from held-out images."""
from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest

from medfake.engine.data.writer import DatasetWriter, write_shard
from medfake.engine.data.format import Sample
from medfake.pipelines.cli import main
from medfake.pipelines.data_check import check_dataset

NAMES = ["cyst", "metastasis"]
TEMPLATES = {n: [f"a CT image of a {n}"] for n in NAMES}


def _img(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (16, 16), dtype=np.uint8)


def _real(root, leak_patient: bool = False, leak_image: bool = False):
    """train p0-p5, val p6-p7, test p8-p9; two images per patient, all distinct."""
    w = DatasetWriter(root, NAMES, TEMPLATES, {}, 16, 1, samples_per_shard=5)
    for p in range(10):
        split = "train" if p < 6 else "val" if p < 8 else "test"
        for j in range(2):
            pid = "p0" if (leak_patient and split == "test" and j == 0) else f"p{p}"
            seed = 0 if (leak_image and split == "test" and j == 1) else 100 * p + j
            w.add(split, Sample(f"r{p}_{j}", _img(seed), p % 2, "cap",
                                {"patient_id": pid, "split": split}))
    w.close()
    return root


def _synthetic(root, sources: list[tuple[str | None, str | None]], copy_seed: int | None = None):
    """One sample per (mode, source_key); ``copy_seed`` adds a copy of that real image."""
    w = DatasetWriter(root, NAMES, TEMPLATES, {}, 16, 1, samples_per_shard=4)
    for i, (mode, src) in enumerate(sources):
        meta = {"source": "synthetic", "split": "train", **({"mode": mode} if mode else {}),
                **({"source_key": src} if src else {})}
        w.add("train", Sample(f"s{i}", _img(10_000 + i), i % 2, "cap", meta))
    if copy_seed is not None:
        w.add("train", Sample("copy", _img(copy_seed), 0, "cap", {"source": "synthetic"}))
    w.close()
    return root


def test_clean_real_and_synthetic_pass(tmp_path):
    real = _real(tmp_path / "real")
    syn = _synthetic(tmp_path / "syn", [(None, None), ("inpaint", "r0_0"), ("outpaint", "r5_1")])
    report = check_dataset(real, [syn])
    assert report.ok, report.text()
    assert report.datasets[0]["counts"] == {"test": 4, "train": 12, "val": 4}
    assert "check: OK" in report.text()


def test_patient_and_image_leaks_are_found(tmp_path):
    report = check_dataset(_real(tmp_path / "r", leak_patient=True, leak_image=True))
    assert report.problem_counts == {"patient_in_two_splits": 1, "image_in_two_splits": 1}
    text = report.text()
    assert "patient p0 in ['test', 'train']" in text
    assert "'r0_0' (train)" in text and "'r8_1' (test)" in text


def test_synthetic_derived_from_held_out_is_found(tmp_path):
    real = _real(tmp_path / "real")
    syn = _synthetic(tmp_path / "syn", [("inpaint", "r8_0"), ("outpaint", "r6_1"),
                                        ("inpaint", None), ("inpaint", "nope"), (None, None)],
                     copy_seed=900)  # r9_0 is a test image
    report = check_dataset(real, [syn])
    assert report.problem_counts == {"derived_from_held_out": 2, "missing_source_key": 1,
                                     "unknown_source_key": 1, "copies_held_out_image": 1}
    text = report.text()
    assert "'s0' derives from 'r8_0' of the real test split" in text
    assert "'s1' derives from 'r6_1' of the real val split" in text
    assert "'copy' is pixel-identical to real test image 'r9_0'" in text


def test_integrity_problems_are_found(tmp_path):
    real = _real(tmp_path / "real")
    shard = real / "train-000001.tar"
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF  # inside the first PNG: checksum and decoding both fail
    shard.write_bytes(bytes(data))
    (real / "test-000000.tar").write_bytes((real / "test-000000.tar").read_bytes()[:2048])
    write_shard(real, "train", 7, [Sample("x1", _img(5), 0, "c", {})], NAMES)  # unlisted
    (real / ".train-000009.tar.tmp-123").write_bytes(b"partial")
    info = json.loads((real / "dataset.json").read_text())
    info["splits"]["val"]["count"] = 5
    (real / "dataset.json").write_text(json.dumps(info))
    report = check_dataset(real)
    kinds = set(report.problem_counts)
    assert {"checksum", "unlisted_shard", "count_mismatch",
            "unreadable_sample:truncated_tar"} <= kinds
    assert any(k.startswith("unreadable_sample:corrupt_png") for k in kinds), kinds
    assert "sha256 mismatch train-000001.tar" in report.text()
    assert any("leftover temporary file" in n for n in report.notes)


def test_unsafe_members_are_refused(tmp_path):
    real = _real(tmp_path / "real")
    shard = real / "train-000000.tar"
    with tarfile.open(shard, "a") as tar:
        link = tarfile.TarInfo("evil.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    report = check_dataset(real)
    assert report.problem_counts["unreadable_sample:unsafe_member"] == 1


def test_cli_exit_codes_and_json(tmp_path, capsys):
    real = _real(tmp_path / "real")
    syn = _synthetic(tmp_path / "syn", [("inpaint", "r9_0")])
    with pytest.raises(SystemExit) as e:
        main(["data", "check", str(real), "--synthetic", str(syn), "--json",
              str(tmp_path / "r.json")])
    assert e.value.code == 1
    out = capsys.readouterr().out
    assert "PROBLEM derived_from_held_out: 1" in out and "check: 1 problem(s)" in out
    assert json.loads((tmp_path / "r.json").read_text())["problems"] == {"derived_from_held_out": 1}
    main(["data", "check", str(real)])
    assert "check: OK" in capsys.readouterr().out
