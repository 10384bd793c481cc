"""`medfake eval quality` and `medfake eval memorization`: load datasets, run the metrics, write
the artifacts (``quality.json``; ``memorization.json``, ``memorization_pairs.png``,
``memorization_hist.png``). The metrics live in ``engine.sample_quality`` and
``engine.memorization``; this module only reads, checks and writes.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from PIL import Image

from ..engine.core.errors import DatasetError
from ..engine.data.format import SplitArrays
from ..engine.data.reader import DatasetInfo, load_split

log = logging.getLogger(__name__)


def _load_pair(real: str, real_split: str, synthetic: str, synthetic_split: str
               ) -> tuple[DatasetInfo, SplitArrays, SplitArrays]:
    """Both splits, after checking the datasets share their class names."""
    info_r, info_s = DatasetInfo.load(real), DatasetInfo.load(synthetic)
    if info_r.class_names != info_s.class_names:
        raise DatasetError(f"class names differ: {real} has {info_r.class_names}, {synthetic} "
                           f"has {info_s.class_names}; synthesise from the same real dataset")
    return info_r, load_split(real, real_split), load_split(synthetic, synthetic_split)


def _provenance(real: str, real_split: str, synthetic: str, synthetic_split: str) -> dict:
    return {"real": str(Path(real).resolve()), "real_split": real_split,
            "synthetic": str(Path(synthetic).resolve()), "synthetic_split": synthetic_split}


def eval_quality(real: str, synthetic: str, out: str, split: str = "test",
                 synthetic_split: str = "train", encoder: str = "pixel") -> Path:
    """Write ``OUT/quality.json`` (``sample_quality.quality_report`` plus the inputs)."""
    from ..engine.evaluation.quality import load_encoder, quality_report
    enc = load_encoder(encoder)
    info, r, s = _load_pair(real, split, synthetic, synthetic_split)
    report = quality_report(r, s, enc, info.class_names)
    report.update(_provenance(real, split, synthetic, synthetic_split), encoder_spec=encoder)
    path = Path(out) / "quality.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n")
    return path


def eval_memorization(real: str | None, synthetic: str, out: str, real_split: str = "train",
                      synthetic_split: str = "train", encoder: str = "pixel",
                      threshold: float | None = None, max_pairs: int = 16) -> dict:
    """Write ``memorization.json``, ``memorization_pairs.png``, ``memorization_hist.png`` into
    ``out``; return the JSON summary.

    ``real`` None: audit against what the generator learned from, read from the synthetic
    dataset's records (``pipelines.lineage``); an error when they do not say."""
    from ..engine.evaluation.memorization import (
        audit_memorization,
        distance_histogram,
        pair_grid,
    )
    from ..engine.evaluation.quality import load_encoder
    if threshold is not None and threshold < 0:
        raise ValueError(f"--threshold must be >= 0, got {threshold}")
    enc = load_encoder(encoder)
    if real is None:
        from .lineage import dataset_lineage, load_references
        lin = dataset_lineage(synthetic)
        if not lin.references:
            raise DatasetError(f"{lin.unknown}. Pass --real DIR (and --real-split): the data "
                               f"the generator learned from")
        s = load_split(synthetic, synthetic_split)
        r = load_references(lin.references)
        where = {"reference": "the generator's training data",
                 "sources": [x.describe() for x in lin.references],
                 "synthetic": str(Path(synthetic).resolve()), "synthetic_split": synthetic_split,
                 **({"incomplete": lin.unknown} if lin.unknown else {})}
    else:
        _, r, s = _load_pair(real, real_split, synthetic, synthetic_split)
        where = {"reference": "--real", **_provenance(real, real_split, synthetic,
                                                      synthetic_split)}
    audit = audit_memorization(s, r, enc, threshold)
    outdir = Path(out)
    outdir.mkdir(parents=True, exist_ok=True)
    summary = {**audit.to_json(), **where, "encoder_spec": encoder}
    (outdir / "memorization.json").write_text(json.dumps(summary, indent=1) + "\n")
    Image.fromarray(pair_grid(audit, s, r, max_pairs=max_pairs)).save(
        outdir / "memorization_pairs.png")
    distance_histogram(audit, outdir / "memorization_hist.png")
    return summary
