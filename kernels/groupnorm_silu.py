"""Fused GroupNorm+SiLU for the CUDA PyTorch path, and the patch that puts it into diffusers models.

SD's ``ResnetBlock2D`` runs ``norm1 -> SiLU -> conv1`` and ``norm2 -> SiLU -> dropout -> conv2``;
eager PyTorch reads and writes the activation once for the norm and again for the SiLU. The
Triton kernel (``triton_groupnorm_silu``) does both in one pass over each (sample, group).

Contract of :func:`group_norm_silu` with ``backend``:

- ``"torch"``: always the PyTorch reference ``silu(group_norm(x))``.
- ``"auto"``: Triton iff the tensor is on CUDA, triton imports, and no autograd, ONNX export,
  TorchScript trace or ``torch.compile`` is in progress (the kernel is forward-only and opaque
  to tracers); the reference otherwise. Export of a patched model therefore stays exportable.
- ``"triton"``: the kernel or a RuntimeError naming what is missing. CPU tensors are accepted
  only under ``TRITON_INTERPRET=1`` (Triton's interpreter, used by the tests).

:func:`patch_resnets` swaps eligible ``ResnetBlock2D`` modules to :class:`FusedResnetBlock2D`
(same parameters and state-dict keys, forward uses the fused op); on a CPU model with
``backend="auto"`` it patches nothing, logs why, and returns 0.
"""
from __future__ import annotations

import functools
import importlib.util
import logging
import os
from typing import Literal

import torch
import torch.nn.functional as F
from diffusers.models.resnet import ResnetBlock2D
from torch import nn

log = logging.getLogger(__name__)

Backend = Literal["auto", "triton", "torch"]
BACKENDS = ("auto", "triton", "torch")


def group_norm_silu_reference(x: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    """``silu(norm(x))`` in plain PyTorch: the definition the kernel is tested against."""
    return F.silu(F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps))


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=1)
def _triton_import() -> tuple[object | None, str]:
    """(kernel module or None, reason). Imported once, lazily: triton is slow to import."""
    if importlib.util.find_spec("triton") is None:
        return None, "triton is not installed (pip install triton; it ships with CUDA torch wheels)"
    try:
        from . import triton_groupnorm_silu as mod
    except Exception as exc:
        return None, f"triton failed to import ({type(exc).__name__}: {exc})"
    return mod, "triton imports"


def triton_status(device: str | torch.device) -> tuple[bool, str]:
    """(usable, reason): whether the Triton kernel can run on tensors on ``device``."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        return False, "torch.cuda.is_available() is False"
    if dev.type != "cuda" and not _interpreting():
        return False, (f"tensors are on {dev}; the fused Triton GroupNorm+SiLU runs on CUDA only "
                       "(or under TRITON_INTERPRET=1 for testing)")
    mod, reason = _triton_import()
    if mod is None:
        return False, reason
    return True, "CUDA" if dev.type == "cuda" else "Triton interpreter (TRITON_INTERPRET=1)"


def _tracing() -> str | None:
    if torch.onnx.is_in_onnx_export():
        return "ONNX export"
    if torch.jit.is_tracing():
        return "TorchScript trace"
    if torch.compiler.is_compiling():
        return "torch.compile/torch.export"
    return None


def group_norm_silu(x: torch.Tensor, norm: nn.GroupNorm, backend: Backend = "auto") -> torch.Tensor:
    """``silu(norm(x))`` for the ``nn.GroupNorm`` ``norm``; ``backend`` as in the module doc."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown GroupNorm+SiLU backend {backend!r}; "
                         f"choose {', '.join(BACKENDS)}")
    if backend == "torch" or (backend == "auto" and not x.is_cuda):
        return group_norm_silu_reference(x, norm)
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or (
        norm.weight is not None and norm.weight.requires_grad))
    blocker = "autograd (the kernel is forward-only)" if needs_grad else _tracing()
    ok, reason = triton_status(x.device)
    if blocker or not ok:
        if backend == "auto":
            return group_norm_silu_reference(x, norm)
        problems = [p for p in (None if ok else reason, blocker) if p]
        raise RuntimeError("Triton GroupNorm+SiLU cannot run: " + "; and ".join(problems))
    mod, _ = _triton_import()
    return mod.group_norm_silu_triton(x, norm.num_groups, norm.weight, norm.bias, norm.eps)


class FusedResnetBlock2D(ResnetBlock2D):
    """``ResnetBlock2D`` (SiLU, no scale-shift time embedding) with both norm+act pairs fused.

    Never constructed directly: :func:`patch_resnets` re-classes existing blocks, so parameters,
    buffers and state-dict keys are untouched. ``_gn_silu_backend`` is the dispatch backend.
    """

    _gn_silu_backend: Backend = "auto"

    def forward(self, input_tensor: torch.Tensor, temb: torch.Tensor | None, *args, **kwargs):
        # Mirrors ResnetBlock2D.forward (diffusers 0.42) except its scale_shift branch. The VAE's
        # blocks use time_embedding_norm="group": same as "default" but temb is never added.
        hidden = group_norm_silu(input_tensor, self.norm1, self._gn_silu_backend)
        if self.upsample is not None:
            if hidden.shape[0] >= 64:  # see diffusers issue 984
                input_tensor, hidden = input_tensor.contiguous(), hidden.contiguous()
            input_tensor, hidden = self.upsample(input_tensor), self.upsample(hidden)
        elif self.downsample is not None:
            input_tensor, hidden = self.downsample(input_tensor), self.downsample(hidden)
        hidden = self.conv1(hidden)
        if self.time_emb_proj is not None:
            if not self.skip_time_act:
                temb = self.nonlinearity(temb)
            temb = self.time_emb_proj(temb)[:, :, None, None]
        if temb is not None and self.time_embedding_norm == "default":
            hidden = hidden + temb
        hidden = group_norm_silu(hidden, self.norm2, self._gn_silu_backend)
        hidden = self.conv2(self.dropout(hidden))
        if self.conv_shortcut is not None:
            input_tensor = self.conv_shortcut(input_tensor.contiguous() if self.training
                                              else input_tensor)
        return (input_tensor + hidden) / self.output_scale_factor


def _ineligible(block: ResnetBlock2D) -> str | None:
    if block.time_embedding_norm == "scale_shift":  # norm2 -> scale/shift -> SiLU: not fusable
        return "time_embedding_norm='scale_shift'"
    if not isinstance(block.nonlinearity, nn.SiLU):
        return f"activation {type(block.nonlinearity).__name__}"
    if not (type(block.norm1) is nn.GroupNorm and type(block.norm2) is nn.GroupNorm):
        return "norms are not nn.GroupNorm"
    return None


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def patch_resnets(model: nn.Module, backend: Backend = "auto") -> int:
    """Fuse GroupNorm+SiLU in every eligible ``ResnetBlock2D`` of ``model``; return how many.

    ``auto``: only if the model is on CUDA and triton works; otherwise a logged no-op returning
    0. ``triton``: RuntimeError if the kernel cannot run on the model's device (CPU only under
    ``TRITON_INTERPRET=1``). Blocks with scale-shift time embeddings or other activations are
    left alone and counted in the log. Undo with :func:`unpatch_resnets`.
    """
    if backend not in ("auto", "triton"):
        raise ValueError(f"patch_resnets backend must be 'auto' or 'triton', not {backend!r}")
    ok, reason = triton_status(_model_device(model))
    if not ok:
        if backend == "triton":
            raise RuntimeError(f"cannot patch in the Triton GroupNorm+SiLU: {reason}")
        log.info("fused GroupNorm+SiLU not applied to %s: %s", type(model).__name__, reason)
        return 0
    patched, skipped = 0, {}
    for module in model.modules():
        if type(module) is not ResnetBlock2D:
            continue
        why = _ineligible(module)
        if why:
            skipped[why] = skipped.get(why, 0) + 1
            continue
        module.__class__ = FusedResnetBlock2D
        module._gn_silu_backend = backend
        patched += 1
    log.info("fused GroupNorm+SiLU (%s) in %d ResnetBlock2D of %s%s", reason, patched,
             type(model).__name__, f"; skipped {skipped}" if skipped else "")
    return patched


def unpatch_resnets(model: nn.Module) -> int:
    """Undo :func:`patch_resnets`; return how many blocks went back to ``ResnetBlock2D``."""
    restored = 0
    for module in model.modules():
        if type(module) is FusedResnetBlock2D:
            module.__class__ = ResnetBlock2D
            del module._gn_silu_backend
            restored += 1
    return restored


def fused_resnet_count(model: nn.Module) -> int:
    """How many blocks of ``model`` currently run the fused GroupNorm+SiLU forward."""
    return sum(type(m) is FusedResnetBlock2D for m in model.modules())
