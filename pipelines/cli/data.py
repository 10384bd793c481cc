"""``medfake data phantoms|info|import|check``."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ...engine.data.phantom_config import PhantomConfig
from ...engine.importers.config import ImportConfig
from .options import add_config_args, config_from_args


def _phantoms(a: argparse.Namespace) -> None:
    from ...engine.data.phantoms import make_phantom_world
    cfg = config_from_args(PhantomConfig, a, command="data phantoms")
    pub, hosp = make_phantom_world(a.out, cfg)
    print(f"world:         {cfg.world}\npublic corpus: {pub}\nhospital:      {hosp}")


def _info(a: argparse.Namespace) -> None:
    from ...engine.data.reader import DatasetInfo
    info = DatasetInfo.load(a.dir)
    for split, s in info.splits.items():
        print(f"{split:8s} {s['count']:7d}  {json.dumps(s['per_class'])}  shards={len(s['shards'])}")
    if a.verify:
        problems = info.verify()
        print("verify: " + ("OK" if not problems else "; ".join(problems)))
        if problems:
            sys.exit(1)


def _import(a: argparse.Namespace) -> None:
    from ...engine.importers import import_dataset
    res = import_dataset(config_from_args(ImportConfig, a, command="data import"))
    print(f"{res.out}: " + ", ".join(f"{s} {n}" for s, n in res.counts.items())
          + f"; split: {res.split_method}"
          + (f"; skipped {sum(res.skipped.values())}: {res.skipped}" if res.skipped else ""))
    if res.quarantined:  # positions and reasons only: never a path or a name
        shown = ", ".join(f"{w} {r}" for w, r in res.quarantined[:50])
        more = len(res.quarantined) - 50
        print(f"quarantined {len(res.quarantined)} (possible burned-in text, not imported): "
              + shown + (f", ... and {more} more" if more > 0 else "")
              + "\n  check their pixels (--show-skipped prints their paths to stderr); DICOM "
                "files without detected text import into a new --out with "
                "--accept-burned-in-risk")
    if a.show_skipped:  # source paths may name patients: printed only on request, never logged
        for ref, reason in res.skipped_refs:
            print(f"skipped\t{reason}\t{ref}", file=sys.stderr)


def _check(a: argparse.Namespace) -> None:
    from ..data_check import check_dataset
    report = check_dataset(a.dir, a.synthetic or [])
    print(report.text())
    if a.json:
        Path(a.json).write_text(json.dumps(report.to_json(), indent=1) + "\n")
    if not report.ok:
        sys.exit(1)


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="datasets").add_subparsers(dest="sub", required=True)
    ph = data.add_parser("phantoms", help="write the embedded phantom world (--world near|general: "
                         "docs/worlds.md)")
    ph.add_argument("--out", required=True)
    add_config_args(ph, PhantomConfig)
    ph.set_defaults(fn=_phantoms)

    di = data.add_parser("info", help="counts per split and class; --verify checks sha256")
    di.add_argument("dir")
    di.add_argument("--verify", action="store_true")
    di.set_defaults(fn=_info)

    dm = data.add_parser("import", help="import real images (ImageFolder, MedMNIST .npz, CSV, "
                         "DICOM) as a de-identified dataset, split by patient")
    add_config_args(dm, ImportConfig)
    dm.add_argument("--show-skipped", action="store_true",
                    help="print the source paths of skipped files to stderr (may identify patients)")
    dm.set_defaults(fn=_import)

    dc = data.add_parser("check", help="verify checksums and counts; no patient or image in two "
                         "splits; no synthetic sample derived from a val/test image")
    dc.add_argument("dir")
    dc.add_argument("--synthetic", nargs="+", help="synthetic dataset dir(s) made from DIR")
    dc.add_argument("--json", help="also write the report as JSON to this file")
    dc.set_defaults(fn=_check)
