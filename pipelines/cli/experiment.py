"""``medfake experiment NAME`` and ``medfake report DIR``."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..configs.experiment import ExperimentConfig
from ..protocols import PROTOCOLS
from .options import add_config_args, config_from_args


def _experiment(a: argparse.Namespace) -> None:
    from ..experiment import run_experiment
    cfg = config_from_args(ExperimentConfig, a, command="experiment")
    out = a.out or str(Path("runs") / "experiments" / a.name)
    res = run_experiment(a.name, cfg, out, rank=a.rank, world_size=a.world_size)
    if res is None:
        print(f"this rank's arm-seeds are done in {out}; results are assembled when every "
              f"rank's are (by the last rank to finish, or by re-running any rank)")
        return
    print(f"results: {res}\nreport:  {Path(out) / 'report.html'}")


def _report(a: argparse.Namespace) -> None:
    from ..report import write_report
    html_path, md_path = write_report(a.run_dir)
    print(f"{html_path}\n{md_path}")


def register(sub: argparse._SubParsersAction) -> None:
    xp = sub.add_parser("experiment", help="run an evaluation protocol (resumable): "
                        + ", ".join(PROTOCOLS))
    xp.add_argument("name", choices=list(PROTOCOLS))
    xp.add_argument("--out", help="experiment dir (default runs/experiments/NAME)")
    xp.add_argument("--rank", type=int, help="this process's share of the arm-seeds (default: "
                    "torchrun RANK, srun SLURM_PROCID or SLURM_ARRAY_TASK_ID, as `synth`)")
    xp.add_argument("--world-size", type=int, help="number of ranks (default: from the "
                    "launcher)")
    add_config_args(xp, ExperimentConfig, profile_help="base sizes the config overrides "
                    "(test: tiny, seconds per protocol; keys: docs/evaluation.md)")
    xp.set_defaults(fn=_experiment)

    rp = sub.add_parser("report", help="self-contained HTML + Markdown report of an "
                        "experiment or run dir")
    rp.add_argument("run_dir")
    rp.set_defaults(fn=_report)
