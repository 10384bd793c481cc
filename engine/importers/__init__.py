"""Importers: real data (ImageFolder, MedMNIST ``.npz``, CSV manifest, DICOM) -> medfake datasets.

``import_dataset(ImportConfig(source, src, out, ...))`` writes the dataset format of
``engine/dataset.py`` with de-identified metadata (``engine/deid.py``), patient-level splits
and prompt templates; ``medfake data import`` is its command line.
"""
from __future__ import annotations

import importlib
from typing import Any

# exported lazily (PEP 562), so the CLI imports ImportConfig without the readers
_EXPORTS = {"SOURCES": "config", "ImportConfig": "config", "ImportResult": "job",
            "import_dataset": "job"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
