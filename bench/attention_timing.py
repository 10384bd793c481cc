"""Interleaved timing (bench: attention kernels): tiny-preset UNet forward, sdpa vs math.

Usage: python bench/attention_timing.py THREADS LATENT_SIZE BATCH ROUNDS
"""
import sys, time, statistics, torch
from diffusers import UNet2DConditionModel
from medfake.engine.diffusion.sd_model import preset_config
from medfake.kernels.attention import apply_attention
threads, size, B, rounds = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads); torch.manual_seed(0)
unet = UNet2DConditionModel(**preset_config("tiny")["unet"]).eval()
inp = (torch.randn(B, 4, size, size), torch.linspace(999, 1, B).long(), torch.randn(B, 32, 64))
res = {"sdpa": [], "math": []}
with torch.inference_mode():
    for _ in range(rounds):
        for k in res:
            apply_attention(unet, k); unet(*inp)
            t = time.perf_counter(); unet(*inp); unet(*inp); res[k].append((time.perf_counter() - t) / 2)
m = {k: statistics.median(v) for k, v in res.items()}
print(f"threads={threads} latent={size}x{size} batch={B}: sdpa {B/m['sdpa']:.1f}/s math {B/m['math']:.1f}/s "
      f"speed-up {m['math']/m['sdpa']:.2f}x (min-based {min(res['math'])/min(res['sdpa']):.2f}x)")
