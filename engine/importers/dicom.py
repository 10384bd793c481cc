"""DICOM files and series via pydicom: headers, frames, modality-appropriate 8-bit scaling.

Scaling (``Window``), applied after the modality LUT (``RescaleSlope``/``RescaleIntercept`` or a
Modality LUT Sequence, so CT pixels are Hounsfield units):

- ``auto`` (default): CT through one fixed window for the whole dataset (``abdomen``, level 50
  width 400), so a grey level means the same HU in every image; every other modality (MR, PET,
  X-ray, ...) per image from its 0.5th..99.5th percentile, since their units are not calibrated.
- a preset name (``abdomen``, ``liver``, ``lung``, ``mediastinum``, ``brain``, ``bone``) or
  ``LEVEL,WIDTH``: that window for every image of any modality.
- ``file``: each file's own first WindowCenter/WindowWidth (percentile when absent).

Windows follow the linear VOI function of DICOM PS3.3 C.11.2.1.2.1. MONOCHROME1 images are
inverted so that higher values are always brighter. Colour images (RGB, YBR: ultrasound,
photographs) are converted to RGB by pydicom and kept as 8-bit RGB.

Burned-in text (``burned_in_risk``): pixels cannot be scrubbed, so a file flagged
``BurnedInAnnotation == YES`` is never imported, and a file without that flag (absent or empty)
is quarantined when its modality commonly carries text burnt into the pixels (``US``, ``SC``,
``XC``, ``OT``: ultrasound annotations, screen captures, photographs, anything else) or its SOP
class is a Secondary Capture (screenshots and scanned documents of any modality). Only an
explicit ``BurnedInAnnotation == NO`` from the source clears such a file.

Nothing identifying leaves this module except inside ``DicomHeader`` (``patient_ref``,
``series_ref``, ``instance_ref``), which the importer only ever pseudonymises. pydicom's
warnings, which can quote element values, are silenced while reading.
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from .deid import dicom_safe_meta, quiet_source_parsers
from .imaging import robust_to_uint8, to_uint8

log = logging.getLogger(__name__)

WINDOW_PRESETS: dict[str, tuple[float, float]] = {  # name -> (level, width) in HU
    "abdomen": (50.0, 400.0), "liver": (30.0, 150.0), "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0), "brain": (40.0, 80.0), "bone": (400.0, 1800.0),
}
DEFAULT_CT_WINDOW = "abdomen"
MODALITY_WORDS = {"CT": "CT", "MR": "MRI", "CR": "X-ray", "DX": "X-ray", "MG": "mammography",
                  "US": "ultrasound", "PT": "PET", "NM": "nuclear medicine", "XA": "angiography",
                  "RF": "fluoroscopy", "OP": "fundus photography", "OCT": "OCT",
                  "SM": "microscopy", "XC": "photograph"}


BURNED_IN_MODALITIES = ("US", "SC", "XC", "OT")
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"  # SC Image Storage and its multi-frame kin


class DicomReadError(Exception):
    """A DICOM file cannot be used; ``reason`` is a short skip reason, never identifying."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


def parse_window(spec: str) -> str | tuple[float, float]:
    """``auto`` / ``file`` / a preset name / ``LEVEL,WIDTH`` -> normalised form; ValueError."""
    s = spec.strip().lower()
    if s in ("auto", "file"):
        return s
    if s in WINDOW_PRESETS:
        return WINDOW_PRESETS[s]
    try:
        level, width = (float(v) for v in s.split(","))
    except ValueError:
        raise ValueError(f"window {spec!r} is not valid; allowed: auto, file, "
                         f"{', '.join(WINDOW_PRESETS)}, or LEVEL,WIDTH (e.g. 40,400)") from None
    if width < 1:
        raise ValueError(f"window width must be >= 1, got {width}")
    return level, width


def apply_window(x: np.ndarray, level: float, width: float) -> np.ndarray:
    """DICOM linear VOI window (PS3.3 C.11.2.1.2.1) to uint8."""
    y = (np.asarray(x, dtype=np.float64) - (level - 0.5)) / max(width - 1.0, 1e-6) + 0.5
    return (np.clip(y, 0.0, 1.0) * 255.0).round().astype(np.uint8)


@contextlib.contextmanager
def _quiet_pydicom() -> Iterator[None]:
    """Silence pydicom's validation, warnings and logs (they may quote identifying values)."""
    import pydicom.config as cfg

    old = cfg.settings.reading_validation_mode
    cfg.settings.reading_validation_mode = cfg.IGNORE
    try:
        with quiet_source_parsers():
            yield
    finally:
        cfg.settings.reading_validation_mode = old


@dataclass
class DicomHeader:
    """What the importer needs from one file's header. ``*_ref`` fields are identifying."""

    patient_ref: str | None
    series_ref: str | None
    instance_ref: str | None
    modality: str
    rows: int
    cols: int
    frames: int
    color: bool
    burned_in: bool             # BurnedInAnnotation == YES
    order: tuple[float, float]  # (slice position along z, InstanceNumber) for sorting
    burned_in_tag: str = ""     # the BurnedInAnnotation value, upper case ("" when absent)
    sop_class: str = ""         # SOPClassUID (or the file meta's MediaStorageSOPClassUID)
    attrs: dict[str, str] | None = None  # the values of requested keywords (identifying)


def burned_in_risk(h: DicomHeader) -> str | None:
    """Why ``h``'s pixels may hold burned-in text although the file does not say so, or None
    (see the module docstring); never identifying."""
    if h.burned_in or h.burned_in_tag == "NO":
        return None
    if h.modality in BURNED_IN_MODALITIES:
        return f"burned_in_risk_{h.modality.lower()}"
    if h.sop_class.startswith(SECONDARY_CAPTURE_PREFIX):
        return "burned_in_risk_secondary_capture"
    return None


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True if the file has the DICOM Part 10 preamble magic ``DICM`` at offset 128."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def read_header(path: str | os.PathLike, keywords: tuple[str, ...] = ()) -> DicomHeader:
    """Parse a file's header (no pixel data); ``DicomReadError`` if it is not a usable image.
    ``keywords``: attributes whose string values are returned in ``attrs`` (identifying)."""
    try:
        with _quiet_pydicom():
            return _header(path, keywords)
    except DicomReadError:
        raise
    except Exception as e:  # pydicom raises many types for non-DICOM or corrupt files
        raise DicomReadError("not_dicom", type(e).__name__) from None


def _header(path: str | os.PathLike, keywords: tuple[str, ...] = ()) -> DicomHeader:
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    if "Rows" not in ds or "Columns" not in ds:
        raise DicomReadError("no_image", "no Rows/Columns (not an image object)")
    pos = ds.get("ImagePositionPatient")
    try:
        z = float(pos[2]) if pos is not None and len(pos) == 3 else 0.0
        inst = float(ds.get("InstanceNumber") or 0)
    except (TypeError, ValueError):
        z, inst = 0.0, 0.0
    patient = str(ds.get("PatientID") or "").strip() or str(ds.get("PatientName") or "").strip()
    burned = str(ds.get("BurnedInAnnotation") or "").strip().upper()
    sop = str(ds.get("SOPClassUID") or "").strip() or str(
        getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "") or "").strip()
    return DicomHeader(
        patient_ref=patient or None,
        series_ref=str(ds.get("SeriesInstanceUID") or "") or None,
        instance_ref=str(ds.get("SOPInstanceUID") or "") or None,
        modality=str(ds.get("Modality") or "OT").upper(),
        rows=int(ds.Rows), cols=int(ds.Columns), frames=int(ds.get("NumberOfFrames") or 1),
        color=int(ds.get("SamplesPerPixel") or 1) == 3,
        burned_in=burned == "YES", order=(z, inst), burned_in_tag=burned, sop_class=sop,
        attrs={k: str(ds.get(k) or "").strip() for k in keywords})


def read_frame(path: str | os.PathLike, frame: int, window: str | tuple[float, float]
               ) -> tuple[np.ndarray, dict[str, Any]]:
    """One frame as uint8 (HxW, or HxWx3 for colour) plus non-identifying metadata;
    ``DicomReadError`` (never anything else) if the pixels cannot be decoded."""
    import pydicom

    ds = None
    try:
        with _quiet_pydicom():
            ds = pydicom.dcmread(path)
            return _frame(ds, frame, window)
    except DicomReadError:
        raise
    except Exception as e:  # pydicom and numpy raise many types for corrupt pixel data
        if _is_compressed(ds):
            raise DicomReadError("unsupported_compression",
                                 f"{type(e).__name__}; install pylibjpeg, pylibjpeg-libjpeg or "
                                 f"python-gdcm to decode compressed DICOM") from None
        raise DicomReadError("unreadable_pixels", type(e).__name__) from None


def _is_compressed(ds: Any) -> bool:
    """Whether ``ds`` declares a compressed transfer syntax (False for a corrupt or unknown
    UID, which pydicom reports by raising)."""
    try:
        return bool(ds.file_meta.TransferSyntaxUID.is_compressed)
    except Exception:  # noqa: BLE001 - missing meta, or "UID is not a transfer syntax"
        return False


def _frame(ds: Any, frame: int, window: str | tuple[float, float]
           ) -> tuple[np.ndarray, dict[str, Any]]:
    from pydicom.pixels import apply_modality_lut

    arr = ds.pixel_array
    if int(ds.get("NumberOfFrames") or 1) > 1:
        arr = arr[frame]
    meta = dicom_safe_meta(ds)
    if int(ds.get("SamplesPerPixel") or 1) == 3:
        meta["scaling"] = "rgb"
        return to_uint8(arr), meta
    modality = str(ds.get("Modality") or "OT").upper()
    values = apply_modality_lut(arr, ds).astype(np.float64)
    if window == "auto":
        window = WINDOW_PRESETS[DEFAULT_CT_WINDOW] if modality == "CT" else "percentile"
    if window == "file":
        window = _file_window(ds) or "percentile"
    if window == "percentile":
        out = robust_to_uint8(values)
        meta["scaling"] = "percentile 0.5-99.5"
    else:
        level, width = window
        out = apply_window(values, level, width)
        meta["scaling"] = f"window level {level:g} width {width:g}"
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        out = 255 - out
    return out, meta


def _file_window(ds: Any) -> tuple[float, float] | None:
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None:
        return None
    def first(v: Any) -> float:  # single-valued or MultiValue
        return float(v) if isinstance(v, (int, float)) else float(v[0])

    try:
        return first(center), max(first(width), 1.0)
    except (TypeError, ValueError, IndexError):
        return None


def modality_word(modalities: list[str]) -> str:
    """The caption word for the most common modality (``medical`` when unknown)."""
    if not modalities:
        return "medical"
    top = max(set(modalities), key=modalities.count)
    return MODALITY_WORDS.get(top, "medical")
