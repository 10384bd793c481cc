"""``medfake model init|convert``."""
from __future__ import annotations

import argparse

from .options import add_trust_flag, trust_code


def _init(a: argparse.Namespace) -> None:
    from ...engine.diffusion.sd_model import init_model
    print(init_model(a.preset, a.out, seed=a.seed))


def _convert(a: argparse.Namespace) -> None:
    from ...engine.diffusion.single_file import convert_single_file
    trust_code(a)
    print(convert_single_file(a.checkpoint, a.config, a.out))


def register(sub: argparse._SubParsersAction) -> None:
    model = sub.add_parser("model", help="diffusion models").add_subparsers(dest="sub", required=True)
    mi = model.add_parser("init", help="write a randomly initialised diffusers directory")
    mi.add_argument("--preset", default="tiny")
    mi.add_argument("--out", required=True)
    mi.add_argument("--seed", type=int, default=0)
    mi.set_defaults(fn=_init)

    mc = model.add_parser("convert", help="a single-file checkpoint (*.safetensors / *.ckpt, "
                          "original LDM layout) to a diffusers directory, offline")
    mc.add_argument("checkpoint", help="the single-file checkpoint")
    mc.add_argument("--config", required=True, help="a local diffusers SD dir of the same "
                    "architecture, or the checkpoint's original *.yaml (v1-inference.yaml, ...)")
    mc.add_argument("--out", required=True, help="new directory for the diffusers model")
    add_trust_flag(mc, "a pickled .ckpt (read with torch.load(weights_only=True))")
    mc.set_defaults(fn=_convert)
