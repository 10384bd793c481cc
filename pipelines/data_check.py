"""``medfake data check DIR [--synthetic DIR ...]``: is this dataset intact and leak-free?

Checks, each reported as a problem kind with a count and a few examples:

- integrity: every shard listed in ``dataset.json`` exists and matches its sha256; its
  manifest, its tar members and ``dataset.json`` agree on keys, counts and per-class counts;
  every sample decodes with the dataset's mode and size and a valid ``cls``; no visible shard
  is missing from ``dataset.json`` (an interrupted job); no key appears twice.
- leakage inside the real dataset: no patient id and no image (pixel sha256) in two splits;
  in an imported dataset, samples without a patient id sit in the one split the import put
  them in (``--unknown-patients-to``), unless the source's own splits placed them.
- leakage through synthetic data: every sample derived from a real image (meta ``source_key``;
  required for inpaint / outpaint / img2img / classic augmentation) names a key of the real
  dataset's ``train`` split, never ``val`` or ``test``; no synthetic image is pixel-identical
  to a real val/test image. Text-to-image samples have no ``source_key``.

Leftover temporary files of interrupted writes are reported as notes: they are never read as
shards and are safe to delete. Patient ids in the report are the datasets' own (pseudonymous
for imported data).
"""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from tqdm import tqdm

from ..engine.data.format import SHARD_RE
from ..engine.data.reader import DatasetInfo, SampleValidator, SkipLog, iter_shard_tolerant
from ..engine.importers.deid import pixel_sha256

DERIVED_MODES = {"inpaint", "outpaint", "inpaint-outpaint", "img2img"}
HELD_OUT = ("val", "test")
MAX_EXAMPLES = 5


@dataclass
class CheckReport:
    """Problems by kind (count + examples), notes, and counts per dataset and split."""

    datasets: list[dict[str, Any]] = field(default_factory=list)
    problem_counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problem_counts

    def problem(self, kind: str, example: str) -> None:
        self.problem_counts[kind] += 1
        if len(self.examples[kind]) < MAX_EXAMPLES:
            self.examples[kind].append(example)

    def text(self) -> str:
        lines = []
        for d in self.datasets:
            counts = ", ".join(f"{s} {n}" for s, n in d["counts"].items())
            lines.append(f"{d['role']:9s} {d['dir']}: {counts}")
        for kind, n in sorted(self.problem_counts.items()):
            lines.append(f"PROBLEM {kind}: {n}  e.g. " + "; ".join(self.examples[kind]))
        lines += [f"note: {n}" for n in self.notes]
        lines.append("check: OK" if self.ok else
                     f"check: {sum(self.problem_counts.values())} problem(s)")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "datasets": self.datasets, "problems": dict(self.problem_counts),
                "examples": dict(self.examples), "notes": self.notes}


@dataclass
class _Seen:
    """What one dataset holds, for the cross-split and cross-dataset checks."""

    key_split: dict[str, str] = field(default_factory=dict)
    patient_splits: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    no_patient: Counter = field(default_factory=Counter)  # split -> samples without patient_id
    hash_first: dict[str, dict[str, str]] = field(default_factory=lambda: defaultdict(dict))
    derived: list[tuple[str, str, dict[str, Any], str]] = field(default_factory=list)


def _scan(root: Path, role: str, report: CheckReport) -> _Seen:
    info = DatasetInfo.load(root)
    seen = _Seen()
    counts: dict[str, int] = {}
    for p in info.verify():
        report.problem("checksum", f"{root.name}: {p}")
    listed = {rec["name"] for s in info.splits.values() for rec in s["shards"]}
    for p in sorted(root.glob("*.tar")):
        if SHARD_RE.match(p.name) and p.name not in listed:
            report.problem("unlisted_shard", f"{root.name}/{p.name} is not in dataset.json (an "
                                             f"interrupted job? re-run it to finish)")
    tmp = sorted(root.glob(".*.tmp*"))
    if tmp:
        report.notes.append(f"{root.name}: {len(tmp)} leftover temporary file(s) of interrupted "
                            f"writes (never read as shards; safe to delete), e.g. {tmp[0].name}")
    for split, s in info.splits.items():
        n_split, per_class = 0, Counter()
        for rec in tqdm(s["shards"], desc=f"check {role} {split}", unit="shard", leave=False):
            n_split += _check_shard(root, info, split, rec, role, seen, per_class, report)
        counts[split] = n_split
        if n_split != s["count"]:
            report.problem("count_mismatch", f"{root.name}: dataset.json says {split} has "
                                             f"{s['count']} samples, its shards hold {n_split}")
        if {c: n for c, n in s["per_class"].items() if n} != {c: n for c, n in per_class.items()}:
            report.problem("count_mismatch", f"{root.name}: {split} per-class counts in "
                                             f"dataset.json differ from the shards' contents")
    report.datasets.append({"role": role, "dir": str(root), "counts": counts})
    return seen


def _check_shard(root: Path, info: DatasetInfo, split: str, rec: dict[str, Any], role: str,
                 seen: _Seen, per_class: Counter, report: CheckReport) -> int:
    path = root / rec["name"]
    try:
        manifest = json.loads(path.with_suffix(".json").read_text())
        mkeys = list(manifest["keys"])
    except (OSError, ValueError, KeyError):
        report.problem("manifest", f"{root.name}/{rec['name']}: manifest missing or unreadable")
        mkeys = None
    skips = SkipLog(f"check {root.name}/{rec['name']}", first=0, every=1e9)
    validator = SampleValidator(skips, info.image_size, info.channels, len(info.class_names))
    keys = []
    for smp in iter_shard_tolerant(path, validator):
        keys.append(smp.key)
        per_class[info.class_names[smp.cls]] += 1
        if smp.key in seen.key_split:
            report.problem("duplicate_key", f"{root.name}: {smp.key!r} in {seen.key_split[smp.key]}"
                                            f" and {split}")
        seen.key_split[smp.key] = split
        pid = smp.meta.get("patient_id")
        if pid:
            seen.patient_splits[str(pid)].add(split)
        else:
            seen.no_patient[split] += 1
        h = pixel_sha256(smp.image)
        seen.hash_first[h].setdefault(split, smp.key)
        if role == "synthetic":
            seen.derived.append((smp.key, split, smp.meta, h))
    for reason, n in skips.counts.items():
        report.problem(f"unreadable_sample:{reason}", f"{root.name}/{rec['name']}: {n} sample(s)")
    n = len(keys) + skips.n_skipped
    if n != rec["count"] or (mkeys is not None and (len(mkeys) != rec["count"] or
                                                    (not skips.n_skipped and keys != mkeys))):
        report.problem("count_mismatch", f"{root.name}/{rec['name']}: dataset.json count "
                                         f"{rec['count']}, manifest {len(mkeys or [])}, tar {n}")
    return len(keys)


def _unknown_patients(root: Path, seen: _Seen, report: CheckReport) -> None:
    identity = (DatasetInfo.load(root).provenance or {}).get("patient_identity")
    if not identity or identity.get("unknown_split") == "source":
        return
    want = identity.get("unknown_split")
    for split, n in sorted(seen.no_patient.items()):
        if split != want:
            report.problem("no_patient_identity", f"{root.name}: {n} {split} sample(s) without "
                           f"patient_id; the import placed those only in {want or 'no split'}")


def _cross_split(name: str, seen: _Seen, report: CheckReport) -> None:
    for pid, splits in seen.patient_splits.items():
        if len(splits) > 1:
            report.problem("patient_in_two_splits", f"{name}: patient {pid} in {sorted(splits)}")
    for first in seen.hash_first.values():
        if len(first) > 1:
            report.problem("image_in_two_splits", f"{name}: identical images " + ", ".join(
                f"{k!r} ({s})" for s, k in sorted(first.items())))


def _check_synthetic(name: str, real: _Seen, syn: _Seen, report: CheckReport) -> None:
    for key, _split, meta, h in syn.derived:
        src = meta.get("source_key")
        derived = meta.get("mode") in DERIVED_MODES or meta.get("generator") == "classic"
        if src is None:
            if derived:
                how = meta.get("mode") or meta.get("generator")
                report.problem("missing_source_key", f"{name}: {key!r} ({how}) records no "
                                                     f"source_key")
        elif src not in real.key_split:
            report.problem("unknown_source_key", f"{name}: {key!r} derives from {src!r}, which is "
                                                 f"not in the real dataset (wrong DIR?)")
        elif real.key_split[src] in HELD_OUT:
            report.problem("derived_from_held_out", f"{name}: {key!r} derives from {src!r} of "
                                                    f"the real {real.key_split[src]} split")
        held = {s: k for s, k in real.hash_first.get(h, {}).items() if s in HELD_OUT}
        for s, k in held.items():
            report.problem("copies_held_out_image", f"{name}: {key!r} is pixel-identical to real "
                                                    f"{s} image {k!r}")


def check_dataset(root: str | Path, synthetic: Sequence[str | Path] = ()) -> CheckReport:
    """Run every check on ``root`` and, against it, on each ``synthetic`` dataset."""
    report = CheckReport()
    root = Path(root)
    real = _scan(root, "real", report)
    _cross_split(root.name, real, report)
    _unknown_patients(root, real, report)
    for syn_dir in synthetic:
        syn = _scan(Path(syn_dir), "synthetic", report)
        _cross_split(Path(syn_dir).name, syn, report)
        _check_synthetic(Path(syn_dir).name, real, syn, report)
    return report
