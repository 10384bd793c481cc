"""``medfake finetune dreambooth``."""
from __future__ import annotations

import argparse

from ..configs.dreambooth import DreamBoothConfig
from .options import add_config_args, config_from_args


def _dreambooth(a: argparse.Namespace) -> None:
    from ..dreambooth import finetune_dreambooth
    cfg = config_from_args(DreamBoothConfig, a, command="finetune dreambooth")
    print(finetune_dreambooth(a.base, a.real, a.out, cfg))


def register(sub: argparse._SubParsersAction) -> None:
    ft = sub.add_parser("finetune", help="adapt a generator to the real images"
                        ).add_subparsers(dest="sub", required=True)
    db = ft.add_parser("dreambooth", help="DreamBooth: rare token per class, prior preservation, "
                       "full or LoRA (resumable)")
    db.add_argument("--base", required=True, help="base diffusers SD dir (text-to-image or inpaint)")
    db.add_argument("--real", required=True, help="real dataset (train split, class names, templates)")
    db.add_argument("--out", required=True)
    add_config_args(db, DreamBoothConfig, profile_help="sd15: the paper's recipe for a real SD "
                    "1.5 on a GPU (default: default)")
    db.set_defaults(fn=_dreambooth)
