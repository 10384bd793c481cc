"""Triton kernel for ``silu(group_norm(x))`` (forward only). Imports triton at import time.

Import this module only through :mod:`medfake.kernels.groupnorm_silu`, which checks that triton
is installed and that the tensor may use it. To run the kernel on CPU in Triton's interpreter,
``TRITON_INTERPRET=1`` must be in the environment before this module is imported.

One program normalises one (sample, group) slice, which is contiguous in NCHW memory: a first
sweep accumulates mean and M2 per lane with Welford's update (stable for large means, unlike
sum / sum-of-squares), lanes are merged with Chan et al.'s parallel formula, and a second sweep
writes ``silu(x_hat * weight[c] + bias[c])``. Two reads and one write of the activation, in the
input dtype, with fp32 statistics.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_BLOCK = 2048


@triton.jit
def _group_norm_silu_kernel(x_ptr, w_ptr, b_ptr, y_ptr, group_numel, hw, channels_per_group,
                            num_groups, eps, HAS_AFFINE: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)  # = sample * num_groups + group
    group = pid % num_groups
    base = pid.to(tl.int64) * group_numel
    lanes = tl.arange(0, BLOCK)

    mean = tl.zeros([BLOCK], dtype=tl.float32)
    m2 = tl.zeros([BLOCK], dtype=tl.float32)
    count = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, group_numel, BLOCK):
        offs = start + lanes
        mask = offs < group_numel
        x = tl.load(x_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
        new_count = count + tl.where(mask, 1.0, 0.0)
        delta = x - mean
        new_mean = mean + delta / tl.maximum(new_count, 1.0)
        m2 = tl.where(mask, m2 + delta * (x - new_mean), m2)
        mean = tl.where(mask, new_mean, mean)
        count = new_count
    # Merge the lanes (Chan et al.): total M2 = sum of lane M2 + spread of lane means.
    count_g = tl.sum(count, axis=0)
    mean_g = tl.sum(mean * count, axis=0) / count_g
    m2_g = tl.sum(m2, axis=0) + tl.sum(count * (mean - mean_g) * (mean - mean_g), axis=0)
    rstd = 1.0 / tl.sqrt(m2_g / count_g + eps)

    for start in range(0, group_numel, BLOCK):
        offs = start + lanes
        mask = offs < group_numel
        x = tl.load(x_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
        y = (x - mean_g) * rstd
        if HAS_AFFINE:
            channel = group * channels_per_group + offs // hw
            w = tl.load(w_ptr + channel, mask=mask, other=1.0).to(tl.float32)
            b = tl.load(b_ptr + channel, mask=mask, other=0.0).to(tl.float32)
            y = y * w + b
        y = y * tl.sigmoid(y)
        tl.store(y_ptr + base + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


def group_norm_silu_triton(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None,
                           bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """``silu(group_norm(x, num_groups, weight, bias, eps))`` for ``x`` of shape (N, C, *)."""
    if x.dim() < 2 or x.shape[1] % num_groups:
        raise ValueError(f"group_norm_silu: shape {tuple(x.shape)} does not split into "
                         f"{num_groups} groups along dim 1")
    x = x.contiguous()
    y = torch.empty_like(x)
    if x.numel() == 0:
        return y
    n, c = x.shape[:2]
    hw = x[0, 0].numel()
    group_numel = (c // num_groups) * hw
    has_affine = weight is not None
    w = weight.contiguous() if has_affine else x  # dummy pointers, never read without affine
    b = bias.contiguous() if bias is not None else torch.zeros_like(w) if has_affine else x
    block = min(triton.next_power_of_2(group_numel), MAX_BLOCK)
    _group_norm_silu_kernel[(n * num_groups,)](
        x, w, b, y, group_numel, hw, c // num_groups, num_groups, eps,
        HAS_AFFINE=has_affine, BLOCK=block, num_warps=8 if block >= 1024 else 4)
    return y
