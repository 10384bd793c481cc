"""Importers: real data (ImageFolder, MedMNIST ``.npz``, CSV manifest, DICOM) -> medfake datasets.

``import_dataset(ImportConfig(source, src, out, ...))`` writes the dataset format of
``engine/dataset.py`` with de-identified metadata (``engine/deid.py``), patient-level splits
and prompt templates; ``medfake data import`` is its command line.
"""
from .config import SOURCES, ImportConfig
from .job import ImportResult, import_dataset

__all__ = ["SOURCES", "ImportConfig", "ImportResult", "import_dataset"]
