"""The `medfake` command line. Each subcommand is one stage of the chain; `run` is all of them.

Known input errors (bad dataset, bad model dir, bad config) end with one line
``medfake: error: ...`` and exit code 2; anything else is a bug and shows its traceback.

One module per command group registers its subcommands (``register(subparsers)``); a job's
flags are derived from its config dataclass (``options.py``), and handlers import the jobs
(torch, diffusers) only when they run, so parsing and ``--help`` stay fast.
"""
from __future__ import annotations

import argparse
import logging
import sys

from . import (
    bench,
    data,
    doctor,
    evaluation,
    experiment,
    export,
    finetune,
    gan,
    model,
    run,
    synth,
    train,
)

# in `medfake --help` order
COMMANDS = (data, model, train, synth, run, experiment, export, doctor, finetune, gan,
            evaluation, bench)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medfake", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="cmd", required=True)
    for command in COMMANDS:
        command.register(sub)
    return p


def _drop_local_rank(argv: list[str]) -> list[str]:
    """The `deepspeed` launcher appends --local_rank=N (also exported as LOCAL_RANK): drop it."""
    out, skip = [], False
    for tok in argv:
        if skip:
            skip = False
        elif tok in ("--local_rank", "--local-rank"):
            skip = True
        elif not tok.startswith(("--local_rank=", "--local-rank=")):
            out.append(tok)
    return out


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(_drop_local_rank(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from ...engine.core.capabilities import CapabilityError
    from ...engine.core.errors import DatasetError
    try:
        args.fn(args)
    except (DatasetError, ValueError, FileNotFoundError, CapabilityError) as e:
        print(f"medfake: error: {e}", file=sys.stderr)
        sys.exit(2)
