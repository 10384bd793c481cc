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
import math

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
    # optional, for step-feature caching (``SamplerConfig.deep_cache_interval`` > 1; see
    # ``engine.diffusion.deep_cache``): ``require_deep_cache(branch)`` raises
    # ``DeepCacheError`` (naming the fix, e.g. the re-export command) when the backend cannot
    # run it, ``unet_full_with_cache(latents, t, text, branch) -> (eps, deep)`` and
    # ``unet_shallow(latents, t, text, deep, branch) -> eps``.


def uses_cfg(guidance_scale: float) -> bool:
    """True when classifier-free guidance runs (diffusers' rule: ``guidance_scale > 1``)."""
    return guidance_scale > 1.0


@dataclass
class SamplerConfig:
    """Sampler settings. The mass-synthesis options are off by default:

    - ``cfg_cutoff``: the fraction of the steps that run classifier-free guidance; the first
      ``ceil(cfg_cutoff * steps)`` steps run uncond+cond (UNet batch 2N), the rest the
      conditional branch alone (batch N). 1 = guidance on every step.
    - ``deep_cache_interval``: step-feature caching (``engine.diffusion.deep_cache``): every
      ``k``-th step (0, k, 2k, ...) runs the full UNet and keeps its deep feature, the steps
      between run only the shallow path on it. 1 = every step is a full UNet call.
    - ``deep_cache_branch``: how many shallow UNet levels run on a cached step (1 = the
      outermost only, the cheapest).
    """

    scheduler: str = "dpm++"
    steps: int = 20
    guidance_scale: float = 4.0
    negative_prompt: str = ""
    height: int = 32
    width: int = 32
    cfg_cutoff: float = 1.0
    deep_cache_interval: int = 1
    deep_cache_branch: int = 1

    def check(self) -> None:
        """ValueError naming the option when a setting is out of range."""
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not 0.0 <= self.cfg_cutoff <= 1.0:
            raise ValueError(f"--cfg-cutoff is a fraction of the steps in [0, 1], got "
                             f"{self.cfg_cutoff}")
        if self.deep_cache_interval < 1:
            raise ValueError(f"--deep-cache-interval must be >= 1 (1 = off), got "
                             f"{self.deep_cache_interval}")
        if self.deep_cache_branch < 1:
            raise ValueError(f"--deep-cache-branch must be >= 1, got {self.deep_cache_branch}")

    def cfg_steps(self) -> int:
        """How many of the first steps run classifier-free guidance (when it is on)."""
        return min(self.steps, math.ceil(self.cfg_cutoff * self.steps - 1e-9))

    def is_full_step(self, i: int) -> bool:
        """Whether step ``i`` runs the whole UNet (always, unless step-feature caching)."""
        return i % self.deep_cache_interval == 0


class Sampler:
    """Text-to-image generation with CFG over any ``DiffusionBackend``."""

    def __init__(self, backend: DiffusionBackend, tokenizer, scheduler_config: dict,
                 cfg: SamplerConfig):
        self.backend, self.tokenizer, self.cfg = backend, tokenizer, cfg
        cfg.check()
        if cfg.deep_cache_interval > 1:
            from .deep_cache import DeepCacheError
            require = getattr(backend, "require_deep_cache", None)
            if require is None:
                raise DeepCacheError(f"the {getattr(backend, 'name', type(backend).__name__)} "
                                     f"backend cannot run step-feature caching; use --backend "
                                     f"torch, onnx, openvino or tensorrt, or "
                                     f"--deep-cache-interval 1")
            require(cfg.deep_cache_branch)
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
        text = self._embed(prompts)
        latents = self._denoise(self.initial_latents(seeds), text, seeds)
        if output == "latent":
            return latents.float().cpu().numpy()
        return self.decode(latents, output)

    def _denoise(self, noise: torch.Tensor, text: torch.Tensor, seeds: list[int],
                 extra: torch.Tensor | None = None, after_step=None) -> torch.Tensor:
        """The denoising loop (both ``generate`` and ``generate_conditioned``): ``noise`` the
        initial latents (N, C, h, w), ``text`` the prompts' embeddings (N, ...); ``extra``
        (N, ...) channels concatenated to the UNet input (inpainting UNets); ``after_step(i,
        latents) -> latents`` runs after every scheduler step. Returns the final latents.

        Classifier-free guidance (``uses_cfg``) runs uncond+cond in one batch of 2N for the
        first ``cfg.cfg_steps()`` steps and the conditional branch alone (batch N) after;
        with step-feature caching, steps that are not ``cfg.is_full_step`` run the shallow
        pass on the deep feature of the last full step (its conditional half once the batch
        has dropped to N)."""
        cfg, b = self.cfg, self.backend
        n, g = len(seeds), cfg.guidance_scale
        n_cfg = cfg.cfg_steps() if uses_cfg(g) else 0
        text_cfg = torch.cat([self._uncond(n), text]) if n_cfg else None
        extra_cfg = torch.cat([extra] * 2) if n_cfg and extra is not None else None
        sched = self.scheduler
        sched.set_timesteps(cfg.steps, device=b.device)
        latents = noise * sched.init_noise_sigma
        gens = [torch.Generator().manual_seed(s + 1) for s in seeds]  # stochastic schedulers
        caching, deep = cfg.deep_cache_interval > 1, None
        for i, t in enumerate(sched.timesteps):
            guided = i < n_cfg
            x = torch.cat([latents] * 2) if guided else latents
            x = sched.scale_model_input(x, t)
            if extra is not None:
                x = torch.cat([x, extra_cfg if guided else extra], dim=1)
            txt = text_cfg if guided else text
            if not caching:
                eps = b.unet(x, t, txt)
            elif cfg.is_full_step(i) or deep is None:
                eps, deep = b.unet_full_with_cache(x, t, txt, cfg.deep_cache_branch)
            else:
                if deep.shape[0] != x.shape[0]:   # guidance ended: keep the conditional half
                    deep = deep[-x.shape[0]:]
                eps = b.unet_shallow(x, t, txt, deep, cfg.deep_cache_branch)
            if guided:
                eps_u, eps_c = eps.chunk(2)
                eps = eps_u + g * (eps_c - eps_u)
            latents = sched.step(eps, t, latents, generator=gens if _stochastic(sched) else None
                                 ).prev_sample
            if after_step is not None:
                latents = after_step(i, latents)
        return latents

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
        n = len(prompts)
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
        sched = self.scheduler
        noise = self.initial_latents(seeds)
        after_step = extra = None
        if in_ch == c:
            known = self.encode_images(x)

            def after_step(i: int, latents: torch.Tensor) -> torch.Tensor:
                proper = known
                if i < len(sched.timesteps) - 1:
                    proper = sched.add_noise(known, noise, sched.timesteps[i + 1:i + 2])
                return (1 - m_lat) * proper + m_lat * latents
        else:
            extra = torch.cat([m_lat, self.encode_images(x * (m < 0.5))], dim=1)
        latents = self._denoise(noise, text, seeds, extra, after_step)
        out = b.vae_decode(latents / b.scaling_factor).clamp(-1, 1).float().cpu()
        if keep_known:
            out = m * out + (1 - m) * x
        if output == "float":
            return ((out + 1) / 2).permute(0, 2, 3, 1).numpy()
        return ((out + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _stochastic(sched) -> bool:
    return isinstance(sched, (DDPMScheduler, EulerAncestralDiscreteScheduler))
