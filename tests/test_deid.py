"""De-identification: planted identifiers never reach any output byte (files, tar members,
json, captions, logs), patient ids become salted pseudonyms, and the salt stays secret."""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin
from pydicom.dataset import Dataset
from test_importers import write_dicom

from medfake.engine.data.reader import DatasetInfo, load_split
from medfake.engine.importers.deid import (DICOM_META_ALLOWED, Pseudonymizer, dicom_safe_meta,
                                           load_salt)

SALT = "a-very-secret-salt-4242-for-tests-only"
PATIENTS = [  # (name, id, birth date): every part is planted and searched for
    ("ZEBEDEE^QUIXOTE", "MRN-7734-XQ", "19490317"),
    ("WIBBLESWORTH^ODALYS", "MRN-9120-ZK", "19610822"),
    ("FROBISHER^MAGNOLIA", "MRN-3318-PW", "19770105"),
    ("PLUMTREE^AUGUSTIN", "MRN-6402-HD", "19831230"),
    ("QUILLFEATHER^BEATRIXINA", "MRN-1177-RT", "19920611"),
    ("MARCHBANKS^IGNATIUS", "MRN-5581-LM", "20010214"),
]
PLANTED_ATTRS = {  # the same for every file; plus per-patient attributes below
    "AccessionNumber": "ACC-55AA-991", "InstitutionName": "Hospital of Saint Wibbly",
    "InstitutionAddress": "42 Wobble Lane, Nowhere", "ReferringPhysicianName": "HOUSE^GREGORY",
    "OperatorsName": "RATCHED^MILDRED", "StudyID": "STUDY-8812", "StudyDate": "20230405",
    "StudyTime": "101112", "DeviceSerialNumber": "SN-0042-77", "StationName": "CTSCAN-ROOM9",
    "PatientAddress": "1 Secret Road, Hiddenville", "OtherPatientIDs": "ALT-ID-3321",
    "PatientTelephoneNumbers": "555-0199-321", "InstitutionalDepartmentName": "Dept Zanzibar",
}


def _identifiers(tree: Path) -> set[str]:
    """Every planted value, its parts, and the UIDs actually written into the files."""
    import pydicom

    ids = set()
    for name, pid, dob in PATIENTS:
        ids |= {pid, dob, f"{dob[:4]}-{dob[4:6]}-{dob[6:]}", *name.split("^")}
    for v in PLANTED_ATTRS.values():
        ids |= {v, *(w for w in re.split(r"[\s^,]+", v) if len(w) >= 6)}
    for p in tree.rglob("*.dcm"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(p, stop_before_pixels=True)
        except Exception:
            continue
        ids |= {str(ds.get(k) or "") for k in ("StudyInstanceUID", "SeriesInstanceUID",
                                                "SOPInstanceUID")}
    ids.discard("")
    return ids


def _plant_tree(root: Path) -> None:
    """DICOM class folders named after patients, with every identifying attribute filled in,
    a private tag, a corrupt file and one with burned-in annotation."""
    rng = np.random.default_rng(0)
    for i, (name, pid, dob) in enumerate(PATIENTS):
        cls = ("cyst", "metastasis")[i % 2]
        uid = f"1.2.826.0.1.3680043.10.{i + 1}"
        for s in range(3):
            f = root / cls / f"{name.replace('^', '_')}_{pid}" / f"{pid}_slice{s}.dcm"
            write_dicom(f, rng.normal(40, 25, (24, 24)), patient_id=pid, patient_name=name,
                        series_uid=uid, z=float(s),
                        extra={**PLANTED_ATTRS, "PatientBirthDate": dob,
                               "SeriesDescription": f"CT ABD {name.split('^')[0]} follow-up"})
            import pydicom
            ds = pydicom.dcmread(f)
            block = ds.private_block(0x0011, "ACME PRIVATE", create=True)
            block.add_new(0x01, "LO", f"PRIVATE-{pid}")
            ds.save_as(f)
    bad = root / "cyst" / f"{PATIENTS[0][0].replace('^', '_')}_corrupt.dcm"
    bad.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00garbage " + PATIENTS[0][1].encode())
    write_dicom(root / "metastasis" / f"{PATIENTS[1][1]}_burned.dcm", np.zeros((24, 24)),
                patient_id=PATIENTS[1][1], burned_in=True)
    # a file whose header is fine but whose pixel data is cut short
    cut = write_dicom(root / "cyst" / f"{PATIENTS[2][1]}_cut.dcm", np.zeros((24, 24)),
                      patient_id=PATIENTS[2][1])
    cut.write_bytes(cut.read_bytes()[:-200])


def _all_output_bytes(out: Path) -> list[tuple[str, bytes]]:
    """Every file under ``out``; tar members individually; PNG members also as decoded pixels."""
    blobs = []
    for p in sorted(out.rglob("*")):
        if not p.is_file():
            continue
        blobs.append((str(p), p.read_bytes()))
        if p.suffix == ".tar":
            with tarfile.open(p) as tar:
                for m in tar:
                    data = tar.extractfile(m).read()
                    blobs.append((f"{p.name}:{m.name}", m.name.encode() + data))
                    if m.name.endswith(".png"):
                        with Image.open(io.BytesIO(data)) as im:
                            assert not im.info or set(im.info) <= {"dpi"}, im.info  # no text
                            blobs.append((f"{p.name}:{m.name}:pixels", im.tobytes()))
    return blobs


def _assert_clean(blobs: list[tuple[str, bytes]], identifiers: set[str]) -> None:
    needles = [i.lower().encode() for i in identifiers]
    hits = [(where, n.decode()) for where, data in blobs for n in needles if n in data.lower()]
    assert not hits, f"identifiers leaked: {hits[:10]}"


def test_dicom_import_leaks_nothing(tmp_path, monkeypatch, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    _plant_tree(src)
    identifiers = _identifiers(src) | {SALT}
    env = {**os.environ, "MEDFAKE_DEID_SALT": SALT, "MEDFAKE_CACHE": str(tmp_path / "cache"),
           "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "medfake.pipelines.cli", "-v", "data", "import",
                        "--from", "dicom", str(src), "--out", str(out), "--val", "0.2",
                        "--test", "0.2", "--samples-per-shard", "4"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    for reason in ("skipped 3", "no_image", "burned_in_annotation", "unreadable_pixels"):
        assert reason in r.stdout, r.stdout
    assert "DEBUG" in r.stderr or "INFO" in r.stderr  # logs were captured, then scanned

    blobs = _all_output_bytes(out) + [("stdout", r.stdout.encode()), ("stderr", r.stderr.encode())]
    _assert_clean(blobs, identifiers)
    assert sum(len(b) for _, b in blobs) > 10_000  # the scan covered real content

    info = DatasetInfo.load(out)
    assert sum(s["count"] for s in info.splits.values()) == 18
    pseudonyms = {m["patient_id"] for s in info.splits for m in load_split(out, s).metas}
    pz = Pseudonymizer(SALT.encode())
    assert pseudonyms == {pz.patient(pid) for _, pid, _ in PATIENTS}
    meta = load_split(out, "train").metas[0]
    allowed = set(DICOM_META_ALLOWED.values()) | {"scaling", "source", "split", "class_name",
                                                   "patient_id", "image_sha256"}
    assert set(meta) <= allowed, set(meta) - allowed

    # The user can ask for the skipped files' paths; only then are they printed (stderr).
    from medfake.pipelines.cli import main

    monkeypatch.setenv("MEDFAKE_DEID_SALT", SALT)
    main(["data", "import", "--from", "dicom", str(src), "--out", str(tmp_path / "o2"), "--val",
          "0.2", "--test", "0.2", "--show-skipped"])
    assert "_corrupt.dcm" in capsys.readouterr().err


def test_csv_and_imagefolder_import_leak_nothing(tmp_path, monkeypatch, caplog):
    from medfake.engine.importers import ImportConfig, import_dataset

    monkeypatch.setenv("MEDFAKE_DEID_SALT", SALT)
    rng = np.random.default_rng(0)
    rows = ["path,label,patient_id"]
    for i, (name, pid, dob) in enumerate(PATIENTS):
        for j in range(3):
            f = tmp_path / "src" / name.replace("^", "_") / f"{pid}_{dob}_{j}.png"
            f.parent.mkdir(parents=True, exist_ok=True)
            text = PngImagePlugin.PngInfo()
            text.add_text("Comment", f"{name} {pid} born {dob}")
            Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8)).save(f, pnginfo=text)
            rows.append(f"{f.relative_to(tmp_path)},{('a', 'b')[i % 2]},{pid}")
        jpg = tmp_path / "src" / name.replace("^", "_") / f"{pid}.jpg"
        exif = Image.Exif()
        exif[0x010E] = f"{name} {pid}"  # ImageDescription
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(jpg, exif=exif)
        rows.append(f"{jpg.relative_to(tmp_path)},{('a', 'b')[i % 2]},{pid}")
    rows.append(f"src/{PATIENTS[0][0]}_missing.png,a,{PATIENTS[0][1]}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    caplog.set_level("DEBUG")
    res = import_dataset(ImportConfig("csv", str(tmp_path / "m.csv"), str(tmp_path / "out"),
                                      channels=1, val_fraction=0.2, test_fraction=0.2))
    assert sum(res.counts.values()) == 24 and res.skipped == {"missing_file": 1}
    identifiers = _identifiers(tmp_path / "src") | {SALT}
    _assert_clean(_all_output_bytes(tmp_path / "out") + [("log", caplog.text.encode())],
                  identifiers)


def test_pseudonyms_salt_and_allow_list(tmp_path, monkeypatch):
    a, b = Pseudonymizer(b"s" * 32), Pseudonymizer(b"t" * 32)
    assert a.patient("MRN-1") == a.patient(" MRN-1 ") != b.patient("MRN-1")
    assert re.fullmatch(r"pt-[0-9a-f]{16}", a.patient("MRN-1")) and a.salt_id != b.salt_id
    assert a.pseudonym("patient", "x") != a.pseudonym("ref", "x")

    monkeypatch.delenv("MEDFAKE_DEID_SALT", raising=False)
    monkeypatch.setenv("MEDFAKE_CACHE", str(tmp_path / "cache"))
    first = load_salt()
    path = tmp_path / "cache" / "secrets" / "deid_salt"
    assert path.stat().st_mode & 0o777 == 0o600 and load_salt() == first and len(first) >= 32
    monkeypatch.setenv("MEDFAKE_DEID_SALT", "short")
    with pytest.raises(ValueError, match="at least 16 random bytes"):
        load_salt()
    with pytest.raises(FileNotFoundError, match="salt file .* does not exist"):
        load_salt(tmp_path / "nope")
    (tmp_path / "salt").write_text("x" * 40 + "\n")
    assert load_salt(tmp_path / "salt") == b"x" * 40

    ds = Dataset()
    ds.PatientName, ds.PatientID, ds.Modality = "DOE^JANE", "123", "CT"
    ds.PixelSpacing, ds.InstitutionName = [0.7, 0.7], "Somewhere"
    assert dicom_safe_meta(ds) == {"modality": "CT", "pixel_spacing": [0.7, 0.7]}
    assert json.dumps(dicom_safe_meta(ds))  # plain JSON values


def test_salt_from_files_never_reaches_an_output(tmp_path, monkeypatch, capsys, caplog):
    """--salt-file, $MEDFAKE_DEID_SALT_FILE and the default per-user file: the salt is in no
    output byte (files, tar members, stdout, stderr, logs); the environment variable warns."""
    from medfake.pipelines.cli import main

    monkeypatch.delenv("MEDFAKE_DEID_SALT", raising=False)
    monkeypatch.setenv("MEDFAKE_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    rows = ["path,label,patient_id"]
    for i in range(12):
        f = tmp_path / "src" / f"{i}.png"
        f.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(f)
        rows.append(f"src/{i}.png,{'ab'[i % 2]},{PATIENTS[i % 6][1]}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    salt_file = tmp_path / "private" / "salt"
    salt_file.parent.mkdir()
    salt_file.write_text(SALT + "\n")
    salt_file.chmod(0o600)
    caplog.set_level("DEBUG")

    def run(out: str, *extra: str) -> list[tuple[str, bytes]]:
        caplog.clear()
        main(["-v", "data", "import", "--from", "csv", str(tmp_path / "m.csv"), "--out",
              str(tmp_path / out), "--val", "0", "--test", "0.2", *extra])
        std = capsys.readouterr()
        return _all_output_bytes(tmp_path / out) + [
            ("stdout", std.out.encode()), ("stderr", std.err.encode()),
            ("log", caplog.text.encode())]

    salts = {SALT}
    blobs = run("flag", "--salt-file", str(salt_file))
    monkeypatch.setenv("MEDFAKE_DEID_SALT_FILE", str(salt_file))
    blobs += run("envfile")
    monkeypatch.delenv("MEDFAKE_DEID_SALT_FILE")
    blobs += run("default")
    default = tmp_path / "cache" / "secrets" / "deid_salt"
    assert default.stat().st_mode & 0o777 == 0o600
    salts.add(default.read_text().strip())
    monkeypatch.setenv("MEDFAKE_DEID_SALT", SALT + "-env")
    env_blobs = run("env")
    salts.add(SALT + "-env")
    assert "MEDFAKE_DEID_SALT" in caplog.text and "--salt-file" in caplog.text  # the warning
    blobs += env_blobs
    assert sum(len(b) for _, b in blobs) > 20_000  # the scan covered real content
    # the same salt from the flag and from $MEDFAKE_DEID_SALT_FILE: the same pseudonyms
    ids = {d: json.loads((tmp_path / d / "dataset.json").read_text())["provenance"]["deid"]
           ["salt_id"] for d in ("flag", "envfile", "default", "env")}
    assert ids["flag"] == ids["envfile"] != ids["default"] != ids["env"]
    _assert_clean(blobs, salts | {s[:16] for s in salts} | {s[-16:] for s in salts})

    salt_file.chmod(0o644)
    caplog.clear()
    load_salt(salt_file)
    assert "readable by other users" in caplog.text and SALT not in caplog.text
