"""``medfake export onnx|tensorrt|clip``."""
from __future__ import annotations

import argparse

from ...export.config import OnnxExportConfig, TensorRTBuildConfig
from .options import add_config_args, add_trust_flag, config_from_args, trust_code


def _onnx(a: argparse.Namespace) -> None:
    from ...export.onnx_export import export_onnx
    print(export_onnx(a.model, a.out, config_from_args(OnnxExportConfig, a,
                                                       command="export onnx")))


def _tensorrt(a: argparse.Namespace) -> None:
    from ...export.tensorrt_build import build_engines
    batch = TensorRTBuildConfig.parse_batch(a.batch) if a.batch else {}
    size = TensorRTBuildConfig.parse_size(a.size) if a.size else {}
    cfg = config_from_args(TensorRTBuildConfig, a, command="export tensorrt", **batch, **size)
    print(build_engines(a.onnx, a.out, cfg))


def _clip(a: argparse.Namespace) -> None:
    from ..export_clip import export_clip
    trust_code(a)
    print(export_clip(a.ckpt, a.out, model=a.model, tag=a.tag))


def register(sub: argparse._SubParsersAction) -> None:
    ex = sub.add_parser("export", help="export models (ONNX, TensorRT engines, CLIP weights)"
                        ).add_subparsers(dest="sub", required=True)
    eo = ex.add_parser("onnx", help="UNet, VAE encoder/decoder, text encoder to validated ONNX")
    eo.add_argument("--model", required=True, help="diffusers SD 1.x/2.x model directory")
    eo.add_argument("--out", required=True)
    add_config_args(eo, OnnxExportConfig)
    eo.set_defaults(fn=_onnx)

    et = ex.add_parser("tensorrt", help="TensorRT engines from an ONNX export (needs a GPU)")
    et.add_argument("--onnx", required=True, help="directory written by `medfake export onnx`")
    et.add_argument("--out", required=True)
    d = TensorRTBuildConfig()
    et.add_argument("--batch", metavar="MIN:OPT:MAX", help=f"images per call (default: "
                    f"{d.min_batch}:{d.opt_batch}:{d.max_batch})")
    et.add_argument("--size", metavar="MIN:OPT:MAX", help="image side in pixels the engines "
                    "serve (default: the model's native size only)")
    add_config_args(et, TensorRTBuildConfig)
    et.set_defaults(fn=_tensorrt)

    ec = ex.add_parser("clip", help="CLIP checkpoint (DeepSpeed ZeRO or single-process) to a "
                       "plain open_clip state dict")
    ec.add_argument("ckpt", help="pretraining --out dir, its checkpoints/ dir or one step dir")
    ec.add_argument("--out", required=True, help=".safetensors (or .pt) file to write")
    ec.add_argument("--model", help="model name (default: from clip_config.json)")
    ec.add_argument("--tag", help="checkpoint tag (default: latest)")
    add_trust_flag(ec, "a DeepSpeed checkpoint not signed by this user (copied or downloaded)")
    ec.set_defaults(fn=_clip)
