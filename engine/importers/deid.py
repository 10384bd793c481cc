"""De-identification of imported data: salted pseudonyms and an allow-list of DICOM attributes.

Contract (what the importers rely on and ``tests/test_deid.py`` checks byte by byte):

- Identifying values (patient ids and names, file paths, DICOM UIDs) never reach an output:
  pixels, keys, captions, sample json, ``dataset.json``, log lines. Where an output needs to
  refer to one (a patient id for patient-level splits, a sample key) it holds a pseudonym:
  HMAC-SHA256 of the value under a secret salt, truncated to 16 hex digits (64 bits). Without
  the salt, trying every plausible patient id does not reverse it; with the same salt the same
  patient always gets the same pseudonym, so later imports stay consistent.
- The salt is never written into an output (files, logs, messages). It comes from a file, in
  order: ``--salt-file``, ``$MEDFAKE_DEID_SALT_FILE`` (a path, not a secret), else the
  per-user secret ``$MEDFAKE_CACHE/secrets/deid_salt`` (``~/.cache/medfake`` by default),
  created with mode 0600 on first use. ``$MEDFAKE_DEID_SALT`` (the salt itself) is still
  accepted before the default file but warned against: the environment of a process is
  readable through ``/proc/<pid>/environ`` and ends up in job scripts and shell histories. Outputs record only ``salt_id``, a one-way fingerprint that tells
  whether two datasets were pseudonymised with the same salt.
- DICOM metadata reaches sample json only through ``DICOM_META_ALLOWED`` (technical,
  non-identifying attributes). Names, ids, dates, times, UIDs, institution, device serials,
  free text and private tags are never copied.
- Pixels are not scrubbed: images flagged ``BurnedInAnnotation == YES`` (text burnt into the
  pixels) are skipped, and DICOM files at risk of unflagged burned-in text are quarantined
  (``dicom.burned_in_risk``) unless the user accepts the risk. Text burnt into non-DICOM
  images (PNG/JPEG screenshots) cannot be detected from metadata; that stays the user's duty.
"""
from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..core.paths import secret_file

log = logging.getLogger(__name__)

SALT_ENV = "MEDFAKE_DEID_SALT"            # the salt itself: accepted, warned against
SALT_FILE_ENV = "MEDFAKE_DEID_SALT_FILE"  # a path to the salt file
MIN_SALT_BYTES = 16

# Loggers of the parsers that read source files; at DEBUG they print parsed values (PIL logs
# every EXIF tag, e.g. an ImageDescription holding a patient's name).
SOURCE_PARSER_LOGGERS = ("PIL", "pydicom")

# Technical DICOM attributes that may be copied into sample metadata (keyword -> meta field).
DICOM_META_ALLOWED = {
    "Modality": "modality",
    "PhotometricInterpretation": "photometric",
    "PixelSpacing": "pixel_spacing",
    "SliceThickness": "slice_thickness",
    "BitsStored": "bits_stored",
}


def load_salt(salt_file: str | os.PathLike | None = None) -> bytes:
    """The de-identification salt (see the module contract for where it comes from)."""
    if salt_file is None and os.environ.get(SALT_FILE_ENV):
        salt_file = os.environ[SALT_FILE_ENV]
    if salt_file is not None:
        path = Path(salt_file)
        if not path.is_file():
            raise FileNotFoundError(f"salt file {path} does not exist. Create one with "
                                    f"`(umask 077; python -c \"import secrets; "
                                    f"print(secrets.token_hex(32))\" > {path})` and keep it "
                                    f"secret (not beside the data).")
        salt, where = path.read_bytes().strip(), f"salt file {path}"
        if path.stat().st_mode & 0o077:
            log.warning("salt file %s is readable by other users (mode %o); `chmod 600 %s`",
                        path, path.stat().st_mode & 0o777, path)
    elif os.environ.get(SALT_ENV):
        log.warning("the de-identification salt comes from $%s, which other processes of this "
                    "user can read (/proc/<pid>/environ) and job scripts and shell histories "
                    "record; put it in a mode-600 file and pass --salt-file (or $%s) instead",
                    SALT_ENV, SALT_FILE_ENV)
        salt, where = os.environ[SALT_ENV].encode(), f"${SALT_ENV}"
    else:
        path = secret_file("deid_salt")
        salt, where = path.read_bytes().strip(), f"salt file {path}"
        log.info("de-identification salt: %s (keep it; pseudonyms of later imports match only "
                 "with the same salt)", path)
    if len(salt) < MIN_SALT_BYTES:
        raise ValueError(f"the de-identification salt from {where} is {len(salt)} bytes; it must "
                         f"be at least {MIN_SALT_BYTES} random bytes (e.g. secrets.token_hex(32)).")
    return salt


@dataclass(frozen=True)
class Pseudonymizer:
    """Keyed one-way pseudonyms: ``pseudonym(kind, value)`` -> 16 hex digits."""

    salt: bytes

    def pseudonym(self, kind: str, value: str) -> str:
        msg = f"{kind}\x1f{value}".encode("utf-8", "surrogatepass")
        return hmac.new(self.salt, msg, hashlib.sha256).hexdigest()[:16]

    def patient(self, value: str) -> str:
        """The pseudonymous patient id written as ``patient_id`` in sample metadata."""
        return "pt-" + self.pseudonym("patient", value.strip())

    @property
    def salt_id(self) -> str:
        """A one-way fingerprint of the salt (safe to publish)."""
        return hashlib.sha256(b"medfake-salt-id\x1f" + self.salt).hexdigest()[:12]


@contextlib.contextmanager
def quiet_source_parsers() -> Iterator[None]:
    """While reading source files: parser loggers at ERROR and warnings ignored, since both
    can quote the identifying values being parsed."""
    loggers = [logging.getLogger(n) for n in SOURCE_PARSER_LOGGERS]
    old = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, old):
            lg.setLevel(level)


def dicom_safe_meta(ds: Any) -> dict[str, Any]:
    """The allow-listed attributes of a pydicom dataset as plain JSON values."""
    out: dict[str, Any] = {}
    for keyword, field in DICOM_META_ALLOWED.items():
        value = ds.get(keyword)
        if value is None or value == "":
            continue
        if keyword == "PixelSpacing":
            value = [float(v) for v in value]
        elif keyword == "SliceThickness":
            value = float(value)
        elif keyword == "BitsStored":
            value = int(value)
        else:
            value = str(value)
        out[field] = value
    return out


def pixel_sha256(image: np.ndarray) -> str:
    """Content hash of an image (shape, dtype and pixels): equal pixels, equal hash."""
    img = np.ascontiguousarray(image)
    h = hashlib.sha256(f"{img.dtype.str}{img.shape}".encode())
    h.update(img.tobytes())
    return h.hexdigest()
