"""Fuzz of the importers and shard readers: seeded random truncations, bit flips, byte runs
and wrong headers in PNG, JPEG, WebP, DICOM, NPZ, CSV and tar inputs.

Every case must end in one of: parsed, a counted skip (``Scan.skipped``, ``ReadSkip``, a
``SkipLog`` count) or one ``DatasetError`` (medfake's input error); anything else is a crash,
and a case running over ``CASE_TIMEOUT_S`` is a hang (``signal.setitimer``). The parsing
functions run in-process on a few hundred bytes each, so the ~1,300 cases take seconds. A
handful of whole imports of corrupted sources also check that a failed import leaves no partial
dataset behind.
"""
from __future__ import annotations

import csv
import io
import json
import signal
import tarfile
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from medfake.engine.core.errors import DatasetError
from medfake.engine.data.reader import SkipLog, iter_samples, iter_tar_samples
from medfake.engine.importers import ImportConfig, import_dataset
from medfake.engine.importers.sources import ReadSkip, make_source
from PIL import Image
from test_importers import write_dicom

CASE_TIMEOUT_S = 5.0
CASES = {"png": 220, "jpeg": 200, "webp": 160, "dicom": 220, "npz": 160, "csv": 180,
         "tar": 200}
MAGIC = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"RIFF\x00\x00\x00\x00WEBP", b"PK\x03\x04",
         b"\x93NUMPY", b"ustar\x00", b"DICM", b"\x00" * 16, b"\xff" * 16, b"%PDF-1.4"]


class Hang(BaseException):
    """Raised by the alarm: not an Exception, so no parser's ``except Exception`` eats it."""


@contextmanager
def deadline(seconds: float):
    def fire(*_):
        raise Hang()

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def mutate(data: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    """One seeded corruption of ``data``: (kind, bytes)."""
    b = bytearray(data)
    kind = ("truncate", "bitflip", "header", "run", "splice")[int(rng.integers(5))]
    if kind == "truncate":
        return kind, bytes(b[:int(rng.integers(0, len(b)))])
    if kind == "bitflip":
        for _ in range(int(rng.integers(1, 9))):
            i = int(rng.integers(len(b)))
            b[i] ^= 1 << int(rng.integers(8))
        return kind, bytes(b)
    if kind == "header":  # another format's magic, or random bytes, over the first bytes
        m = MAGIC[int(rng.integers(len(MAGIC)))] if rng.random() < 0.6 else \
            rng.integers(0, 256, int(rng.integers(1, 33)), dtype=np.uint8).tobytes()
        at = 0 if rng.random() < 0.7 else int(rng.integers(0, min(len(b), 160)))
        b[at:at + len(m)] = m
        return kind, bytes(b)
    if kind == "run":  # a run of one byte value (0x00, 0xff, or random) somewhere
        i, n = int(rng.integers(len(b))), int(rng.integers(1, 65))
        b[i:i + n] = bytes([int(rng.choice([0, 255, int(rng.integers(256))]))]) * n
        return kind, bytes(b)
    i, j = sorted(int(v) for v in rng.integers(0, len(b), 2))  # duplicate or drop a slice
    return kind, bytes(b[:i] + b[j:] if rng.random() < 0.5 else b[:j] + b[i:j] + b[j:])


def _image_bytes(fmt: str) -> bytes:
    rng = np.random.default_rng(1)
    buf = io.BytesIO()
    img = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    img.save(buf, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    return buf.getvalue()


def _shard_bytes(tmp: Path) -> bytes:
    from medfake.engine.data.format import Sample
    from medfake.engine.data.writer import write_shard

    rng = np.random.default_rng(2)
    samples = [Sample(f"k{i}", rng.integers(0, 256, (8, 8), dtype=np.uint8), i % 2, f"cap {i}",
                      {"patient_id": f"pt-{i}"}) for i in range(3)]
    rec = write_shard(tmp, "train", 0, samples, ["a", "b"])
    return (tmp / rec.name).read_bytes()


class Outcomes:
    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self.failures: list[str] = []

    def run(self, fmt: str, case: str, fn: Callable[[], str]) -> None:
        try:
            with deadline(CASE_TIMEOUT_S):
                self.counts[(fmt, fn())] += 1
        except DatasetError:
            self.counts[(fmt, "error")] += 1
        except Hang:
            self.failures.append(f"{fmt} {case}: hang (> {CASE_TIMEOUT_S} s)")
        except Exception as e:  # noqa: BLE001 - any other exception is the bug this test finds
            self.failures.append(f"{fmt} {case}: crash {type(e).__name__}: {e}"[:300])


def _scan_and_read(cfg: ImportConfig) -> str:
    """The import's pass 1 (scan) and pixel read of every item, as ``import_dataset`` does."""
    source = make_source(cfg)
    scan = source.scan()
    skipped = len(scan.skipped) + len(scan.quarantined)
    for item in scan.items:
        try:
            img, _ = source.read(item)
            assert img.dtype == np.uint8 and img.ndim in (2, 3)
        except ReadSkip:
            skipped += 1
    return "skip" if skipped else "ok"


def test_fuzz_importers_and_shard_readers(tmp_path):
    rng = np.random.default_rng(20261201)
    out = Outcomes()
    seeds = {"PNG": _image_bytes("PNG"), "JPEG": _image_bytes("JPEG"),
             "WEBP": _image_bytes("WEBP")}
    dcm_path = write_dicom(tmp_path / "seed.dcm", np.random.default_rng(3).normal(40, 20, (8, 8)),
                           extra={"WindowCenter": 40, "WindowWidth": 400})
    seeds["DICOM"] = dcm_path.read_bytes()
    npz = io.BytesIO()
    r3 = np.random.default_rng(4)
    np.savez(npz, **{f"{s}_images": r3.integers(0, 256, (3, 8, 8), dtype=np.uint8)
                     for s in ("train", "test")},
             **{f"{s}_labels": np.arange(3).reshape(3, 1) % 2 for s in ("train", "test")})
    seeds["NPZ"] = npz.getvalue()
    shard_dir = tmp_path / "shard"
    seeds["TAR"] = _shard_bytes(shard_dir)

    work = tmp_path / "w"
    (work / "cls").mkdir(parents=True)
    for name, fmt in (("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")):
        for n in range(CASES[name]):
            kind, data = mutate(seeds[fmt], rng)
            f = work / "cls" / f"x.{name}"
            f.write_bytes(data)
            cfg = ImportConfig("imagefolder", str(work), str(tmp_path / "o"))
            out.run(name, f"#{n} {kind}", lambda cfg=cfg: _scan_and_read(cfg))
            f.unlink()
    for n in range(CASES["dicom"]):
        kind, data = mutate(seeds["DICOM"], rng)
        (work / "cls" / "x.dcm").write_bytes(data)
        cfg = ImportConfig("dicom", str(work), str(tmp_path / "o"), window="file")
        out.run("dicom", f"#{n} {kind}", lambda cfg=cfg: _scan_and_read(cfg))
    (work / "cls" / "x.dcm").unlink()
    for n in range(CASES["npz"]):
        kind, data = mutate(seeds["NPZ"], rng)
        (tmp_path / "m.npz").write_bytes(data)
        cfg = ImportConfig("medmnist", str(tmp_path / "m.npz"), str(tmp_path / "o"))
        out.run("npz", f"#{n} {kind}", lambda cfg=cfg: _scan_and_read(cfg))

    (work / "cls" / "a.png").write_bytes(seeds["PNG"])
    write_dicom(work / "cls" / "b.dcm", np.zeros((8, 8)))
    good_csv = "path,label,patient_id,split\ncls/a.png,x,P1,train\ncls/b.dcm,y,P2,test\n"
    for n in range(CASES["csv"]):
        kind, data = mutate(good_csv.encode(), rng)
        (work / "m.csv").write_bytes(data)
        cfg = ImportConfig("csv", str(work / "m.csv"), str(tmp_path / "o"))
        out.run("csv", f"#{n} {kind}", lambda cfg=cfg: _scan_and_read(cfg))

    def read_tar(path: Path) -> str:
        skips = SkipLog("fuzz", first=0, every=1e9)
        tolerant = list(iter_samples([path], skips, image_size=8, channels=1, n_classes=2,
                                     summarize=False))
        assert len(tolerant) <= 3
        try:
            strict = list(iter_tar_samples(str(path), 1))  # all or one DatasetError
        except DatasetError:
            return "error" if not tolerant and not skips.n_skipped else "skip"
        return "skip" if skips.n_skipped else ("ok" if len(strict) == len(tolerant) else "skip")

    members = {}
    with tarfile.open(fileobj=io.BytesIO(seeds["TAR"])) as t:
        for m in t:
            members[m.name] = t.extractfile(m).read()
    for n in range(CASES["tar"]):
        shard = shard_dir / "train-000000.tar"
        if n % 2:  # the tar structure itself
            kind, data = mutate(seeds["TAR"], rng)
            shard.write_bytes(data)
        else:  # one member (image, cls, json, txt) inside a well-formed tar
            name = sorted(members)[int(rng.integers(len(members)))]
            kind, blob = mutate(members[name], rng)
            kind = f"{name}:{kind}"
            with tarfile.open(shard, "w") as t:
                for k, v in members.items():
                    v = blob if k == name else v
                    info = tarfile.TarInfo(k)
                    info.size = len(v)
                    t.addfile(info, io.BytesIO(v))
        out.run("tar", f"#{n} {kind}", lambda shard=shard: read_tar(shard))

    total = sum(out.counts.values()) + len(out.failures)
    summary = {f"{fmt}:{what}": n for (fmt, what), n in sorted(out.counts.items())}
    print(f"fuzz: {total} cases, {len(out.failures)} failures; {json.dumps(summary)}")
    assert total >= 1000
    assert not out.failures, "\n".join(out.failures[:20])
    for fmt in CASES:  # the corruptions did reach the error paths of every format
        assert out.counts[(fmt, "skip")] + out.counts[(fmt, "error")] > 0, fmt


@pytest.mark.parametrize("source", ["imagefolder", "dicom", "csv", "medmnist"])
def test_corrupt_source_import_is_complete_or_leaves_nothing(tmp_path, source, monkeypatch):
    """Whole imports of sources with corrupted files: a complete dataset with the bad files
    counted as skipped, or one DatasetError and no dataset (no shard, no dataset.json)."""
    monkeypatch.setenv("MEDFAKE_DEID_SALT", "0123456789abcdef0123456789abcdef")
    rng = np.random.default_rng(7)
    results = Counter()
    for n in range(6):
        src = tmp_path / f"src{n}"
        if source == "medmnist":
            buf = io.BytesIO()
            np.savez(buf, train_images=rng.integers(0, 256, (6, 8, 8), dtype=np.uint8),
                     train_labels=(np.arange(6) % 2).reshape(6, 1))
            src.mkdir()
            path = src / "m.npz"
            path.write_bytes(mutate(buf.getvalue(), rng)[1])
        else:
            rows = [["path", "label", "patient_id"]]
            for i in range(6):
                cls = "ab"[i % 2]
                if source == "dicom":
                    f = write_dicom(src / cls / f"{i}.dcm", rng.normal(0, 9, (8, 8)),
                                    patient_id=f"P{i}")
                else:
                    f = src / cls / f"{i}.png"
                    f.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(f)
                rows.append([str(f.relative_to(src)), cls, f"P{i}"])
                if i in (1, 4):
                    f.write_bytes(mutate(f.read_bytes(), rng)[1])
            with open(src / "m.csv", "w", newline="") as fh:
                csv.writer(fh).writerows(rows)
            path = src / "m.csv" if source == "csv" else src
        dest = tmp_path / f"out{n}"
        cfg = ImportConfig(source, str(path), str(dest), size=8, val_fraction=0,
                           test_fraction=0, unknown_patients_to="train",
                           patient_regex=r"^(\d+)\." if source == "imagefolder" else None)
        try:
            with deadline(20):
                res = import_dataset(cfg)
        except DatasetError:
            results["error"] += 1
            assert not (dest / "dataset.json").exists() and not list(dest.glob("*.tar"))
            continue
        from medfake.engine.data.reader import DatasetInfo
        info = DatasetInfo.load(dest)
        assert info.verify() == []
        assert sum(res.counts.values()) + sum(res.skipped.values()) >= (6 if source != "medmnist"
                                                                        else 1)
        results["complete"] += 1
    assert sum(results.values()) == 6
