"""``medfake run``: the whole chain."""
from __future__ import annotations

import argparse

from ..configs.run import RunConfig
from .options import add_config_args, config_from_args


def _run(a: argparse.Namespace) -> None:
    from ..run import run_chain
    run_chain(config_from_args(RunConfig, a, command="run"))


def register(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="the whole chain, phantoms to real-data evaluation")
    add_config_args(run, RunConfig)
    run.set_defaults(fn=_run)
