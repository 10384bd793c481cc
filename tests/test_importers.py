"""Importers: ImageFolder, MedMNIST .npz, CSV manifest, DICOM (windowing, series, frames).

All source data is built here at test time: PNG/JPEG trees with PIL, npz files with numpy,
DICOM files from scratch with pydicom (``write_dicom``, also used by test_deid.py).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from medfake.engine.core.errors import DatasetError
from medfake.engine.data.reader import DatasetInfo, load_split
from medfake.engine.importers import ImportConfig, import_dataset
from medfake.engine.importers import dicom as dicom_io
from PIL import Image

SALT = "0123456789abcdef0123456789abcdef"


@pytest.fixture(autouse=True)
def _salt(monkeypatch):
    monkeypatch.setenv("MEDFAKE_DEID_SALT", SALT)


def write_dicom(path: Path, pixels: np.ndarray, *, modality: str = "CT", patient_id: str = "PID-1",
                patient_name: str = "DOE^JOHN", series_uid: str | None = None, z: float = 0.0,
                instance: int = 1, intercept: float = -1024.0, mono1: bool = False,
                burned_in: bool | str = False, window: tuple[float, float] | None = None,
                extra: dict | None = None, sop_class: str | None = None) -> Path:
    """A DICOM Part 10 file built from scratch. ``pixels`` are modality values (HU for CT):
    stored as uint16 = pixels - intercept. (N, H, W) pixels make a multi-frame file.
    ``burned_in``: True writes BurnedInAnnotation YES, a string writes that value, False none.
    ``sop_class`` defaults to the modality's image storage class (Secondary Capture for
    modalities without one here)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        CTImageStorage,
        ExplicitVRLittleEndian,
        MRImageStorage,
        SecondaryCaptureImageStorage,
        UltrasoundImageStorage,
        generate_uid,
    )

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class or {
        "CT": CTImageStorage, "MR": MRImageStorage, "US": UltrasoundImageStorage,
    }.get(modality, SecondaryCaptureImageStorage)
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID = patient_name, patient_id
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), series_uid or generate_uid()
    ds.Modality = modality
    ds.ImagePositionPatient, ds.InstanceNumber = [0.0, 0.0, z], instance
    ds.RescaleSlope, ds.RescaleIntercept = 1, intercept
    raw = np.round(np.asarray(pixels, dtype=np.float64) - intercept).astype(np.uint16)
    if raw.ndim == 3:
        ds.NumberOfFrames = raw.shape[0]
    ds.Rows, ds.Columns = raw.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if mono1 else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = raw.tobytes()
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    if burned_in:
        ds.BurnedInAnnotation = "YES" if burned_in is True else burned_in
    for k, v in (extra or {}).items():
        setattr(ds, k, v)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _png(path: Path, arr: np.ndarray, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)


def _imagefolder(root: Path, n: int = 10, size=(40, 48)) -> Path:
    rng = np.random.default_rng(0)
    for cls in ("cyst", "liver metastasis", "hemangioma"):
        for i in range(n):
            _png(root / cls / f"P{i % 5:03d}_{cls[:3]}_{i}.png",
                 rng.integers(0, 256, size, dtype=np.uint8))
    return root


def test_imagefolder_seeded_split_sizes_and_templates(tmp_path):
    src = _imagefolder(tmp_path / "src")
    (src / "cyst" / "notes.txt").write_text("not an image")
    (src / "cyst" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DatasetError, match="30 of 30 images have no patient identity .*"
                                           "--group-by.*--unknown-patients-to"):
        import_dataset(ImportConfig("imagefolder", str(src), str(tmp_path / "x"), size=32))
    res = import_dataset(ImportConfig("imagefolder", str(src), str(tmp_path / "out"), size=32,
                                      samples_per_shard=8, val_fraction=0.2, test_fraction=0.2,
                                      patient_regex=r"^(P\d+)_"))
    info = DatasetInfo.load(res.out)
    assert info.class_names == ["cyst", "hemangioma", "liver_metastasis"]
    assert info.image_size == 32 and info.channels == 1 and info.verify() == []
    assert sum(res.counts.values()) == 30 and res.counts["test"] == 6 and res.counts["val"] == 6
    assert res.skipped == {"not_an_image_file": 1, "unreadable_image": 1}
    assert info.provenance["skipped"] == res.skipped
    assert info.prompt_templates["liver_metastasis"][0] == "a medical image of liver metastasis"
    for split in ("train", "val", "test"):
        arr = load_split(res.out, split)
        assert arr.images.shape[1:] == (32, 32) and arr.images.dtype == np.uint8
        assert all(c in info.prompt_templates[info.class_names[y]] for c, y in
                   zip(arr.captions, arr.labels))
        assert all(m["split"] == split and m["patient_id"].startswith("pt-") for m in arr.metas)
    # Seeded: the same import elsewhere gives byte-identical shards.
    again = import_dataset(ImportConfig("imagefolder", str(src), str(tmp_path / "out2"), size=32,
                                        samples_per_shard=8, val_fraction=0.2, test_fraction=0.2,
                                        patient_regex=r"^(P\d+)_"))
    assert [s["sha256"] for s in DatasetInfo.load(again.out).splits["train"]["shards"]] == \
           [s["sha256"] for s in info.splits["train"]["shards"]]


def test_patient_regex_keeps_patients_in_one_split(tmp_path):
    src = _imagefolder(tmp_path / "src", n=20)
    res = import_dataset(ImportConfig("imagefolder", str(src), str(tmp_path / "out"), size=32,
                                      patient_regex=r"^(P\d+)_", val_fraction=0.2,
                                      test_fraction=0.2))
    seen: dict[str, set] = {}
    for split in res.counts:
        for m in load_split(res.out, split).metas:
            seen.setdefault(m["patient_id"], set()).add(split)
    assert all(len(s) == 1 for s in seen.values())
    assert len(seen) == 5  # P000..P004, each with images in every class folder
    assert all(p.startswith("pt-") and "P0" not in p for p in seen)
    assert "grouped by patient" in res.split_method


def test_rgb_and_16bit_sources_and_pad(tmp_path):
    src = tmp_path / "src"
    rng = np.random.default_rng(1)
    for i in range(10):
        _png(src / "a" / f"{i}.png", rng.integers(0, 256, (30, 20, 3), dtype=np.uint8))
        _png(src / "b" / f"{i}.png", (rng.integers(0, 4096, (30, 20)) * 16).astype(np.uint16))
    with pytest.raises(ValueError, match="not all one square size.*--size"):
        import_dataset(ImportConfig("imagefolder", str(src), str(tmp_path / "x")))
    res = import_dataset(ImportConfig("imagefolder", str(src), str(tmp_path / "out"), size=16,
                                      resize="pad", unknown_patients_to="train"))
    arr = load_split(res.out, "train")
    assert DatasetInfo.load(res.out).channels == 3 and arr.images.shape[1:] == (16, 16, 3)
    gray = arr.images[arr.labels == 1]
    assert (gray[..., 0] == gray[..., 1]).all(), "grayscale is replicated, not tinted"
    assert gray[:, :, 8].max() > 200, "16-bit images are scaled to the full 8-bit range"
    assert (arr.images[:, :, :2] == 0).all(), "pad mode pads the short side with black"


def test_import_resumes_and_refuses_other_jobs(tmp_path, monkeypatch):
    import medfake.engine.importers.job as job_mod

    src = _imagefolder(tmp_path / "src")
    cfg = ImportConfig("imagefolder", str(src), str(tmp_path / "out"), size=32, samples_per_shard=4,
                       unknown_patients_to="train")
    real_write, calls = job_mod.write_shard, []

    def dying_write(*a, **k):
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        calls.append(a[1:3])
        return real_write(*a, **k)

    monkeypatch.setattr(job_mod, "write_shard", dying_write)
    with pytest.raises(KeyboardInterrupt):
        import_dataset(cfg)
    monkeypatch.setattr(job_mod, "write_shard",
                        lambda *a, **k: calls.append(a[1:3]) or real_write(*a, **k))
    res = import_dataset(cfg)
    assert len(calls) == 3 + 5 and len(set(calls)) == len(calls), "finished shards are kept"
    fresh = import_dataset(ImportConfig("imagefolder", str(src), str(tmp_path / "fresh"), size=32,
                                        samples_per_shard=4, unknown_patients_to="train"))
    shas = lambda d: {r["name"]: r["sha256"] for s in DatasetInfo.load(d).splits.values()  # noqa: E731
                      for r in s["shards"]}
    assert shas(res.out) == shas(fresh.out)
    with pytest.raises(DatasetError, match="other data or with other settings"):
        import_dataset(ImportConfig("imagefolder", str(src), str(tmp_path / "out"), size=24,
                                    samples_per_shard=4, unknown_patients_to="train"))


def _npz(path: Path, rgb: bool = False, n=(30, 6, 9), k: int = 2, multilabel: bool = False) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, m in zip(("train", "val", "test"), n):
        shape = (m, 28, 28, 3) if rgb else (m, 28, 28)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = (rng.integers(0, 2, (m, 14)) if multilabel
                                     else (np.arange(m) % k).reshape(m, 1))
    np.savez(path, **arrays)
    return path


def test_medmnist_npz_keeps_official_splits_and_names(tmp_path):
    res = import_dataset(ImportConfig("medmnist", str(_npz(tmp_path / "pneumoniamnist.npz")),
                                      str(tmp_path / "out")))
    info = DatasetInfo.load(res.out)
    assert res.counts == {"test": 9, "train": 30, "val": 6}
    assert info.class_names == ["normal", "pneumonia"] and info.image_size == 28
    assert info.channels == 1 and info.prompt_templates["pneumonia"][0] == \
        "a chest X-ray image of pneumonia"
    train = load_split(res.out, "train")
    src = np.load(tmp_path / "pneumoniamnist.npz")
    order = [int(k.rsplit("_", 1)[1]) for k in train.keys]
    assert np.array_equal(train.images, src["train_images"][order]), "pixels are kept exactly"
    assert list(train.labels) == [int(src["train_labels"][i, 0]) for i in order]

    blood = _npz(tmp_path / "bloodmnist_64.npz", True, k=8)
    rgb = import_dataset(ImportConfig("medmnist", str(blood), str(tmp_path / "rgb")))
    info = DatasetInfo.load(rgb.out)
    assert info.channels == 3 and info.class_names[3] == "immature_granulocytes"
    with pytest.raises(DatasetError, match="multi-label"):
        chest = _npz(tmp_path / "chestmnist.npz", multilabel=True)
        import_dataset(ImportConfig("medmnist", str(chest), str(tmp_path / "ml")))
    np.savez(tmp_path / "evil.npz", train_images=np.array([object()]), train_labels=np.zeros(1))
    with pytest.raises(DatasetError, match="pickle"):
        import_dataset(ImportConfig("medmnist", str(tmp_path / "evil.npz"), str(tmp_path / "ev")))


def test_csv_manifest_with_patients_splits_and_dicom_rows(tmp_path):
    rng = np.random.default_rng(0)
    rows = ["Path,Label,Patient_ID"]
    for i in range(24):
        _png(tmp_path / "img" / f"{i}.png", rng.integers(0, 256, (32, 32), dtype=np.uint8))
        rows.append(f"img/{i}.png,{['benign', 'malignant'][i % 2]},PAT{i // 2}")
    write_dicom(tmp_path / "img" / "x.dcm", rng.normal(40, 20, (32, 32)), patient_id="PAT99")
    rows.append("img/x.dcm,malignant,")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    res = import_dataset(ImportConfig("csv", str(tmp_path / "m.csv"), str(tmp_path / "out"),
                                      val_fraction=0.2, test_fraction=0.2))
    assert sum(res.counts.values()) == 25
    by_patient: dict[str, set] = {}
    for split in res.counts:
        for m in load_split(res.out, split).metas:
            by_patient.setdefault(m["patient_id"], set()).add(split)
    assert len(by_patient) == 13 and all(len(s) == 1 for s in by_patient.values())

    given = ["path,label,patient,split", "img/0.png,benign,A,train", "img/1.png,benign,A,test",
             "img/2.png,malignant,B,train"]
    (tmp_path / "bad.csv").write_text("\n".join(given) + "\n")
    with pytest.raises(DatasetError, match="same patient into two splits.*row 2 \\(train\\) and "
                                           "row 3 \\(test\\)"):
        import_dataset(ImportConfig("csv", str(tmp_path / "bad.csv"), str(tmp_path / "o2")))
    (tmp_path / "bad2.csv").write_text("path,label,split\nimg/0.png,a,holdout\n")
    with pytest.raises(ValueError, match="row 2: split 'holdout' is not one of train, val, test"):
        import_dataset(ImportConfig("csv", str(tmp_path / "bad2.csv"), str(tmp_path / "o3")))
    (tmp_path / "bad3.csv").write_text("file_name,label\nimg/0.png,a\n")
    with pytest.raises(ValueError, match="no path column"):
        import_dataset(ImportConfig("csv", str(tmp_path / "bad3.csv"), str(tmp_path / "o4")))


def test_dicom_ct_window_modalities_series_and_frames(tmp_path):
    hu = np.zeros((16, 16))
    hu[:, :4], hu[:, 4:8], hu[:, 8:12], hu[:, 12:] = -1000, -150, 50, 250  # air, window edges, soft
    f = write_dicom(tmp_path / "ct.dcm", hu)
    img, meta = dicom_io.read_frame(f, 0, dicom_io.parse_window("auto"))
    assert img.dtype == np.uint8 and list(img[0, [0, 4, 8, 12]]) == [0, 0, 128, 255]
    assert meta["scaling"] == "window level 50 width 400" and meta["modality"] == "CT"
    lung, _ = dicom_io.read_frame(f, 0, dicom_io.parse_window("lung"))
    assert 0 < lung[0, 0] < lung[0, 4] < lung[0, 8] < 255
    inv, _ = dicom_io.read_frame(write_dicom(tmp_path / "m1.dcm", hu, mono1=True), 0, "auto")
    assert np.array_equal(inv, 255 - img), "MONOCHROME1 is inverted"
    mr = np.linspace(0, 3000, 256).reshape(16, 16)
    mr_img, mr_meta = dicom_io.read_frame(write_dicom(tmp_path / "mr.dcm", mr, modality="MR",
                                                      intercept=0), 0, "auto")
    assert mr_meta["scaling"].startswith("percentile") and mr_img.min() == 0 and mr_img.max() == 255
    fw, _ = dicom_io.read_frame(write_dicom(tmp_path / "w.dcm", hu, window=(50, 400)), 0, "file")
    assert np.array_equal(fw, img)
    with pytest.raises(ValueError, match="window 'soft' is not valid"):
        dicom_io.parse_window("soft")

    # A tree: class folders, 3-slice series per patient, a multi-frame file, junk, burned-in text.
    src = tmp_path / "tree"
    for c, cls in enumerate(("cyst", "metastasis")):
        for p in range(10):
            uid = f"1.2.3.{c}.{p}"
            for s in range(3):  # slices written out of order: sorted by position
                write_dicom(src / cls / f"p{p}" / f"{2 - s}", np.full((24, 24), 40.0 * s),
                            patient_id=f"{cls}-{p}", series_uid=uid, z=float(s), instance=s + 1)
    write_dicom(src / "cyst" / "mf.dcm", np.stack([np.full((24, 24), v) for v in (-500, 0, 500)]),
                patient_id="mf")
    (src / "cyst" / "DICOMDIR_notes").write_text("junk")
    write_dicom(src / "metastasis" / "burned.dcm", np.zeros((24, 24)), burned_in=True)
    res = import_dataset(ImportConfig("dicom", str(src), str(tmp_path / "out"), slices="middle",
                                      val_fraction=0.2, test_fraction=0.2))
    assert sum(res.counts.values()) == 21
    assert res.skipped == {"not_dicom": 1, "burned_in_annotation": 1}
    info = DatasetInfo.load(res.out)
    assert info.prompt_templates["cyst"][0] == "a CT image of cyst" and info.image_size == 24
    levels = Counter()
    for split in res.counts:
        arr = load_split(res.out, split)
        levels.update(int(v) for v in arr.images[:, 0, 0])
    assert levels[int(dicom_io.apply_window(np.array([40.0]), 50, 400)[0])] == 20, \
        "the middle slice (z=1, 40 HU) of every series"
    assert levels[int(dicom_io.apply_window(np.array([0.0]), 50, 400)[0])] == 1, \
        "the middle frame (0 HU) of the multi-frame file"


def test_cli_import_and_config_errors(tmp_path, capsys):
    from medfake.pipelines.cli import main

    src = _imagefolder(tmp_path / "src", n=6, size=(32, 32))
    env = {"MEDFAKE_DEID_SALT": SALT, "MEDFAKE_CACHE": str(tmp_path / "cache"),
           "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1",
           **{k: os.environ[k] for k in ("PYTHONPATH",) if k in os.environ}}
    r = subprocess.run([sys.executable, "-m", "medfake.pipelines.cli", "data", "import", "--from",
                        "imagefolder", str(src), "--out", str(tmp_path / "o"), "--template",
                        "a CT image of a {cls} lesion", "--val", "0.2", "--test", "0.2",
                        "--unknown-patients-to", "train"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "train 18" in r.stdout and "18 image(s) without patient identity all in train" \
        in r.stdout
    info = json.loads((tmp_path / "o" / "dataset.json").read_text())
    assert info["prompt_templates"]["cyst"] == ["a CT image of a cyst lesion"]
    for args, msg in [(["--val", "0.7"], "val_fraction (--val) is 0.7; allowed: a fraction "
                                         "from 0 to 0.5"),
                      (["--window", "x"], "window 'x' is not valid; allowed: auto, file, abdomen"),
                      (["--template", "no placeholder"], "templates (--template) is 'no "
                                                         "placeholder'; allowed: text containing"),
                      (["--from", "png"], "argument --from: invalid choice: 'png'")]:
        with pytest.raises(SystemExit) as e:
            main(["data", "import", "--from", "imagefolder", str(src), "--out",
                  str(tmp_path / "e"), *args])
        err = capsys.readouterr().err
        assert e.value.code == 2 and msg in err and "Traceback" not in err, err
