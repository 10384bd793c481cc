"""The denoising loop, written once over a small backend interface.

A backend runs the three networks on tensors (``encode_text``, ``unet``, ``vae_decode``);
``TorchBackend`` is PyTorch eager, and exported engines plug in behind the same methods.
Schedulers are diffusers schedulers chosen by name and built with ``from_config`` from the
model's own scheduler config. Classifier-free guidance runs uncond+cond in one UNet batch.

Determinism contract: each image's initial noise comes from its own ``torch.Generator`` seeded
with its own seed, so an image depends on (model, prompt, seed, sampler settings) and not on the
batch it was generated in (up to float summation order).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler,
                       EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, PNDMScheduler,
                       UniPCMultistepScheduler)

from .sd_model import SDComponents

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
    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor: ...


class TorchBackend:
    """PyTorch eager execution of a loaded diffusers SD model."""

    def __init__(self, comps: SDComponents):
        self.comps = comps
        self.device = comps.unet.device
        self.latent_channels = comps.vae.config.latent_channels
        self.vae_scale_factor = 2 ** (len(comps.vae.config.block_out_channels) - 1)
        self.scaling_factor = float(comps.vae.config.scaling_factor)
        for m in (comps.unet, comps.vae, comps.text_encoder):
            m.eval()

    @torch.inference_mode()
    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.comps.text_encoder(input_ids.to(self.device))[0]

    @torch.inference_mode()
    def unet(self, latents: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.comps.unet(latents, t, encoder_hidden_states=text).sample

    @torch.inference_mode()
    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.comps.vae.decode(latents).sample


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
    def generate(self, prompts: list[str], seeds: list[int]) -> np.ndarray:
        """Return uint8 images (N, H, W, 3) for ``prompts`` with one seed each."""
        if len(prompts) != len(seeds):
            raise ValueError("need exactly one seed per prompt")
        n, g = len(prompts), self.cfg.guidance_scale
        text = self._embed(prompts)
        if g != 1.0:
            text = torch.cat([self._uncond(n), text])
        sched = self.scheduler
        sched.set_timesteps(self.cfg.steps, device=self.backend.device)
        latents = self.initial_latents(seeds) * sched.init_noise_sigma
        gens = [torch.Generator().manual_seed(s + 1) for s in seeds]  # for stochastic schedulers
        for t in sched.timesteps:
            x = torch.cat([latents] * 2) if g != 1.0 else latents
            x = sched.scale_model_input(x, t)
            eps = self.backend.unet(x, t, text)
            if g != 1.0:
                eps_u, eps_c = eps.chunk(2)
                eps = eps_u + g * (eps_c - eps_u)
            latents = sched.step(eps, t, latents, generator=gens if _stochastic(sched) else None
                                 ).prev_sample
        images = self.backend.vae_decode(latents / self.backend.scaling_factor)
        images = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return images.permute(0, 2, 3, 1).cpu().numpy()


def _stochastic(sched) -> bool:
    return isinstance(sched, (DDPMScheduler, EulerAncestralDiscreteScheduler))
