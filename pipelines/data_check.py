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

Memory is bounded whatever the sample count: samples stream one shard at a time, and what the
cross-split and cross-dataset checks need (key -> split, pixel hash -> first key per split,
patient -> splits) lives in an on-disk SQLite index in a temporary directory (``sqlite3`` from
the standard library: indexed lookups and GROUP BY without a hand-written external sort).
Synthetic samples are checked against the real index as they stream; nothing per sample is
kept in memory. Checksums and shards show tqdm progress.
"""
from __future__ import annotations

import json
import sqlite3
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from tqdm import tqdm

from ..engine.core.atomic import sha256_file
from ..engine.data.format import SHARD_RE
from ..engine.data.reader import (
    DatasetInfo,
    SampleValidator,
    SkipLog,
    iter_shard_tolerant,
)
from ..engine.importers.deid import pixel_sha256
from ..engine.synth.files import live_temporaries

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


class _Index:
    """The on-disk index of every dataset a check reads (dataset 0 is the real one)."""

    def __init__(self, path: Path):
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.executescript("""
            PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA cache_size=-65536;
            CREATE TABLE keys (ds INTEGER, key TEXT, split TEXT, PRIMARY KEY (ds, key));
            CREATE TABLE pix (ds INTEGER, hash TEXT, split TEXT, key TEXT,
                              PRIMARY KEY (ds, hash, split));
            CREATE TABLE pat (ds INTEGER, pid TEXT, split TEXT, PRIMARY KEY (ds, pid, split));
        """)
        self.db.execute("BEGIN")

    def add(self, ds: int, key: str, split: str, pid: str | None, h: str) -> str | None:
        """Record one sample; return the split that already holds ``key`` (a duplicate)."""
        try:
            self.db.execute("INSERT INTO keys VALUES (?, ?, ?)", (ds, key, split))
        except sqlite3.IntegrityError:
            return self.split_of(ds, key)
        self.db.execute("INSERT OR IGNORE INTO pix VALUES (?, ?, ?, ?)", (ds, h, split, key))
        if pid:
            self.db.execute("INSERT OR IGNORE INTO pat VALUES (?, ?, ?)", (ds, pid, split))
        return None

    def split_of(self, ds: int, key: str) -> str | None:
        row = self.db.execute("SELECT split FROM keys WHERE ds=? AND key=?", (ds, key)).fetchone()
        return row[0] if row else None

    def held_out_copies(self, ds: int, h: str) -> list[tuple[str, str]]:
        return self.db.execute(
            f"SELECT split, key FROM pix WHERE ds=? AND hash=? AND split IN "
            f"({','.join('?' * len(HELD_OUT))}) ORDER BY split", (ds, h, *HELD_OUT)).fetchall()

    def patients_in_two_splits(self, ds: int):
        return self.db.execute(
            "SELECT pid, group_concat(split, '\x1f') FROM pat WHERE ds=? GROUP BY pid "
            "HAVING COUNT(*) > 1 ORDER BY min(rowid)", (ds,))

    def images_in_two_splits(self, ds: int):
        return self.db.execute(
            "SELECT group_concat(split || '\x1e' || key, '\x1f') FROM pix WHERE ds=? "
            "GROUP BY hash HAVING COUNT(*) > 1 ORDER BY min(rowid)", (ds,))

    def close(self) -> None:
        self.db.execute("COMMIT")
        self.db.close()


@dataclass
class _Scan:
    """Where one dataset's samples go: the index, its number, and (synthetic) the checks
    against the real dataset (number 0), run as each sample streams past."""

    index: _Index
    ds: int
    name: str
    against_real: bool = False
    no_patient: Counter = field(default_factory=Counter)  # split -> samples without patient_id


def _scan(root: Path, role: str, report: CheckReport, scan: _Scan) -> None:
    info = DatasetInfo.load(root)
    counts: dict[str, int] = {}
    shards = [rec for s in info.splits.values() for rec in s["shards"]]
    for rec in tqdm(shards, desc=f"checksums {role}", unit="shard", leave=False):
        p = root / rec["name"]
        if not p.exists():
            report.problem("checksum", f"{root.name}: missing {rec['name']}")
        elif sha256_file(p) != rec["sha256"]:
            report.problem("checksum", f"{root.name}: sha256 mismatch {rec['name']}")
    listed = {rec["name"] for rec in shards}
    for p in sorted(root.glob("*.tar")):
        if SHARD_RE.match(p.name) and p.name not in listed:
            report.problem("unlisted_shard", f"{root.name}/{p.name} is not in dataset.json (an "
                                             f"interrupted job? re-run it to finish)")
    tmp = sorted(root.glob(".*.tmp*"))
    live = set(live_temporaries(root))
    stray = [p for p in tmp if p not in live]
    if stray:
        report.notes.append(f"{root.name}: {len(stray)} leftover temporary file(s) of "
                            f"interrupted writes (never read as shards; safe to delete), e.g. "
                            f"{stray[0].name}")
    if live:
        report.notes.append(f"{root.name}: {len(live)} temporary file(s) being written by live "
                            f"processes right now (do not delete), e.g. {min(live).name}")
    for split, s in info.splits.items():
        n_split, per_class = 0, Counter()
        for rec in tqdm(s["shards"], desc=f"check {role} {split}", unit="shard", leave=False):
            n_split += _check_shard(root, info, split, rec, scan, per_class, report)
        counts[split] = n_split
        if n_split != s["count"]:
            report.problem("count_mismatch", f"{root.name}: dataset.json says {split} has "
                                             f"{s['count']} samples, its shards hold {n_split}")
        if {c: n for c, n in s["per_class"].items() if n} != {c: n for c, n in per_class.items()}:
            report.problem("count_mismatch", f"{root.name}: {split} per-class counts in "
                                             f"dataset.json differ from the shards' contents")
    report.datasets.append({"role": role, "dir": str(root), "counts": counts})


def _check_shard(root: Path, info: DatasetInfo, split: str, rec: dict[str, Any], scan: _Scan,
                 per_class: Counter, report: CheckReport) -> int:
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
        h = pixel_sha256(smp.image)
        pid = smp.meta.get("patient_id")
        if not pid:
            scan.no_patient[split] += 1
        dup = scan.index.add(scan.ds, smp.key, split, str(pid) if pid else None, h)
        if dup is not None:
            report.problem("duplicate_key", f"{root.name}: {smp.key!r} in {dup} and {split}")
        if scan.against_real:
            _check_synthetic_sample(scan, smp.key, smp.meta, h, report)
    for reason, n in skips.counts.items():
        report.problem(f"unreadable_sample:{reason}", f"{root.name}/{rec['name']}: {n} sample(s)")
    n = len(keys) + skips.n_skipped
    if n != rec["count"] or (mkeys is not None and (len(mkeys) != rec["count"] or
                                                    (not skips.n_skipped and keys != mkeys))):
        report.problem("count_mismatch", f"{root.name}/{rec['name']}: dataset.json count "
                                         f"{rec['count']}, manifest {len(mkeys or [])}, tar {n}")
    return len(keys)


def _unknown_patients(root: Path, scan: _Scan, report: CheckReport) -> None:
    identity = (DatasetInfo.load(root).provenance or {}).get("patient_identity")
    if not identity or identity.get("unknown_split") == "source":
        return
    want = identity.get("unknown_split")
    for split, n in sorted(scan.no_patient.items()):
        if split != want:
            report.problem("no_patient_identity", f"{root.name}: {n} {split} sample(s) without "
                           f"patient_id; the import placed those only in {want or 'no split'}")


def _cross_split(scan: _Scan, report: CheckReport) -> None:
    for pid, splits in scan.index.patients_in_two_splits(scan.ds):
        report.problem("patient_in_two_splits",
                       f"{scan.name}: patient {pid} in {sorted(splits.split(chr(0x1f)))}")
    for (pairs,) in scan.index.images_in_two_splits(scan.ds):
        first = sorted(tuple(p.split("\x1e")) for p in pairs.split("\x1f"))
        report.problem("image_in_two_splits", f"{scan.name}: identical images " + ", ".join(
            f"{k!r} ({s})" for s, k in first))


def _check_synthetic_sample(scan: _Scan, key: str, meta: dict[str, Any], h: str,
                            report: CheckReport) -> None:
    name, real = scan.name, scan.index
    src = meta.get("source_key")
    derived = meta.get("mode") in DERIVED_MODES or meta.get("generator") == "classic"
    if src is None:
        if derived:
            how = meta.get("mode") or meta.get("generator")
            report.problem("missing_source_key", f"{name}: {key!r} ({how}) records no "
                                                 f"source_key")
    else:
        src_split = real.split_of(0, str(src))
        if src_split is None:
            report.problem("unknown_source_key", f"{name}: {key!r} derives from {src!r}, which "
                                                 f"is not in the real dataset (wrong DIR?)")
        elif src_split in HELD_OUT:
            report.problem("derived_from_held_out", f"{name}: {key!r} derives from {src!r} of "
                                                    f"the real {src_split} split")
    for s, k in real.held_out_copies(0, h):
        report.problem("copies_held_out_image", f"{name}: {key!r} is pixel-identical to real "
                                                f"{s} image {k!r}")


def check_dataset(root: str | Path, synthetic: Sequence[str | Path] = ()) -> CheckReport:
    """Run every check on ``root`` and, against it, on each ``synthetic`` dataset, in memory
    independent of the number of samples (see the module doc)."""
    report = CheckReport()
    root = Path(root)
    with tempfile.TemporaryDirectory(prefix="medfake-check-") as tmp:
        index = _Index(Path(tmp) / "index.sqlite")
        try:
            real = _Scan(index, 0, root.name)
            _scan(root, "real", report, real)
            _cross_split(real, report)
            _unknown_patients(root, real, report)
            for i, syn_dir in enumerate(synthetic, start=1):
                syn = _Scan(index, i, Path(syn_dir).name, against_real=True)
                _scan(Path(syn_dir), "synthetic", report, syn)
                _cross_split(syn, report)
        finally:
            index.close()
    return report
