"""kernels/: attention dispatch on the tiny SD models, and the fused GroupNorm+SiLU kernel.

The Triton kernel runs here in Triton's CPU interpreter, in a subprocess: ``TRITON_INTERPRET``
is read when kernels are decorated, so it must be set before triton is imported and must not
leak into the rest of the test session.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from medfake.engine.diffusion.sd_model import preset_config
from medfake.kernels.attention import (apply_attention, attention_kinds, exportable_attention,
                                       resolve_attention, xformers_status)
from medfake.kernels.groupnorm_silu import (fused_resnet_count, group_norm_silu,
                                            group_norm_silu_reference, patch_resnets)


def _tiny_unet():
    from diffusers import UNet2DConditionModel
    torch.manual_seed(0)
    return UNet2DConditionModel(**preset_config("tiny")["unet"]).eval()


def _tiny_vae(mid_attention: bool):
    """The tiny preset VAE; the preset itself has no mid-block attention, SD's VAEs do."""
    from diffusers import AutoencoderKL
    torch.manual_seed(0)
    return AutoencoderKL(**{**preset_config("tiny")["vae"],
                            "mid_block_add_attention": mid_attention}).eval()


@pytest.fixture(scope="module")
def unet():
    torch.set_num_threads(1)
    return _tiny_unet()


@pytest.fixture(scope="module")
def unet_inputs():
    g = torch.Generator().manual_seed(1)
    return (torch.randn(4, 4, 8, 8, generator=g), torch.tensor([999, 500, 10, 1]),
            torch.randn(4, 32, 64, generator=g))


def _unet_out(unet, inputs):
    with torch.inference_mode():
        return unet(*inputs).sample


def test_resolve_attention_on_cpu():
    assert resolve_attention("auto", "cpu") == "sdpa"
    assert resolve_attention("sdpa", "cpu") == "sdpa"
    assert resolve_attention("math", torch.device("cpu")) == "math"
    with pytest.raises(ValueError, match="unknown attention kind 'flash'"):
        resolve_attention("flash", "cpu")
    with pytest.raises(RuntimeError,
                       match=r"xformers attention needs a CUDA device \(got device cpu\)") as e:
        resolve_attention("xformers", "cpu")
    if not xformers_status()[0]:
        assert "pip install xformers" in str(e.value)


def test_sdpa_matches_math_on_tiny_unet(unet, unet_inputs):
    assert apply_attention(unet, "math") == "math"
    assert attention_kinds(unet) == {"math": len(unet.attn_processors)} and unet.attn_processors
    ref = _unet_out(unet, unet_inputs)
    assert apply_attention(unet, "auto") == "sdpa"
    assert attention_kinds(unet) == {"sdpa": len(unet.attn_processors)}
    out = _unet_out(unet, unet_inputs)
    assert ref.abs().max() > 0.1
    assert (out - ref).abs().max().item() < 1e-5


def test_math_attention_flops_are_countable(unet, unet_inputs):
    """The reference path is plain (b)mm + softmax, so torch's FLOP counter sees Q K^T and P V."""
    from torch.utils.flop_counter import FlopCounterMode

    apply_attention(unet, "math")
    with FlopCounterMode(display=False) as fc:
        _unet_out(unet, unet_inputs)
    counts = fc.get_flop_counts()["Global"]
    # down/mid/up self+cross attention; per module QK^T (baddbmm) and PV (bmm) are separate ops
    assert counts.get(torch.ops.aten.baddbmm, 0) > 0 and counts.get(torch.ops.aten.bmm, 0) > 0


def test_sdpa_matches_math_on_vae_mid_attention():
    vae = _tiny_vae(mid_attention=True)
    assert len(vae.attn_processors) == 2  # encoder and decoder mid blocks
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    outs = {}
    for kind in ("math", "sdpa"):
        apply_attention(vae, kind)
        with torch.inference_mode():
            z = vae.encode(x).latent_dist.mean
            outs[kind] = (z, vae.decode(z).sample)
    for a, b in zip(outs["math"], outs["sdpa"]):
        assert (a - b).abs().max().item() < 1e-5


def test_apply_attention_edge_cases():
    assert apply_attention(_tiny_vae(mid_attention=False), "auto") == "sdpa"  # no attention: no-op
    assert attention_kinds(_tiny_vae(mid_attention=False)) == {}
    with pytest.raises(TypeError, match="no diffusers attention processors"):
        apply_attention(nn.Linear(2, 2), "sdpa")


def test_exportable_attention_restores_processors(unet, unet_inputs):
    apply_attention(unet, "math")
    first = next(iter(unet.attn_processors))
    unet.set_attn_processor({k: (type(p)() if k == first else p)  # one distinct object
                             for k, p in unet.attn_processors.items()})
    before = dict(unet.attn_processors)
    with exportable_attention(unet) as kind:
        assert kind == "sdpa" and attention_kinds(unet) == {"sdpa": len(before)}
    after = unet.attn_processors
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    with pytest.raises(KeyError), exportable_attention(unet, "math"):
        assert attention_kinds(unet) == {"math": len(before)}
        raise KeyError("export failed")
    assert all(unet.attn_processors[k] is before[k] for k in before)
    with pytest.raises(ValueError, match="'xformers' is not exportable"):
        with exportable_attention(unet, "xformers"):
            pass


def test_group_norm_silu_on_cpu_is_the_reference_and_never_claims_triton(unet, monkeypatch, caplog):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    gn = nn.GroupNorm(8, 32)
    x = torch.randn(2, 32, 4, 4)
    assert torch.equal(group_norm_silu(x, gn), nn.functional.silu(gn(x)))
    with pytest.raises(RuntimeError, match="runs on CUDA only"):
        group_norm_silu(x, gn, backend="triton")
    with caplog.at_level(logging.INFO, logger="medfake.kernels.groupnorm_silu"):
        assert patch_resnets(unet) == 0
    assert fused_resnet_count(unet) == 0
    assert "not applied" in caplog.text and "CUDA only" in caplog.text
    with pytest.raises(RuntimeError, match="cannot patch in the Triton GroupNorm\\+SiLU"):
        patch_resnets(unet, backend="triton")


_INTERPRETER_CHECKS = textwrap.dedent("""
    import copy, json, torch
    from torch import nn
    from medfake.engine.diffusion.sd_model import preset_config
    from medfake.kernels.groupnorm_silu import (fused_resnet_count, group_norm_silu,
        group_norm_silu_reference, patch_resnets, unpatch_resnets)
    from diffusers import AutoencoderKL, UNet2DConditionModel

    torch.set_num_threads(1)
    torch.manual_seed(0)
    res = {"kernel": [], "models": {}}
    cases = [((2, 64, 8, 8), 32, True), ((2, 128, 16, 16), 32, True),
             ((2, 96, 8, 8), 32, True),      # 3 channels per group: 192-element groups
             ((2, 48, 7, 9), 16, True),      # 189-element groups
             ((1, 64, 40, 40), 16, True),    # 6400-element groups: several blocks per program
             ((2, 64, 8, 8), 32, False)]     # no affine
    with torch.no_grad():
        for shape, groups, affine in cases:
            gn = nn.GroupNorm(groups, shape[1], eps=1e-5, affine=affine)
            if affine:
                nn.init.normal_(gn.weight); nn.init.normal_(gn.bias)
            x = torch.randn(shape) * 3 + 5   # offset mean: exercises the variance's stability
            err = (group_norm_silu(x, gn, "triton") - group_norm_silu_reference(x, gn)).abs().max()
            res["kernel"].append([list(shape), groups, affine, err.item()])
        x = torch.randn(2, 64, 8, 8).half()
        gn = nn.GroupNorm(32, 64).half()
        ref = group_norm_silu_reference(x.float(), copy.deepcopy(gn).float())
        res["fp16_err"] = (group_norm_silu(x, gn, "triton").float() - ref).abs().max().item()

        cfg = preset_config("tiny")
        unet = UNet2DConditionModel(**cfg["unet"]).eval()
        # batch 1: the interpreter runs one Python program per (sample, group)
        args = (torch.randn(1, 4, 8, 8), torch.tensor([999]), torch.randn(1, 32, 64))
        keys = list(unet.state_dict())
        ref = unet(*args).sample
        n = patch_resnets(unet, backend="triton")
        out = unet(*args).sample
        res["models"]["unet"] = [n, fused_resnet_count(unet), (out - ref).abs().max().item(),
                                 list(unet.state_dict()) == keys, unpatch_resnets(unet),
                                 fused_resnet_count(unet)]
        vae = AutoencoderKL(**cfg["vae"]).eval()
        keys = list(vae.state_dict())
        z = torch.randn(1, 4, 8, 8)  # decoder only: its blocks are the "group" variant
        ref = vae.decode(z).sample
        n = patch_resnets(vae, backend="triton")
        out = vae.decode(z).sample
        res["models"]["vae"] = [n, fused_resnet_count(vae), (out - ref).abs().max().item(),
                                list(vae.state_dict()) == keys, unpatch_resnets(vae),
                                fused_resnet_count(vae)]
    print("RESULT " + json.dumps(res))
""")


def test_triton_group_norm_silu_under_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _INTERPRETER_CHECKS], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert len(res["kernel"]) == 6
    for shape, groups, affine, err in res["kernel"]:
        assert err < 1e-4, (shape, groups, affine, err)
    assert res["fp16_err"] < 1e-2
    # tiny UNet: 2x1 down + 2 mid + 2x2 up resnets; tiny VAE: encoder 3x1 + 2, decoder 2 + 3x2
    for name, expected in (("unet", 8), ("vae", 13)):
        patched, active, err, same_keys, restored, left = res["models"][name]
        assert patched == active == restored == expected and left == 0, (name, res["models"][name])
        assert same_keys and err < 1e-4, (name, err)


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:FutureWarning")
def test_auto_dispatch_sees_tracers():
    """``auto`` must fall back to the reference whenever a tracer (export, jit, compile) runs."""
    from medfake.kernels.groupnorm_silu import _tracing

    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(_tracing())
            return x * 2

    assert _tracing() is None
    torch.jit.trace(Probe(), (torch.randn(2),), check_trace=False)
    torch.export.export(Probe(), (torch.randn(2),), strict=False)
    assert seen == ["TorchScript trace", "torch.compile/torch.export"]


def test_head_chunked_attention_is_the_same_attention_and_restores_diffusers(unet, unet_inputs):
    import diffusers.models.attention_processor as ap
    import torch.nn.functional as F
    from medfake.kernels.attention import head_chunked_sdpa
    apply_attention(unet, "sdpa")
    with torch.no_grad():
        ref = unet(*unet_inputs).sample
        with exportable_attention(unet, "sdpa", heads_per_chunk=1):
            out = unet(*unet_inputs).sample
    assert torch.allclose(out, ref, atol=1e-6, rtol=0)
    assert ap.F is F and attention_kinds(unet) == {"sdpa": len(unet.attn_processors)}
    q, k, v = (torch.randn(2, 5, 7, 4) for _ in range(3))
    per_head_mask = torch.randn(2, 5, 7, 7)
    broadcast_mask = torch.randn(2, 1, 7, 7)
    for n in (1, 2, 5, 9):
        chunked = head_chunked_sdpa(F.scaled_dot_product_attention, n)
        for mask in (None, per_head_mask, broadcast_mask):
            assert torch.allclose(chunked(q, k, v, attn_mask=mask),
                                  F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
                                  atol=1e-6)
    with pytest.raises(ValueError, match=">= 1"):
        head_chunked_sdpa(F.scaled_dot_product_attention, 0)
    with pytest.raises(ValueError, match="needs attention kind sdpa"):
        with exportable_attention(unet, "math", heads_per_chunk=2):
            pass
