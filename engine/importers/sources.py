"""Import sources: scan (pass 1, headers only) into ``Item``s, then read one item's pixels.

An item's ``ref`` (a path or array position) and ``patient`` may be identifying (file names,
patient ids, DICOM UIDs): the writer only ever stores their pseudonyms, and messages refer to
items by ``where`` ("row 17", "file 12"), never by path. ``patient`` is the source's patient id
or, failing that, the user's ``--group-by`` key (see ``ImportConfig``); None when neither
exists. DICOM files at risk of burned-in text (``dicom.burned_in_risk``) are quarantined in
``Scan.quarantined`` unless the user accepts the risk.
"""
from __future__ import annotations

import csv
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..core.errors import DatasetError
from . import dicom as dicom_io
from .config import SPLITS, ImportConfig
from .imaging import GRAY_MODES, pil_to_array, to_uint8
from .medmnist_info import MEDMNIST

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp"}
_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                  "validation": "val", "dev": "val", "test": "test", "testing": "test"}
_CSV_COLUMNS = {"path": ("path", "image", "file", "filename", "filepath", "image_path"),
                "label": ("label", "class", "cls", "target", "diagnosis"),
                "patient": ("patient_id", "patient", "patientid", "subject", "subject_id"),
                "split": ("split", "subset", "set")}


class ReadSkip(Exception):
    """An item that cannot be imported; ``reason`` is short and never identifying."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


@dataclass
class Item:
    ref: str
    label: int
    kind: str                      # "image" | "dicom" | "array"
    where: str                     # non-identifying position for messages
    patient: str | None = None     # raw (identifying) patient id or user group key
    split: str | None = None       # the source's own split, if any
    frame: int = 0


@dataclass
class Scan:
    items: list[Item]
    class_names: list[str]
    shapes: Counter = field(default_factory=Counter)
    color: bool = False
    modality: str | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (ref, reason)
    quarantined: list[tuple[str, str, str]] = field(default_factory=list)  # (ref, where, reason)
    accepted_risk: Counter = field(default_factory=Counter)  # reason -> imported anyway
    readable_keys: bool = False     # keys may show the ref (public datasets only)


def _visible_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def _class_dirs(src: Path, wanted: list[str] | None) -> list[Path]:
    if not src.is_dir():
        raise FileNotFoundError(f"source directory {src} does not exist")
    dirs = sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not dirs:
        raise DatasetError(f"{src} has no class subfolders; expected SRC/<class>/<images>.")
    if wanted:
        by_name = {d.name: d for d in dirs}
        missing = [n for n in wanted if n not in by_name]
        if missing:
            raise ValueError(f"--class-names lists {missing}, which are not subfolders of {src}; "
                             f"its subfolders are {sorted(by_name)}")
        dirs = [by_name[n] for n in wanted]
    return dirs


def _image_header(path: Path) -> tuple[tuple[int, int], bool]:
    """((height, width) after EXIF rotation, is_gray) from the file header."""
    with Image.open(path) as im:
        w, h = im.size
        if im.getexif().get(0x0112) in (5, 6, 7, 8):
            w, h = h, w
        gray = im.mode in GRAY_MODES or (im.mode == "P" and _palette_is_gray(im))
    return (h, w), gray


def _palette_is_gray(im: Image.Image) -> bool:
    pal = np.asarray(im.getpalette() or [], dtype=np.int64).reshape(-1, 3)
    return bool(len(pal)) and bool((pal == pal[:, :1]).all())


def _patient_from(regex: re.Pattern | None, text: str) -> str | None:
    if regex is None:
        return None
    m = regex.search(text)
    if not m:
        return None
    return m.group("patient") if "patient" in regex.groupindex else m.group(1)


class FileSource:
    """Shared by the file-based sources: header scans and pixel reads of images and DICOM."""

    def __init__(self, cfg: ImportConfig):
        self.cfg = cfg
        self.window = dicom_io.parse_window(cfg.window)
        self.regex = re.compile(cfg.patient_regex) if cfg.patient_regex else None
        kind, _, arg = (cfg.group_by or "").partition(":")
        self.group_kind, self.group_arg = kind or None, arg
        self.dicom_keywords = (arg,) if kind == "dicom" else ()
        self.scan_result: Scan | None = None
        self._modalities: list[str] = []

    def _group_key(self, path: Path, h: dicom_io.DicomHeader | None = None,
                   row: dict[str, Any] | None = None) -> str | None:
        """The user's ``--group-by`` value for one file (identifying), or None."""
        if self.group_kind == "folder":
            return f"folder\x1f{path.parent.resolve()}"
        value = ""
        if self.group_kind == "dicom" and h is not None and h.attrs:
            value = h.attrs.get(self.group_arg, "")
        elif self.group_kind == "column" and row is not None:
            value = str(row.get(self.group_arg) or "").strip()
        return f"{self.cfg.group_by}\x1f{value}" if value else None

    def _add_image(self, scan: Scan, path: Path, label: int, where: str, name_for_regex: str,
                   patient: str | None = None, split: str | None = None,
                   row: dict[str, Any] | None = None) -> None:
        try:
            shape, gray = _image_header(path)
        except Exception as e:  # PIL raises many types for unreadable files
            scan.skipped.append((str(path), f"unreadable_image ({type(e).__name__})"))
            return
        scan.shapes[shape] += 1
        scan.color |= not gray
        patient = (patient or _patient_from(self.regex, name_for_regex)
                   or self._group_key(path, row=row))
        scan.items.append(Item(str(path), label, "image", where, patient=patient, split=split))

    def _add_dicom_series(self, scan: Scan, files: list[tuple[Path, dicom_io.DicomHeader]],
                          label: int, where: str, patient: str | None = None,
                          split: str | None = None, row: dict[str, Any] | None = None) -> None:
        """Items for one series (or one file): every frame/slice, or the middle one."""
        files = sorted(files, key=lambda ph: ph[1].order)
        frames = [(p, h, f) for p, h in files for f in range(h.frames)]
        if self.cfg.slices == "middle":
            frames = [frames[len(frames) // 2]]
        for p, h, f in frames:
            scan.shapes[(h.rows, h.cols)] += 1
            scan.color |= h.color
            self._modalities.append(h.modality)
            pat = patient or h.patient_ref or self._group_key(p, h, row)
            scan.items.append(Item(str(p), label, "dicom", where, patient=pat, split=split,
                                   frame=f))

    def _dicom_header(self, scan: Scan, path: Path, where: str) -> dicom_io.DicomHeader | None:
        """The header, or None for a skipped (unreadable, burned-in) or quarantined file."""
        try:
            h = dicom_io.read_header(path, self.dicom_keywords)
        except dicom_io.DicomReadError as e:
            scan.skipped.append((str(path), e.reason))
            return None
        if h.burned_in:
            scan.skipped.append((str(path), "burned_in_annotation"))
            return None
        risk = dicom_io.burned_in_risk(h)
        if risk and not self.cfg.accept_burned_in_risk:
            scan.quarantined.append((str(path), where, risk))
            return None
        if risk:
            scan.accepted_risk[risk] += 1
        return h

    def read(self, item: Item) -> tuple[np.ndarray, dict[str, Any]]:
        """uint8 pixels (HxW or HxWx3, source size) and non-identifying metadata."""
        if item.kind == "dicom":
            try:
                return dicom_io.read_frame(item.ref, item.frame, self.window)
            except dicom_io.DicomReadError as e:
                raise ReadSkip(e.reason, e.detail) from None
        try:
            with Image.open(item.ref) as im:
                im.load()
                return pil_to_array(im), {}
        except Exception as e:  # PIL raises many types for corrupt data
            raise ReadSkip("corrupt_image", type(e).__name__) from None

    def modality_word(self) -> str | None:
        return dicom_io.modality_word(self._modalities) if self._modalities else None


class ImageFolderSource(FileSource):
    """``SRC/<class>/**/<image>``: class names are the folder names."""

    def scan(self) -> Scan:
        dirs = _class_dirs(Path(self.cfg.src), self.cfg.class_names)
        scan = Scan([], [d.name for d in dirs])
        n = 0
        for label, d in enumerate(dirs):
            for p in tqdm(_visible_files(d), desc=f"scan {label + 1}/{len(dirs)}", leave=False):
                n += 1
                if p.suffix.lower() not in IMAGE_SUFFIXES:
                    scan.skipped.append((str(p), "not_an_image_file"))
                    continue
                self._add_image(scan, p, label, f"file {n}", p.relative_to(d).as_posix())
        return scan


class DicomSource(FileSource):
    """``SRC/<class>/**/<DICOM files>``; files of one series are grouped (``--slices``)."""

    def scan(self) -> Scan:
        dirs = _class_dirs(Path(self.cfg.src), self.cfg.class_names)
        scan = Scan([], [d.name for d in dirs])
        n = 0
        for label, d in enumerate(dirs):
            series: dict[str, list[tuple[Path, dicom_io.DicomHeader]]] = {}
            for p in tqdm(_visible_files(d), desc=f"scan {label + 1}/{len(dirs)}", leave=False):
                n += 1
                h = self._dicom_header(scan, p, f"file {n}")
                if h is not None:
                    series.setdefault(h.series_ref or f"file:{p}", []).append((p, h))
            for files in series.values():
                self._add_dicom_series(scan, files, label, f"file {n}")
        scan.modality = self.modality_word()
        return scan


class CsvSource(FileSource):
    """A CSV manifest: path, label, optional patient id, optional split (header names are
    matched case-insensitively, see ``_CSV_COLUMNS``); paths are relative to the CSV's folder.
    DICOM files (``.dcm`` or the DICM magic) are read as DICOM."""

    def scan(self) -> Scan:
        path = Path(self.cfg.src)
        if not path.is_file():
            raise FileNotFoundError(f"CSV manifest {path} does not exist")
        try:
            with open(path, newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                header = reader.fieldnames or []
                rows = list(reader)
        except (UnicodeDecodeError, csv.Error) as e:
            raise DatasetError(f"{path} is not a readable UTF-8 CSV file ({type(e).__name__}: "
                               f"{str(e)[:80]}); save it as CSV UTF-8") from None
        col = {k: next((h for h in header if h.strip().lower() in names), None)
               for k, names in _CSV_COLUMNS.items()}
        for req in ("path", "label"):
            if col[req] is None:
                raise DatasetError(f"{path}: no {req} column; its columns are {header}, "
                                   f"expected one of {list(_CSV_COLUMNS[req])}")
        if self.group_kind == "column" and self.group_arg not in header:
            raise DatasetError(f"{path}: --group-by {self.cfg.group_by} names no column; its "
                               f"columns are {header}")
        if not rows:
            raise DatasetError(f"{path} lists no images")
        labels = [str(r[col["label"]]).strip() for r in rows]
        names, index = self._classes(labels)
        scan = Scan([], names)
        splits = [self._split(r.get(col["split"]) if col["split"] else None, i + 2)
                  for i, r in enumerate(rows)]
        if any(splits) and not all(splits):
            first = next(i for i, s in enumerate(splits) if not s) + 2
            raise DatasetError(f"{path}: the split column is empty on row {first} but set on others; "
                               f"fill it for every row (train, val, test) or remove the column")
        for i, r in enumerate(tqdm(rows, desc="scan csv", leave=False)):
            where = f"row {i + 2}"
            p = Path(str(r[col["path"]]).strip())
            p = p if p.is_absolute() else path.parent / p
            patient = (str(r.get(col["patient"]) or "").strip() or None) if col["patient"] else None
            if not p.is_file():
                scan.skipped.append((str(p), "missing_file"))
                continue
            label = index[labels[i]]
            if p.suffix.lower() == ".dcm" or dicom_io.is_dicom_file(p):
                h = self._dicom_header(scan, p, where)
                if h is not None:
                    self._add_dicom_series(scan, [(p, h)], label, where, patient, splits[i], r)
            else:
                self._add_image(scan, p, label, where, p.name, patient, splits[i], r)
        scan.modality = self.modality_word()
        return scan

    def _classes(self, labels: list[str]) -> tuple[list[str], dict[str, int]]:
        given = self.cfg.class_names
        if all(re.fullmatch(r"\d+", v) for v in labels):
            k = max(int(v) for v in labels) + 1
            if given and len(given) < k:
                raise DatasetError(f"labels go up to {k - 1} but --class-names names {len(given)} "
                                   f"classes; give one name per label index")
            names = list(given) if given else [f"class {i}" for i in range(k)]
            return names, {v: int(v) for v in set(labels)}
        names = list(given) if given else sorted(set(labels))
        unknown = sorted(set(labels) - set(names))
        if unknown:
            raise DatasetError(f"labels {unknown[:5]} are not in --class-names {names}")
        return names, {n: i for i, n in enumerate(names)}

    @staticmethod
    def _split(value: str | None, row: int) -> str | None:
        v = (value or "").strip().lower()
        if not v:
            return None
        if v not in _SPLIT_ALIASES:
            also = ", ".join(sorted(set(_SPLIT_ALIASES) - set(SPLITS)))
            raise DatasetError(f"row {row}: split {value!r} is not one of {', '.join(SPLITS)} "
                               f"(also accepted: {also})")
        return _SPLIT_ALIASES[v]


class MedMnistSource:
    """A MedMNIST ``.npz`` in its released layout: ``{train,val,test}_{images,labels}``.

    Read with ``numpy.load(allow_pickle=False)`` (no code can run); the official splits are
    kept. Class names come from ``medmnist_info`` for the known flags (file ``<flag>.npz`` or
    ``<flag>_<size>.npz``), else ``--class-names`` or ``class <i>``.
    """

    def __init__(self, cfg: ImportConfig):
        self.cfg = cfg
        self.arrays: dict[str, np.ndarray] = {}

    def scan(self) -> Scan:
        path = Path(self.cfg.src)
        if not path.is_file():
            raise FileNotFoundError(f"MedMNIST file {path} does not exist")
        try:
            npz = np.load(path, allow_pickle=False)
            files = set(npz.files)
        except Exception as e:  # not a zip / not an npz
            raise DatasetError(f"{path} is not a readable .npz file ({type(e).__name__})") from None
        present = [s for s in SPLITS if f"{s}_images" in files and f"{s}_labels" in files]
        if "train" not in present:
            raise DatasetError(f"{path} is not in the MedMNIST layout: it has {sorted(files)}, "
                               f"expected train_images, train_labels (and val_*, test_*)")
        flag = re.sub(r"_\d+$", "", path.stem.lower())
        modality, known = MEDMNIST.get(flag, (None, None))
        items: list[Item] = []
        shapes: Counter = Counter()
        color, n_classes = False, 0
        for split in present:
            try:
                images, labels = npz[f"{split}_images"], npz[f"{split}_labels"]
            except ValueError as e:
                if "pickle" in str(e):  # object arrays would need pickle: refused
                    raise DatasetError(f"{path}: {split} arrays need pickle to load ({e}); "
                                       f"refusing") from None
                raise DatasetError(f"{path}: {split} arrays are corrupt ({e}); download or "
                                   f"export the file again") from None
            except Exception as e:  # noqa: BLE001 - zipfile / zlib / OS errors of a damaged archive
                raise DatasetError(f"{path} is damaged ({type(e).__name__} reading {split}); "
                                   f"download or export the file again") from None
            if len(images) == 0 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
                raise DatasetError(f"{path}: {split} holds no images or non-integer labels "
                                   f"(shape {images.shape}, labels {labels.dtype}); expected "
                                   f"the MedMNIST layout")
            if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] != 3):
                raise DatasetError(f"{path}: {split}_images has shape {images.shape}; expected "
                                   f"(N, H, W) or (N, H, W, 3) 2D images (3D MedMNIST is not "
                                   f"supported)")
            labels = labels.reshape(len(labels), -1)
            if labels.shape[1] != 1:
                raise DatasetError(f"{path}: {split}_labels has {labels.shape[1]} labels per image "
                                   f"(multi-label, e.g. ChestMNIST); medfake datasets hold one "
                                   f"class per image")
            if len(labels) != len(images):
                raise DatasetError(f"{path}: {split} has {len(images)} images but "
                                   f"{len(labels)} labels")
            self.arrays[split] = images
            color |= images.ndim == 4
            shapes[images.shape[1:3]] += len(images)
            n_classes = max(n_classes, int(labels.max()) + 1)
            items += [Item(f"{split}/{i}", int(labels[i, 0]), "array", f"{split}[{i}]",
                           split=split) for i in range(len(images))]
        names = list(self.cfg.class_names or known or [f"class {i}" for i in range(n_classes)])
        if len(names) < n_classes:
            raise ValueError(f"labels go up to {n_classes - 1} but {len(names)} class names are "
                             f"known; pass --class-names with one name per label index")
        return Scan(items, names, shapes, color, self.cfg.modality or modality, [],
                    readable_keys=True)

    def read(self, item: Item) -> tuple[np.ndarray, dict[str, Any]]:
        split, i = item.ref.split("/")
        return to_uint8(np.ascontiguousarray(self.arrays[split][int(i)])), {}

    def key_stem(self) -> str:
        """The known MedMNIST flag, else ``medmnist`` (never the user's file name)."""
        flag = re.sub(r"_\d+$", "", Path(self.cfg.src).stem.lower())
        return flag if flag in MEDMNIST else "medmnist"


def make_source(cfg: ImportConfig):
    return {"imagefolder": ImageFolderSource, "dicom": DicomSource, "csv": CsvSource,
            "medmnist": MedMnistSource}[cfg.source](cfg)
