"""``medfake doctor``."""
from __future__ import annotations

import argparse


def _doctor(a: argparse.Namespace) -> None:
    from ..doctor import doctor_report
    print(doctor_report())


def register(sub: argparse._SubParsersAction) -> None:
    dr = sub.add_parser("doctor", help="what this machine can run, and which backend each stage uses")
    dr.set_defaults(fn=_doctor)
