"""`medfake export clip CKPT --out FILE`: a training checkpoint to a plain open_clip state dict.

``CKPT`` is a pretraining output directory, its ``checkpoints/`` directory or one checkpoint
tag directory (default tag: ``latest``). DeepSpeed ZeRO 1/2/3 checkpoints are consolidated
with DeepSpeed's own ``zero_to_fp32`` (fp32 master weights, all partitions merged);
single-process checkpoints hold the weights directly. The result has stock open_clip shapes
(the 1-element ``logit_scale`` DeepSpeed trains becomes 0-dim again), is verified by loading it
into ``open_clip.create_model(name)`` with ``strict=True`` before it is written, and is saved
as ``.safetensors`` (or a plain ``torch.save`` state dict for ``.pt``/``.pth``/``.bin``).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from pathlib import Path

import torch

from ..engine.clip.engine import TORCH_STATE, CheckpointDir, to_stock_state_dict
from ..engine.clip.model import create_clip
from ..engine.core.atomic import fsync_dir
from ..engine.core.distributed import import_deepspeed
from ..engine.core.safe_load import load_checkpoint, save_weights
from ..engine.core.trust import verify_checkpoint
from .train_clip import CKPT_DIR, CONFIG_NAME

log = logging.getLogger(__name__)


def resolve_checkpoint(path: str | os.PathLike, tag: str | None = None
                       ) -> tuple[CheckpointDir, str, Path]:
    """(checkpoint root, tag, run directory) for any of the accepted ``CKPT`` forms."""
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"checkpoint {p} does not exist (give a pretraining --out "
                                f"directory, its checkpoints/ or a step directory)")
    if (p / CKPT_DIR).is_dir():
        root, run = p / CKPT_DIR, p
    elif (p / "latest").is_file() or any(c.name.startswith("step") for c in p.iterdir()):
        root, run = p, p.parent
    elif p.name.startswith("step"):
        root, run, tag = p.parent, p.parent.parent, tag or p.name
    else:
        raise FileNotFoundError(f"{p} holds no medfake CLIP checkpoint")
    ckpt = CheckpointDir(root)
    tag = tag or ckpt.latest()
    if tag is None or not ckpt.path(tag).is_dir():
        raise FileNotFoundError(f"no checkpoint {tag or 'latest'!r} under {root}")
    return ckpt, tag, run


def checkpoint_state_dict(ckpt: CheckpointDir, tag: str) -> dict[str, torch.Tensor]:
    """The fp32 weights of one checkpoint, as trained (DeepSpeed shapes, maybe ``module.``)."""
    d = ckpt.path(tag)
    if (d / TORCH_STATE).is_file():
        return load_checkpoint(d / TORCH_STATE)["model"]
    if any(d.glob("*optim_states.pt")):
        verify_checkpoint(d)  # zero_to_fp32 unpickles the files: signed or --trust-code only
        # zero_to_fp32 reports progress with print(): keep stdout for the command's result
        import_deepspeed()
        from deepspeed.utils.zero_to_fp32 import (
            get_fp32_state_dict_from_zero_checkpoint,
        )
        with contextlib.redirect_stdout(sys.stderr):
            return get_fp32_state_dict_from_zero_checkpoint(str(ckpt.root), tag=tag)
    raise ValueError(f"{d} is neither a single-process nor a DeepSpeed ZeRO checkpoint")


def export_clip(ckpt_path: str | os.PathLike, out: str | os.PathLike, model: str | None = None,
                tag: str | None = None) -> Path:
    """Consolidate a checkpoint into ``out`` (a stock open_clip state dict); return ``out``."""
    ckpt, tag, run = resolve_checkpoint(ckpt_path, tag)
    cfg_file = run / CONFIG_NAME
    name = model or (json.loads(cfg_file.read_text())["model"] if cfg_file.is_file() else None)
    if not name:
        raise ValueError(f"no {CONFIG_NAME} in {run}; pass --model NAME")
    stock, *_ = create_clip(name)
    sd = to_stock_state_dict(checkpoint_state_dict(ckpt, tag),
                             {k: v.shape for k, v in stock.state_dict().items()})
    stock.load_state_dict(sd, strict=True)  # what a user of the file will do
    out = Path(out)
    if out.suffix == ".safetensors":
        save_weights(sd, out)
    elif out.suffix in (".pt", ".pth", ".bin"):
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        torch.save(sd, tmp)
        os.replace(tmp, out)
        fsync_dir(out.parent)
    else:
        raise ValueError(f"--out {out}: use a .safetensors (or .pt) file name")
    sidecar = out.parent / CONFIG_NAME
    if not sidecar.exists():  # lets `--init FILE` find the model name
        sidecar.write_text(json.dumps({"model": name, "exported_from": str(ckpt.path(tag))},
                                      indent=1))
    log.info("exported %s (%s, %s) -> %s", ckpt.path(tag), name, tag, out)
    return out
