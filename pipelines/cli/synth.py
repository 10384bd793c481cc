"""``medfake synth`` (run a synthesis job) and ``medfake synth status OUT`` (inspect one)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..configs.synth import SynthConfig
from .options import add_config_args, add_trust_flag, config_from_args, trust_code


def _run(a: argparse.Namespace) -> None:
    trust_code(a)
    cfg = config_from_args(SynthConfig, a, command="synth", hint=" to run a job (or `medfake "
                           "synth status OUT` to inspect one)")
    from ..synth import synthesize
    print(synthesize(cfg))


def _status(a: argparse.Namespace) -> None:
    from ...engine.synth.status import synth_status  # no torch: seconds at 10^6 samples
    st = synth_status(a.job, checksums=a.checksums, finalize_job=a.finalize,
                      remove_corrupt_shards=a.remove_corrupt, keys=not a.no_verify)
    print(st.text(a.world_size))
    if a.json:
        Path(a.json).write_text(json.dumps(st.to_json(), indent=1) + "\n")
    if not st.complete or st.dataset_json != "complete":
        sys.exit(1)


def register(sub: argparse._SubParsersAction) -> None:
    sy = sub.add_parser(
        "synth", help="mass synthesis into shards (txt2img, inpaint, outpaint; exactly once, "
        "resumable, many ranks); `medfake synth status OUT` checks a job",
        usage="medfake synth --model M --real R --out O [options]\n"
              "       medfake synth status OUT [--finalize] [--remove-corrupt] [--checksums|--no-verify] "
              "[--world-size N] [--json FILE]")
    add_config_args(sy, SynthConfig)
    add_trust_flag(sy, "--model: a model dir with only pickled .bin weights")
    sy.set_defaults(fn=_run)

    what = ("report planned, done, missing and corrupt shards of OUT across all ranks (from "
            "the shard manifests and sizes; --checksums reads every byte); exit 1 unless the "
            "job is complete")
    st = sy.add_subparsers(dest="synth_cmd", metavar="status OUT").add_parser(
        "status", prog="medfake synth status", help=what, description=what[0].upper() + what[1:])
    st.add_argument("job", metavar="OUT", help="the job's --out directory")
    st.add_argument("--finalize", action="store_true",
                    help="write dataset.json if every shard is done")
    st.add_argument("--remove-corrupt", action="store_true",
                    help="delete corrupt shards so the job rewrites them")
    check = st.add_mutually_exclusive_group()
    check.add_argument("--checksums", action="store_true",
                       help="also verify every shard's sha256 and tar members (reads every "
                            "byte, in parallel, with progress)")
    check.add_argument("--no-verify", action="store_true",
                       help="do not compare the manifests' keys with the plan (existence and "
                            "sizes only)")
    st.add_argument("--world-size", type=int, help="also show each rank's share of the shards "
                    "for this many ranks")
    st.add_argument("--json", help="also write the report as JSON to this file")
    st.set_defaults(fn=_status)
