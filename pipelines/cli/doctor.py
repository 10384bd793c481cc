"""``medfake doctor``."""
from __future__ import annotations

import argparse


def _doctor(a: argparse.Namespace) -> None:
    from ..doctor import doctor_report
    print(doctor_report())


def register(sub: argparse._SubParsersAction) -> None:
    dr = sub.add_parser("doctor", help="what this machine can run: backend per stage, GPU paths, "
                        "and the GPU each rank of this launch will use")
    dr.set_defaults(fn=_doctor)
