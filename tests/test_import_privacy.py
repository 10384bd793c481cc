"""Privacy boundaries of ``medfake data import``: DICOM at risk of burned-in text is
quarantined (listed by position, never by path) unless the user accepts the risk, and no
patient can land in two splits (files without patient identity are refused unless grouped by
a user key or placed in one split)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from medfake.engine.core.errors import DatasetError
from medfake.engine.data.reader import DatasetInfo, load_split, split_patients
from medfake.engine.importers import ImportConfig, import_dataset
from medfake.pipelines.data_check import check_dataset
from pydicom.uid import SecondaryCaptureImageStorage
from test_importers import _png, write_dicom

SALT = "0123456789abcdef0123456789abcdef"


@pytest.fixture(autouse=True)
def _salt(tmp_path, monkeypatch):
    (tmp_path / "salt").write_text(SALT + "\n")
    monkeypatch.setenv("MEDFAKE_DEID_SALT_FILE", str(tmp_path / "salt"))


def _burned_in_tree(root):
    """Per class: 4 clean CT patients; planted risky files, none with BurnedInAnnotation."""
    rng = np.random.default_rng(0)
    for cls in ("cyst", "metastasis"):
        for p in range(4):
            write_dicom(root / cls / f"SMITH_{cls}_{p}.dcm", rng.normal(40, 20, (16, 16)),
                        patient_id=f"{cls}-{p}", patient_name=f"SMITH^{cls}{p}")
    px = np.zeros((16, 16))
    planted = {  # file name (sorted order decides the position) -> expected reason
        "cyst/US_ZEBEDEE.dcm": {"modality": "US"},
        "cyst/XC_ZEBEDEE.dcm": {"modality": "XC"},
        "metastasis/OT_ZEBEDEE.dcm": {"modality": "OT"},
        "metastasis/SC_ZEBEDEE.dcm": {"modality": "SC"},
        "metastasis/SCREEN_ZEBEDEE.dcm": {"modality": "CT",
                                          "sop_class": SecondaryCaptureImageStorage},
    }
    for name, kw in planted.items():
        write_dicom(root / name, px, patient_id="ZEB-1", patient_name="ZEBEDEE^Q", **kw)
    # cleared by the source (BurnedInAnnotation NO) and flagged YES (never imported)
    write_dicom(root / "cyst" / "US_cleared.dcm", px, modality="US", patient_id="cyst-0",
                burned_in="NO")
    write_dicom(root / "cyst" / "US_flagged.dcm", px, modality="US", patient_id="cyst-1",
                burned_in=True)
    return root


def test_burned_in_risk_is_quarantined_by_position(tmp_path, capsys):
    from medfake.pipelines.cli import main

    src = _burned_in_tree(tmp_path / "src")
    out = tmp_path / "out"
    main(["data", "import", "--from", "dicom", str(src), "--out", str(out), "--val", "0",
          "--test", "0.25"])
    stdout = capsys.readouterr().out
    line = next(ln for ln in stdout.splitlines() if ln.startswith("quarantined 5"))
    for reason in ("burned_in_risk_us", "burned_in_risk_xc", "burned_in_risk_ot",
                   "burned_in_risk_sc", "burned_in_risk_secondary_capture"):
        assert reason in line, line
    assert "file " in line and "ZEBEDEE" not in stdout and str(src) not in stdout
    assert "--accept-burned-in-risk" in stdout
    info = DatasetInfo.load(out)
    assert sum(s["count"] for s in info.splits.values()) == 9  # 8 CT + the cleared US
    assert sum(info.provenance["quarantined"].values()) == 5
    assert info.provenance["skipped"] == {"burned_in_annotation": 1}
    assert "ZEBEDEE" not in (out / "dataset.json").read_text()

    # Accepting the risk imports them, and says so; the YES-flagged file stays out.
    res = import_dataset(ImportConfig("dicom", str(src), str(tmp_path / "acc"), val_fraction=0,
                                      test_fraction=0.25, accept_burned_in_risk=True))
    assert sum(res.counts.values()) == 14 and res.quarantined == []
    info = DatasetInfo.load(res.out)
    assert sum(info.provenance["burned_in_risk_accepted"].values()) == 5
    assert info.provenance["settings"]["accept_burned_in_risk"] is True

    # Only quarantined files: one clear error naming the flag.
    only = tmp_path / "only"
    write_dicom(only / "a" / "us.dcm", np.zeros((8, 8)), modality="US")
    with pytest.raises(DatasetError, match="no importable images.*quarantined.*"
                                           "--accept-burned-in-risk"):
        import_dataset(ImportConfig("dicom", str(only), str(tmp_path / "o3")))


def test_no_patient_identity_is_refused_unless_grouped_or_placed(tmp_path):
    src = tmp_path / "src"
    rng = np.random.default_rng(0)
    for c, cls in enumerate(("cyst", "metastasis")):
        for s in range(10):  # two series per study: a series split would separate them
            write_dicom(src / cls / f"study{s}" / f"{s}_{c}a.dcm", rng.normal(40, 9, (8, 8)),
                        patient_id="", patient_name="",
                        extra={"AccessionNumber": f"ACC{c}{s}"})
            write_dicom(src / cls / f"study{s}" / f"{s}_{c}b.dcm", rng.normal(40, 9, (8, 8)),
                        patient_id="", patient_name="",
                        extra={"AccessionNumber": f"ACC{c}{s}"})
    kw = {"val_fraction": 0.2, "test_fraction": 0.2}
    with pytest.raises(DatasetError, match="40 of 40 images have no patient identity"):
        import_dataset(ImportConfig("dicom", str(src), str(tmp_path / "x"), **kw))
    for group_by in ("dicom:AccessionNumber", "folder"):
        res = import_dataset(ImportConfig("dicom", str(src), str(tmp_path / group_by[:6]),
                                          group_by=group_by, **kw))
        by = split_patients(res.out)
        assert len(by) == 20 and all(len(s) == 1 for s in by.values()), group_by
        assert {len(v) for v in by.values()} == {1} and res.counts["test"] == 8
        assert check_dataset(res.out).ok
    placed = import_dataset(ImportConfig("dicom", str(src), str(tmp_path / "placed"),
                                         unknown_patients_to="train", **kw))
    assert placed.counts == {"train": 40} and "all in train" in placed.split_method
    assert check_dataset(placed.out).ok
    info = json.loads((placed.out / "dataset.json").read_text())
    assert info["provenance"]["patient_identity"] == {"known": 0, "unknown": 40,
                                                      "unknown_split": "train"}
    # data check: samples without a patient id outside the import's one split are a problem
    info["provenance"]["patient_identity"]["unknown_split"] = "test"
    (placed.out / "dataset.json").write_text(json.dumps(info))
    report = check_dataset(placed.out)
    assert report.problem_counts["no_patient_identity"] == 1, report.text()

    with pytest.raises(ValueError, match="'NotAKeyword' is not a DICOM keyword"):
        ImportConfig("dicom", str(src), "o", group_by="dicom:NotAKeyword")
    with pytest.raises(ValueError, match="column:NAME only with --from csv"):
        ImportConfig("dicom", str(src), "o", group_by="column:x")


def test_csv_group_column_and_import_self_check(tmp_path, monkeypatch):
    import medfake.engine.importers.job as job_mod

    rng = np.random.default_rng(0)
    rows = ["path,label,visit"]
    for i in range(20):
        _png(tmp_path / "img" / f"{i}.png", rng.integers(0, 256, (16, 16), dtype=np.uint8))
        rows.append(f"img/{i}.png,{'ab'[i % 2]},V{i // 2}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    kw = {"val_fraction": 0.2, "test_fraction": 0.2}
    res = import_dataset(ImportConfig("csv", str(tmp_path / "m.csv"), str(tmp_path / "out"),
                                      group_by="column:visit", **kw))
    metas = [m for s in res.counts for m in load_split(res.out, s).metas]
    assert len({m["patient_id"] for m in metas}) == 10
    with pytest.raises(ValueError, match="--group-by column:nope names no column"):
        import_dataset(ImportConfig("csv", str(tmp_path / "m.csv"), str(tmp_path / "o2"),
                                    group_by="column:nope", **kw))
    # The import checks what it wrote: a split assignment that leaks is caught, not shipped.
    monkeypatch.setattr(job_mod, "assign_splits",
                        lambda labels, *a, **k: [("train", "test")[i % 2] for i in range(len(labels))])
    with pytest.raises(DatasetError, match="patient\\(s\\) ended up in two splits"):
        import_dataset(ImportConfig("csv", str(tmp_path / "m.csv"), str(tmp_path / "leak"),
                                    group_by="column:visit", **kw))


def _text_png(path, text: str | None) -> None:
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("L", (96, 96), 30)
    if text:
        ImageDraw.Draw(img).text((4, 4), text, fill=230, font=ImageFont.load_default(size=14))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def test_detect_text_quarantines_by_position_and_needs_the_package(tmp_path, monkeypatch):
    import medfake.engine.core.capabilities as caps
    import medfake.engine.importers.job as job_mod
    from medfake.engine.core.capabilities import CapabilityError, Probe

    for i in range(6):
        _text_png(tmp_path / "src" / "a" / f"P{i}_x.png", "DOE JOHN" if i == 2 else None)
    cfg = {"unknown_patients_to": "train", "detect_text": True}
    monkeypatch.setattr(caps, "rapidocr", lambda: Probe("rapidocr", False, "", "not installed"))
    with pytest.raises(CapabilityError, match="--detect-text needs the offline text detector"):
        import_dataset(ImportConfig("imagefolder", str(tmp_path / "src"), str(tmp_path / "x"),
                                    **cfg))
    assert not (tmp_path / "x").exists(), "refused before anything was written"

    class Fake:  # stands in for rapidocr: "text" = any bright pixel
        def has_text(self, image):
            return bool((image > 200).any())

    monkeypatch.setattr(job_mod, "TextDetector", Fake)
    res = import_dataset(ImportConfig("imagefolder", str(tmp_path / "src"), str(tmp_path / "o"),
                                      **cfg))
    assert res.counts == {"train": 5} and len(res.quarantined) == 1
    where, reason = res.quarantined[0]
    assert where.startswith("file ") and reason == "burned_in_text_detected"
    assert DatasetInfo.load(res.out).provenance["quarantined"] == {"burned_in_text_detected": 1}


def test_rapidocr_finds_planted_text(tmp_path):
    """The real detector, where the optional package is installed (pip install 'medfake[ocr]')."""
    pytest.importorskip("rapidocr")
    from medfake.engine.importers.textdetect import TextDetector

    _text_png(tmp_path / "t.png", "DOE^JOHN 1949")
    _text_png(tmp_path / "b.png", None)
    from PIL import Image
    det = TextDetector()
    assert det.has_text(np.asarray(Image.open(tmp_path / "t.png")))
    assert not det.has_text(np.asarray(Image.open(tmp_path / "b.png")))
