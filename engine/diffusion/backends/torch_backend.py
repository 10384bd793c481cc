"""PyTorch eager execution of a loaded diffusers SD model (any device torch supports).

``precision`` (fp32 modules only) picks the UNet's compute precision:

- ``fp32``: the reference numerics;
- ``bf16``: the UNet runs under ``torch.autocast(device, dtype=torch.bfloat16)`` (matmuls and
  convolutions in bf16, weights stay fp32); on a CPU only where it has native bf16
  (AVX512_BF16 or AMX, ``capabilities.cpu_bf16``), refused with one clear error elsewhere,
  where bf16 is emulated and slower than fp32. The text encoder and the VAE stay fp32;
- ``auto``: fp32. The torch backend is the reference numerics, which other backends and tests
  compare against, so it computes in bf16 only when asked, or when ``--backend auto``'s
  measured, gated choice (``backends.select``) picks ``torch/bf16``.

Modules loaded in fp16/bf16 (``load_components(dtype=...)``) compute in their dtype whatever
``precision`` says; ``.precision`` reports what the UNet actually computes in.
"""
from __future__ import annotations

import contextlib
import logging

import torch

from ...core import capabilities as cap
from ..sd_model import SDComponents

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16")


def resolve_precision(requested: str, device: torch.device | str = "cpu") -> str:
    """``fp32`` or ``bf16`` for ``requested`` on ``device`` (see the module docstring); on a
    GPU ``bf16`` is autocast on that GPU."""
    if requested not in PRECISIONS:
        raise ValueError(f"torch precision must be one of {', '.join(PRECISIONS)}; got "
                         f"{requested!r}")
    if requested == "auto":
        return "fp32"
    if torch.device(device).type != "cpu":
        return requested
    if requested == "bf16" and not cap.cpu_bf16().available:
        raise cap.CapabilityError(
            f"--precision bf16 needs a CPU with native bf16 (AVX512_BF16 or AMX), and this one "
            f"has none ({' and '.join(cap.NATIVE_BF16_FLAGS)} missing from /proc/cpuinfo): bf16 "
            f"would be emulated, slower than fp32. Use --precision fp32 (or auto) here.")
    return requested


class TorchBackend:
    """The three networks in eager mode. ``attention`` picks the attention kernel (``auto``:
    xformers on CUDA when installed, PyTorch SDPA otherwise; see ``kernels.attention``);
    ``fused_kernels`` swaps in the Triton GroupNorm+SiLU kernel (CUDA only, a logged no-op on
    CPU). The modules may be fp16/bf16 (``load_components(dtype=...)``): inputs are cast to
    the module's dtype (the timestep stays float32, as diffusers embeds it in float32) and
    outputs are returned as float32, so the sampler's arithmetic is unchanged. ``precision``:
    see the module docstring (already resolved: ``fp32`` or ``bf16``)."""

    name = "torch"

    def __init__(self, comps: SDComponents, attention: str = "auto", fused_kernels: bool = True,
                 precision: str = "fp32"):
        from ....kernels.attention import apply_attention
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"TorchBackend takes a resolved precision (fp32 or bf16), got "
                             f"{precision!r}; see resolve_precision")
        self.comps = comps
        self.device = comps.unet.device
        # autocast only on fp32 modules: fp16/bf16 modules already compute in their dtype
        self._autocast = precision == "bf16" and comps.unet.dtype == torch.float32
        vae = comps.vae.config
        self.latent_channels = int(vae.latent_channels)
        self.vae_scale_factor = 2 ** (len(vae.block_out_channels) - 1)
        self.scaling_factor = float(vae.scaling_factor)
        self.unet_in_channels = int(comps.unet.config.in_channels)
        for m in (comps.unet, comps.vae, comps.text_encoder):
            m.eval()
        self.attention = apply_attention(comps.unet, attention)
        apply_attention(comps.vae, attention)
        self.fused = 0
        if fused_kernels:
            from ....kernels.groupnorm_silu import patch_resnets
            self.fused = patch_resnets(comps.unet) + patch_resnets(comps.vae)

    @property
    def precision(self) -> str:
        """The UNet's compute precision (recorded in every sample's provenance)."""
        if self._autocast:
            return "bf16"
        return {torch.float32: "fp32", torch.float16: "fp16",
                torch.bfloat16: "bf16"}.get(self.comps.unet.dtype, str(self.comps.unet.dtype))

    @torch.inference_mode()
    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.comps.text_encoder(input_ids.to(self.device))[0].float()

    @torch.inference_mode()
    def unet(self, latents: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        dt = self.comps.unet.dtype
        ctx = (torch.autocast(self.device.type, dtype=torch.bfloat16) if self._autocast
               else contextlib.nullcontext())
        with ctx:
            out = self.comps.unet(latents.to(dt), t, encoder_hidden_states=text.to(dt)).sample
        return out.float()

    @torch.inference_mode()
    def vae_encode(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, self.comps.vae.dtype)
        return self.comps.vae.encode(x).latent_dist.parameters.float()

    @torch.inference_mode()
    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.comps.vae.decode(latents.to(self.comps.vae.dtype)).sample.float()

    # -- step-feature caching (engine.diffusion.deep_cache) --------------------------------

    def require_deep_cache(self, branch: int) -> None:
        """Build (once per branch) the caching wrapper; ``DeepCacheError`` if unsupported."""
        from ..deep_cache import DeepCacheUNet
        caches = self.__dict__.setdefault("_deep_cache", {})
        if branch not in caches:
            caches[branch] = DeepCacheUNet(self.comps.unet, branch)

    @torch.inference_mode()
    def unet_full_with_cache(self, latents: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
                             branch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        self.require_deep_cache(branch)
        dt = self.comps.unet.dtype
        eps, deep = self._deep_cache[branch].full(latents.to(dt), t, text.to(dt))
        return eps.float(), deep

    @torch.inference_mode()
    def unet_shallow(self, latents: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
                     deep: torch.Tensor, branch: int = 1) -> torch.Tensor:
        self.require_deep_cache(branch)
        dt = self.comps.unet.dtype
        return self._deep_cache[branch].shallow(latents.to(dt), t, text.to(dt), deep).float()
