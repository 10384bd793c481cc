"""Device, mixed precision and optimiser options shared by medfake's trainers (plus two small
file helpers every resumable trainer needs: an atomic checkpoint write and an output-dir claim).

Every GPU-only option is a real code path behind a capability check and fails on a machine that
lacks the capability with one message naming what is missing:

* ``resolve_device("auto")`` is CUDA when ``torch.cuda.is_available()``, else CPU;
* ``Precision("fp16" | "bf16" | "no", device)``: autocast plus (fp16 only) a ``GradScaler``;
  fp16 needs CUDA, bf16 runs on CUDA with bf16 support or on CPU;
* ``make_adamw(..., eight_bit=True)``: bitsandbytes' ``AdamW8bit``, which needs CUDA and the
  ``bitsandbytes`` package.

Master weights stay float32 in all modes (as diffusers' training examples do), so resume
checkpoints are precision-independent.
"""
from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Iterable

import torch

MIXED_PRECISION = ("no", "fp16", "bf16")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> this process's GPU (``LOCAL_RANK``/``SLURM_LOCALID``, see
    ``core.distributed.cuda_device_index``) if CUDA is available, else cpu; an explicit CUDA
    device without CUDA is an error."""
    if name == "auto":
        from ..core.distributed import cuda_device_index
        index = cuda_device_index()
        return torch.device("cpu") if index is None else torch.device("cuda", index)
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but torch.cuda.is_available() is False (no GPU "
                         f"or a CPU-only torch build); use --device cpu or auto")
    return dev


class Precision:
    """Autocast context and loss scaling for one training run (``mode`` in MIXED_PRECISION)."""

    def __init__(self, mode: str, device: torch.device):
        if mode not in MIXED_PRECISION:
            raise ValueError(f"unknown mixed precision {mode!r}; choose one of {MIXED_PRECISION}")
        if mode == "fp16" and device.type != "cuda":
            raise ValueError("fp16 mixed precision needs a CUDA GPU (the device is "
                             f"{device.type}); use --mixed-precision bf16 or no")
        if mode == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError("this GPU has no bf16 support; use --mixed-precision fp16 or no")
        self.mode, self.device = mode, device
        self.dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[mode]
        self.scaler = torch.amp.GradScaler("cuda") if mode == "fp16" else None

    def autocast(self):
        """Context for forward passes: autocast to ``dtype``, or nothing for ``no``."""
        if self.mode == "no":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def step(self, loss: torch.Tensor, opt: torch.optim.Optimizer, params: Iterable[torch.Tensor],
             max_grad_norm: float | None) -> None:
        """Backward, (unscale,) clip, optimiser step; zeroes gradients first."""
        opt.zero_grad(set_to_none=True)
        params = list(params)
        if self.scaler is None:
            loss.backward()
            if max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            opt.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(opt)
        if max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        self.scaler.step(opt)
        self.scaler.update()

    def state_dict(self) -> dict[str, Any]:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def make_adamw(params: Iterable[torch.Tensor] | list[dict], lr: float,
               betas: tuple[float, float] = (0.9, 0.999), weight_decay: float = 1e-2,
               eight_bit: bool = False, device: torch.device | None = None) -> torch.optim.Optimizer:
    """torch AdamW, or bitsandbytes ``AdamW8bit`` when ``eight_bit`` (CUDA + bitsandbytes only)."""
    if not eight_bit:
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay,
                                 foreach=True)
    bnb = require_8bit_adam(device)
    return bnb.optim.AdamW8bit(params, lr=lr, betas=betas, weight_decay=weight_decay)


def require_8bit_adam(device: torch.device | None):
    """The ``bitsandbytes`` module if 8-bit Adam can run on ``device``, else a clear ValueError."""
    if device is None or device.type != "cuda":
        raise ValueError("8-bit Adam (bitsandbytes) runs on CUDA GPUs only and the device is "
                         f"{device.type if device else 'unset'}; drop --use-8bit-adam here")
    try:
        import bitsandbytes as bnb
    except ImportError as e:
        raise ValueError("--use-8bit-adam needs the bitsandbytes package: "
                         "pip install bitsandbytes (on a CUDA machine)") from e
    return bnb


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary name, fsync, rename: a checkpoint is never half written.

    On a full disk this raises ``DiskFullError`` with the previous checkpoint untouched.
    """
    from ..core.atomic import atomic_write
    atomic_write(path, lambda f: torch.save(obj, f), what=f"checkpoint {path}",
                 rerun="re-run the same command to resume")


def claim_output_dir(out: Path, job: dict[str, Any], filename: str, what: str) -> None:
    """Record ``job`` (JSON-able) in ``out/filename``, or refuse a dir that holds another job.

    The refusal names the differing fields of ``job["config"]`` and the other top-level keys.
    """
    path = out / filename
    if not path.is_file():
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(job, indent=1) + "\n")
        return
    old = json.loads(path.read_text())
    if old == job:
        return
    oc, nc = old.get("config", {}), job.get("config", {})
    diff = sorted(k for k in set(oc) | set(nc) if oc.get(k) != nc.get(k))
    diff += sorted(k for k in set(old) | set(job) if k != "config" and old.get(k) != job.get(k))
    raise ValueError(f"{out} holds a {what} job with different parameters ({', '.join(diff)}); "
                     f"use a new output directory, or the original parameters to resume.")
