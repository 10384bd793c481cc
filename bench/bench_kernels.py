"""Attention kernels on the PyTorch path: one UNet forward of the tiny preset at batch 16, CPU.

Same weights, inputs and thread count; only the attention processor differs.
Group ``attention``: ``candidate`` is SDPA (``apply_attention(unet, "sdpa")``), ``baseline``
the explicit-math reference (``"math"``: baddbmm, softmax, bmm).
"""
from __future__ import annotations

import pytest
import torch

from medfake.engine.diffusion.sd_model import preset_config
from medfake.kernels.attention import apply_attention

BATCH, ROUNDS, ITERATIONS = 16, 10, 5
GROUP = "UNet forward samples/s (tiny SD, batch 16, CPU): SDPA vs math attention"


@pytest.fixture(scope="module")
def unet_and_inputs():
    from diffusers import UNet2DConditionModel

    torch.set_num_threads(2)
    torch.manual_seed(0)
    cfg = preset_config("tiny")
    unet = UNet2DConditionModel(**cfg["unet"]).eval()
    size, ctx = cfg["unet"]["sample_size"], cfg["text_encoder"]["max_position_embeddings"]
    inputs = (torch.randn(BATCH, cfg["unet"]["in_channels"], size, size),
              torch.linspace(999, 1, BATCH).long(),
              torch.randn(BATCH, ctx, cfg["unet"]["cross_attention_dim"]))
    return unet, inputs


def _bench(benchmark, unet_and_inputs, kind: str):
    unet, inputs = unet_and_inputs
    assert apply_attention(unet, kind) == kind

    @torch.inference_mode()
    def forward():
        return unet(*inputs).sample

    benchmark.extra_info["images_per_round"] = BATCH  # per call: stats are per iteration
    out = benchmark.pedantic(forward, rounds=ROUNDS, iterations=ITERATIONS, warmup_rounds=1)
    assert out.shape == inputs[0].shape


@pytest.mark.benchmark(group=GROUP)
def test_candidate_sdpa_attention(benchmark, unet_and_inputs):
    _bench(benchmark, unet_and_inputs, "sdpa")


@pytest.mark.benchmark(group=GROUP)
def test_baseline_math_attention(benchmark, unet_and_inputs):
    _bench(benchmark, unet_and_inputs, "math")
