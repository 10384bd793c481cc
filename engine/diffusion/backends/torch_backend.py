"""PyTorch eager execution of a loaded diffusers SD model (any device torch supports)."""
from __future__ import annotations

import logging

import torch

from ..sd_model import SDComponents

log = logging.getLogger(__name__)


class TorchBackend:
    """The three networks in eager mode. ``attention`` picks the attention kernel (``auto``:
    xformers on CUDA when installed, PyTorch SDPA otherwise; see ``kernels.attention``);
    ``fused_kernels`` swaps in the Triton GroupNorm+SiLU kernel (CUDA only, a logged no-op on
    CPU). The modules may be fp16/bf16 (``load_components(dtype=...)``): inputs are cast to
    the module's dtype (the timestep stays float32, as diffusers embeds it in float32) and
    outputs are returned as float32, so the sampler's arithmetic is unchanged."""

    name = "torch"

    def __init__(self, comps: SDComponents, attention: str = "auto", fused_kernels: bool = True):
        from ....kernels.attention import apply_attention
        self.comps = comps
        self.device = comps.unet.device
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
        return {torch.float32: "fp32", torch.float16: "fp16",
                torch.bfloat16: "bf16"}.get(self.comps.unet.dtype, str(self.comps.unet.dtype))

    @torch.inference_mode()
    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.comps.text_encoder(input_ids.to(self.device))[0].float()

    @torch.inference_mode()
    def unet(self, latents: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        dt = self.comps.unet.dtype
        return self.comps.unet(latents.to(dt), t, encoder_hidden_states=text.to(dt)).sample.float()

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
