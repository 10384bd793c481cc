"""The denoising loop, written once over a small backend interface.

A backend runs the networks on tensors (``encode_text``, ``unet``, ``vae_decode``, and
``vae_encode`` for image-conditioned modes); ``engine.diffusion.backends`` implements it for
PyTorch eager, ONNX Runtime and TensorRT, and its ``load_model`` loads a model onto any of them.
Schedulers are diffusers schedulers chosen by name and built with ``from_config`` from the
model's own scheduler config. Classifier-free guidance runs uncond+cond in one UNet batch.

Guidance semantics are diffusers': classifier-free guidance is applied only when
``guidance_scale > 1`` (``uses_cfg``). At 1 or below, every image is the conditional prediction
alone, exactly as ``StableDiffusionPipeline`` does, so a class-labelled image is never made from
the negative prompt alone (which ``g * cond + (1 - g) * uncond`` at ``g = 0`` would do).

Determinism contract: each image's initial noise comes from its own ``torch.Generator`` seeded
with its own seed, so an image depends on (model, prompt, seed, sampler settings) and not on the
batch it was generated in (up to float summation order).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import logging

import numpy as np
import torch
from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler,
                       EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, PNDMScheduler,
                       UniPCMultistepScheduler)

from .backends.torch_backend import TorchBackend

log = logging.getLogger(__name__)

SCHEDULERS = {
    "ddim": DDIMScheduler,
    "ddpm": DDPMScheduler,
    "dpm++": DPMSolverMultistepScheduler,
    "euler": EulerDiscreteScheduler,
    "euler-a": EulerAncestralDiscreteScheduler,
    "pndm": PNDMScheduler,
    "unipc": UniPCMultistepScheduler,
}


def make_scheduler(name: str, base_config: dict):
    """Build scheduler ``name`` from a model's scheduler config (diffusers ``from_config``)."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {sorted(SCHEDULERS)}")
    return SCHEDULERS[name].from_config(base_config)


class DiffusionBackend(Protocol):
    """What the loop needs from an inference engine. All tensors are float32 on ``device``."""

    device: torch.device
    latent_channels: int
    vae_scale_factor: int
    scaling_factor: float

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor: ...
    def unet(self, latents: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor: ...
    def vae_encode(self, images: torch.Tensor) -> torch.Tensor: ...   # -> mean|logvar (2C ch)
    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor: ...
    # optional: unet_in_channels (int): 2 * latent_channels + 1 for an inpainting UNet


def uses_cfg(guidance_scale: float) -> bool:
    """True when classifier-free guidance runs (diffusers' rule: ``guidance_scale > 1``)."""
    return guidance_scale > 1.0


@dataclass
class SamplerConfig:
    scheduler: str = "dpm++"
    steps: int = 20
    guidance_scale: float = 4.0
    negative_prompt: str = ""
    height: int = 32
    width: int = 32


class Sampler:
    """Text-to-image generation with CFG over any ``DiffusionBackend``."""

    def __init__(self, backend: DiffusionBackend, tokenizer, scheduler_config: dict,
                 cfg: SamplerConfig):
        self.backend, self.tokenizer, self.cfg = backend, tokenizer, cfg
        self.scheduler = make_scheduler(cfg.scheduler, scheduler_config)
        f = backend.vae_scale_factor
        if cfg.height % f or cfg.width % f:
            raise ValueError(f"image size {cfg.height}x{cfg.width} must be a multiple of the "
                             f"VAE factor {f}")
        self._uncond_cache: dict[str, torch.Tensor] = {}
        if cfg.guidance_scale < 1.0:
            log.warning("guidance_scale %g < 1: no classifier-free guidance (diffusers' rule), "
                        "the same images as guidance 1", cfg.guidance_scale)

    def _embed(self, prompts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(prompts, padding="max_length", truncation=True,
                             max_length=self.tokenizer.model_max_length,
                             return_tensors="pt").input_ids
        return self.backend.encode_text(ids)

    def _uncond(self, n: int) -> torch.Tensor:
        neg = self.cfg.negative_prompt
        if neg not in self._uncond_cache:
            self._uncond_cache[neg] = self._embed([neg])
        e = self._uncond_cache[neg]
        return e.expand(n, *e.shape[1:])

    def initial_latents(self, seeds: list[int]) -> torch.Tensor:
        f, c = self.backend.vae_scale_factor, self.backend.latent_channels
        shape = (c, self.cfg.height // f, self.cfg.width // f)
        return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s))
                            for s in seeds]).to(self.backend.device)

    @torch.inference_mode()
    def generate(self, prompts: list[str], seeds: list[int], output: str = "uint8") -> np.ndarray:
        """Images (N, H, W, 3) for ``prompts`` with one seed each: uint8, or with
        ``output="float"`` float32 in [0, 1] before quantisation (for backend comparisons), or
        with ``output="latent"`` the final latents (N, C, h, w) float32, undecoded and unscaled
        (what diffusers' ``output_type="latent"`` returns)."""
        if len(prompts) != len(seeds):
            raise ValueError("need exactly one seed per prompt")
        n, g = len(prompts), self.cfg.guidance_scale
        cfg_on = uses_cfg(g)
        text = self._embed(prompts)
        if cfg_on:
            text = torch.cat([self._uncond(n), text])
        sched = self.scheduler
        sched.set_timesteps(self.cfg.steps, device=self.backend.device)
        latents = self.initial_latents(seeds) * sched.init_noise_sigma
        gens = [torch.Generator().manual_seed(s + 1) for s in seeds]  # for stochastic schedulers
        for t in sched.timesteps:
            x = torch.cat([latents] * 2) if cfg_on else latents
            x = sched.scale_model_input(x, t)
            eps = self.backend.unet(x, t, text)
            if cfg_on:
                eps_u, eps_c = eps.chunk(2)
                eps = eps_u + g * (eps_c - eps_u)
            latents = sched.step(eps, t, latents, generator=gens if _stochastic(sched) else None
                                 ).prev_sample
        if output == "latent":
            return latents.float().cpu().numpy()
        return self.decode(latents, output)

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor | np.ndarray, output: str = "uint8") -> np.ndarray:
        """Final latents (as ``generate(..., output="latent")`` returns them) -> images, uint8
        or with ``output="float"`` float32 in [0, 1]: the VAE decode ``generate`` ends with."""
        latents = torch.as_tensor(latents, device=self.backend.device)
        images = self.backend.vae_decode(latents / self.backend.scaling_factor)
        if output == "float":
            return ((images.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).float().cpu().numpy()
        images = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return images.permute(0, 2, 3, 1).cpu().numpy()

    # ------------------------------------------------------------------ image-conditioned

    @torch.inference_mode()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Scaled VAE latents of images in [-1, 1] (N, 3, H, W): the mean of the latent
        distribution (deterministic; diffusers samples it) times the scaling factor."""
        moments = self.backend.vae_encode(images.to(self.backend.device))
        return moments[:, :self.backend.latent_channels] * self.backend.scaling_factor

    @torch.inference_mode()
    def generate_conditioned(self, prompts: list[str], seeds: list[int], images: np.ndarray,
                             masks: np.ndarray, output: str = "uint8",
                             keep_known: bool = True) -> np.ndarray:
        """Inpaint/outpaint: regenerate where ``masks`` >= 0.5 and keep ``images`` elsewhere.

        ``images``: uint8 (N, H, W, 3) or (N, H, W) at the sampler's size; ``masks``: (N, H, W)
        with 1 = generate (binarised at 0.5). The UNet decides the method, as in diffusers'
        ``StableDiffusionInpaintPipeline`` at strength 1:

        - 9-channel inpainting UNet: its input is the latents, the mask downsampled to latent
          size (nearest) and the latents of the masked image (``image * (mask < 0.5)``);
        - plain UNet (``latent_channels`` inputs): after every step the known region of the
          latents is replaced by the image's latents noised to the next timestep with the
          sample's own initial noise (exact image latents after the last step).

        With ``keep_known`` the decoded pixels outside the mask are replaced by the original
        ones (the VAE round trip of a real image is not exact). Same determinism contract as
        ``generate``; returns what ``generate`` returns for ``output``.
        """
        n, g = len(prompts), self.cfg.guidance_scale
        cfg_on = uses_cfg(g)
        if not n == len(seeds) == len(images) == len(masks):
            raise ValueError("need exactly one seed, image and mask per prompt")
        h, w = self.cfg.height, self.cfg.width
        if images.shape[1:3] != (h, w) or masks.shape[1:] != (h, w):
            raise ValueError(f"images {images.shape} and masks {masks.shape} must be "
                             f"{h}x{w}, the sampler's size")
        b, c, f = self.backend, self.backend.latent_channels, self.backend.vae_scale_factor
        in_ch = int(getattr(b, "unet_in_channels", c))
        if in_ch not in (c, 2 * c + 1):
            raise ValueError(f"the UNet takes {in_ch} input channels; image-conditioned "
                             f"sampling needs {c} (plain) or {2 * c + 1} (inpainting)")
        x = torch.from_numpy(np.ascontiguousarray(images)).float().div(127.5).sub(1)
        x = x.unsqueeze(1).expand(-1, 3, -1, -1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
        m = torch.from_numpy((np.asarray(masks) >= 0.5).astype(np.float32)).unsqueeze(1)
        m_lat = torch.nn.functional.interpolate(m, size=(h // f, w // f)).to(b.device)
        text = self._embed(prompts)
        if cfg_on:
            text = torch.cat([self._uncond(n), text])
        sched = self.scheduler
        sched.set_timesteps(self.cfg.steps, device=b.device)
        noise = self.initial_latents(seeds)
        latents = noise * sched.init_noise_sigma
        if in_ch == c:
            known, extra = self.encode_images(x), None
        else:
            extra = torch.cat([m_lat, self.encode_images(x * (m < 0.5))], dim=1)
            extra = torch.cat([extra] * 2) if cfg_on else extra
        gens = [torch.Generator().manual_seed(s + 1) for s in seeds]
        timesteps = sched.timesteps
        for i, t in enumerate(timesteps):
            xin = torch.cat([latents] * 2) if cfg_on else latents
            xin = sched.scale_model_input(xin, t)
            if extra is not None:
                xin = torch.cat([xin, extra], dim=1)
            eps = b.unet(xin, t, text)
            if cfg_on:
                eps_u, eps_c = eps.chunk(2)
                eps = eps_u + g * (eps_c - eps_u)
            latents = sched.step(eps, t, latents, generator=gens if _stochastic(sched) else None
                                 ).prev_sample
            if extra is None:
                proper = known
                if i < len(timesteps) - 1:
                    proper = sched.add_noise(known, noise, timesteps[i + 1:i + 2])
                latents = (1 - m_lat) * proper + m_lat * latents
        out = b.vae_decode(latents / b.scaling_factor).clamp(-1, 1).float().cpu()
        if keep_known:
            out = m * out + (1 - m) * x
        if output == "float":
            return ((out + 1) / 2).permute(0, 2, 3, 1).numpy()
        return ((out + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _stochastic(sched) -> bool:
    return isinstance(sched, (DDPMScheduler, EulerAncestralDiscreteScheduler))
