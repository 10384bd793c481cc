"""``medfake data import``: scan, de-identify, split and write dataset shards, resumably.

The job is planned up front: the source is scanned (headers only), every item gets its
pseudonymous key, patient id and split, and each split's items are cut, in a seeded order that
mixes classes and patients, into shards of ``samples_per_shard``. A fingerprint of the plan is
kept in ``import_job.json``; re-running the same import after a kill writes only the shards
that are missing, and an import of different data or settings into the same directory is
refused. Items that cannot be read are skipped, counted per reason (``dataset.json``
provenance) and warned about at a limited rate; their source paths are returned to the caller
(``ImportResult.skipped_refs``) but never logged or written, since paths may name patients.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..core.atomic import atomic_write_json, sha256_file
from ..core.errors import DatasetError
from ..data.format import Sample, shard_name
from ..data.reader import SkipLog, split_patients
from ..data.writer import finalize_dataset, list_shards, write_shard
from .config import ImportConfig, class_phrase, prompt_templates, slug
from .deid import Pseudonymizer, load_salt, pixel_sha256, quiet_source_parsers
from .imaging import fit_size, set_channels
from .sources import Item, ReadSkip, Scan, make_source
from .splits import assign_splits, check_given_splits, groups_per_split
from .textdetect import DETECT_REASON, TextDetector

log = logging.getLogger(__name__)
JOB_FILE = "import_job.json"
ACCEPT_FLAG = "--accept-burned-in-risk"


@dataclass
class ImportResult:
    """What an import wrote. ``skipped_refs`` holds source paths (of skipped and quarantined
    files): show them only on request. ``quarantined`` lists files by position, never path."""

    out: Path
    counts: dict[str, int]
    skipped: dict[str, int]
    skipped_refs: list[tuple[str, str]]
    split_method: str
    quarantined: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (where, why)


def _stable_int(*parts: object) -> int:
    """A stable 63-bit integer from parts (``engine.seeding.derive_seed``'s recipe, without
    importing torch into the importer)."""
    h = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def _decide_size(size: int | None, shapes: Counter) -> int:
    if size:
        return size
    if len(shapes) == 1:
        (h, w), = shapes
        if h == w:
            return int(h)
    common = ", ".join(f"{h}x{w} ({n})" for (h, w), n in shapes.most_common(3))
    raise ValueError(f"the source images are not all one square size (most common: {common}); "
                     f"pass --size N, and --resize crop|pad for non-square images")


def _keys(items: list[Item], scan: Scan, source: Any, pz: Pseudonymizer) -> list[str]:
    if scan.readable_keys:
        stem = source.key_stem()
        return [f"{stem}_{it.split}_{int(it.ref.split('/')[1]):06d}" for it in items]
    keys = [f"{'dcm' if it.kind == 'dicom' else 'img'}_{pz.pseudonym('ref', it.ref)}"
            + (f"_{it.frame}" if it.frame else "") for it in items]
    first: dict[str, str] = {}
    for k, it in zip(keys, items):
        if k in first:
            raise DatasetError(f"{first[k]} and {it.where} are the same image file; list each "
                               f"image once")
        first[k] = it.where
    return keys


def _no_identity_error(items: list[Item], unknown: list[int]) -> DatasetError:
    eg = ", ".join(items[i].where for i in unknown[:3])
    return DatasetError(
        f"{len(unknown)} of {len(items)} images have no patient identity (e.g. {eg}), so medfake "
        f"cannot keep one patient's images out of two splits. Give each a patient (a CSV patient "
        f"column, DICOM PatientID, --patient-regex for file names), or group them with --group-by "
        f"folder|dicom:KEYWORD|column:NAME, or put them all in one split with "
        f"--unknown-patients-to train|val|test.")


def _assign_splits(items: list[Item], patients: list[str | None], groups: list[str],
                   cfg: ImportConfig) -> tuple[list[str], str]:
    """A split per item and how it was chosen: the source's own splits (checked per patient),
    else a seeded patient-grouped split; items without patient identity are refused unless
    ``unknown_patients_to`` puts them all into one split (see ``ImportConfig``)."""
    unknown = [i for i, p in enumerate(patients) if not p]
    if all(it.split for it in items):
        splits = [str(it.split) for it in items]
        check_given_splits(splits, groups, [it.where for it in items], "patient")
        method = "the source's own splits"
        if unknown:
            method += f" ({len(unknown)} image(s) without patient identity placed by the source)"
    else:
        if unknown and cfg.unknown_patients_to is None:
            raise _no_identity_error(items, unknown)
        splits = [str(cfg.unknown_patients_to)] * len(items)
        known = [i for i, p in enumerate(patients) if p]
        parts = []
        if known:
            sub = assign_splits([items[i].label for i in known], [groups[i] for i in known],
                                cfg.val_fraction, cfg.test_fraction, cfg.seed, "patient")
            for i, s in zip(known, sub):
                splits[i] = s
            parts.append("seeded stratified split, grouped by patient")
        if unknown:
            parts.append(f"{len(unknown)} image(s) without patient identity all in "
                         f"{cfg.unknown_patients_to} (--unknown-patients-to)")
        method = "; ".join(parts)
    for it, s in zip(items, splits):
        it.split = s
    return splits, method


def _verify_written_splits(out: Path) -> None:
    """The import's own ``data check`` rule on what it wrote: no patient in two splits."""
    leaks = {p: s for p, s in split_patients(out).items() if len(s) > 1}
    if leaks:
        pid, splits = next(iter(leaks.items()))
        raise DatasetError(f"{out}: {len(leaks)} patient(s) ended up in two splits (e.g. {pid} in "
                           f"{sorted(splits)}); this is a bug, do not use the dataset. Delete "
                           f"{out} and report it.")


def _cut_shards(splits: list[str], cfg: ImportConfig) -> list[tuple[str, int, list[int]]]:
    """``(split, shard index, item indices)``; each split in a seeded order that mixes classes
    and patients across shards."""
    shards = []
    for split in sorted(set(splits)):
        idx = [i for i, s in enumerate(splits) if s == split]
        rng = np.random.default_rng(_stable_int(cfg.seed, "import-order", split))
        idx = [idx[j] for j in rng.permutation(len(idx))]
        for n, start in enumerate(range(0, len(idx), cfg.samples_per_shard)):
            shards.append((split, n, idx[start:start + cfg.samples_per_shard]))
    return shards


def _plan_fingerprint(cfg: ImportConfig, salt_id: str, plan: list[tuple[str, list[list]]]) -> str:
    blob = json.dumps({"config": cfg.public(), "salt_id": salt_id, "plan": plan}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _open_job(out: Path, fingerprint: str) -> dict[str, Any]:
    path = out / JOB_FILE
    if path.is_file():
        job = json.loads(path.read_text())
        if job.get("fingerprint") != fingerprint:
            raise DatasetError(f"{out} holds an import of other data or with other settings "
                               f"(the source files, options or salt differ). Use a new --out, or "
                               f"delete {out} to start over.")
        return job
    if (out / "dataset.json").exists() or any(out.glob("*.tar")):
        raise DatasetError(f"{out} already holds a dataset not written by this import; choose "
                           f"an empty --out directory")
    out.mkdir(parents=True, exist_ok=True)
    job = {"fingerprint": fingerprint, "skipped": {}}
    atomic_write_json(path, job)
    return job


def _shard_done(out: Path, name: str) -> bool:
    for rec in list_shards(out, name.split("-")[0]):
        if rec.name == name:
            return sha256_file(out / name) == rec.sha256
    return False


def import_dataset(cfg: ImportConfig) -> ImportResult:
    """Run (or resume) one import; see the module docstring and ``ImportConfig``."""
    with quiet_source_parsers():
        return _import(cfg)


def _import(cfg: ImportConfig) -> ImportResult:
    out = Path(cfg.out)
    detector = TextDetector() if cfg.detect_text else None  # fails before anything is written
    pz = Pseudonymizer(load_salt(cfg.salt_file))
    source = make_source(cfg)
    scan = source.scan()
    skipped_refs = list(scan.skipped) + [(ref, reason) for ref, _, reason in scan.quarantined]
    scan_skips = Counter(reason.split(" ")[0] for _, reason in scan.skipped)
    quarantined = [(where, reason) for _, where, reason in scan.quarantined]
    if not scan.items:
        q = f"; quarantined for possible burned-in text: {len(quarantined)} ({ACCEPT_FLAG} " \
            f"imports them)" if quarantined else ""
        raise DatasetError(f"the {cfg.source} source holds no importable images "
                           f"(skipped: {dict(scan_skips) or 'none found'}{q})")
    size = _decide_size(cfg.size, scan.shapes)
    channels = cfg.channels or (3 if scan.color else 1)
    names = [slug(n) for n in scan.class_names]
    if len(set(names)) != len(names):
        raise ValueError(f"class names {scan.class_names} collide after making them key-safe "
                         f"({names}); rename the classes")
    templates = prompt_templates(names, [class_phrase(n) for n in scan.class_names],
                                 cfg.modality or scan.modality or "medical", cfg.templates)

    items = scan.items
    patients = [pz.patient(it.patient) if it.patient else None for it in items]
    groups = [p or "g-" + pz.pseudonym("item", it.ref) for p, it in zip(patients, items)]
    splits, method = _assign_splits(items, patients, groups, cfg)
    keys = _keys(items, scan, source, pz)
    shards = _cut_shards(splits, cfg)
    plan = [(shard_name(s, n), [[keys[i], items[i].label] for i in chunk])
            for s, n, chunk in shards]
    job = _open_job(out, _plan_fingerprint(cfg, pz.salt_id, plan))

    todo = [sh for sh in shards if not _shard_done(out, shard_name(sh[0], sh[1]))]
    log.info("import: %d images, %d classes, split by %s; %d of %d shards to write",
             len(items), len(names), method, len(todo), len(shards))
    skips = SkipLog("import", logger=log)
    bar = tqdm(total=sum(len(c) for *_, c in todo), desc="import", unit="img")
    for split, n, chunk in todo:
        before = Counter(skips.counts)
        samples = []
        for i in chunk:
            bar.update(1)
            try:
                image, meta = source.read(items[i])
            except ReadSkip as e:
                skips.skip(e.reason, items[i].where, e.detail)
                skipped_refs.append((items[i].ref, e.reason))
                continue
            if detector is not None and detector.has_text(image):
                skips.skip(DETECT_REASON, items[i].where, "text found in the pixels")
                skipped_refs.append((items[i].ref, DETECT_REASON))
                quarantined.append((items[i].where, DETECT_REASON))
                continue
            image = set_channels(fit_size(image, size, cfg.resize), channels)
            caps = templates[names[items[i].label]]
            meta = {**meta, "source": f"import:{cfg.source}", "split": split,
                    "class_name": names[items[i].label], "image_sha256": pixel_sha256(image),
                    **({"patient_id": patients[i]} if patients[i] else {})}
            samples.append(Sample(keys[i], image, items[i].label,
                                  caps[_stable_int(cfg.seed, keys[i]) % len(caps)], meta))
            skips.ok()
        write_shard(out, split, n, samples, names)
        job["skipped"][shard_name(split, n)] = dict(skips.counts - before)
        atomic_write_json(out / JOB_FILE, job)
    bar.close()

    skipped = Counter(scan_skips)
    for c in job["skipped"].values():
        skipped.update(c)
    provenance = {
        "importer": cfg.source, "settings": cfg.public(), "split_method": method,
        "groups_per_split": groups_per_split(splits, groups),
        "deid": {"method": "HMAC-SHA256 pseudonyms (64 bit) of patient ids and file "
                           "references; DICOM attributes by allow-list", "salt_id": pz.salt_id},
        "skipped": dict(skipped),
        "quarantined": {**dict(Counter(r for _, r in quarantined if r != DETECT_REASON)),
                        **({DETECT_REASON: skipped[DETECT_REASON]}
                           if skipped.get(DETECT_REASON) else {})},
        "burned_in_risk_accepted": dict(scan.accepted_risk),
        "patient_identity": {"known": sum(1 for p in patients if p),
                             "unknown": sum(1 for p in patients if not p),
                             "unknown_split": ("source" if method.startswith("the source")
                                               else cfg.unknown_patients_to)}}
    info = finalize_dataset(out, names, templates, provenance, size, channels)
    _verify_written_splits(out)
    counts = {s: v["count"] for s, v in info["splits"].items()}
    if skipped:
        log.warning("import: skipped %d source item(s): %s (paths are not logged; `medfake data "
                    "import ... --show-skipped` prints them)", sum(skipped.values()),
                    ", ".join(f"{k}={v}" for k, v in sorted(skipped.items())))
    if quarantined:
        log.warning("import: quarantined %d file(s) that may hold burned-in text (DICOM without "
                    "BurnedInAnnotation=NO, or text found by --detect-text): %s. They are not "
                    "imported; check their pixels (DICOM ones import into a new --out with %s)",
                    len(quarantined),
                    ", ".join(f"{w} ({r})" for w, r in quarantined[:20])
                    + (" ..." if len(quarantined) > 20 else ""), ACCEPT_FLAG)
    if scan.accepted_risk:
        log.warning("import: %d file(s) at risk of burned-in text imported under %s (the user "
                    "takes responsibility)", sum(scan.accepted_risk.values()), ACCEPT_FLAG)
    log.info("import: wrote %s", ", ".join(f"{s} {c}" for s, c in counts.items()))
    return ImportResult(out, counts, dict(skipped), skipped_refs, method, quarantined)
