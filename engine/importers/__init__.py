"""Importers: real data (ImageFolder, MedMNIST ``.npz``, CSV manifest, DICOM) -> medfake datasets.

``import_dataset(ImportConfig(source, src, out, ...))`` writes the dataset format of
``engine/data/format.py`` with de-identified metadata (``importers/deid.py``), patient-level
splits and prompt templates; ``medfake data import`` is its command line.
"""
from __future__ import annotations

from ..core.lazy import lazy_exports

_EXPORTS = {"SOURCES": "config", "ImportConfig": "config", "ImportResult": "job",
            "import_dataset": "job"}
__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
