"""What each exported network is: its module wrapper, input/output names, dynamic axes, and
seeded example inputs at a given batch size. The ONNX exporter, the validator and the TensorRT
profile builder all read these specs, so no caller branches on the component.

Step-feature caching (``engine.diffusion.deep_cache``) adds two optional UNet graphs, exported
with ``medfake export onnx --deep-cache``: ``unet_deep`` (the full UNet, emitting the deep feature
as a second output ``deep_feature``) and ``unet_shallow`` (the shallow pass, taking it as a
fourth input), both for ``DEEP_CACHE_BRANCH``.

The ONNX graphs take and return float32 (fp16 exports keep float32 I/O) except ``input_ids``
(int64). ``timestep`` is a 0-dim float32 tensor shared by the batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..sd_model import SDComponents

COMPONENT_NAMES = ("text_encoder", "unet", "vae_encoder", "vae_decoder")
DEEP_CACHE_COMPONENTS = ("unet_deep", "unet_shallow")   # optional (``--deep-cache``)
ALL_COMPONENTS = COMPONENT_NAMES + DEEP_CACHE_COMPONENTS
UNET_COMPONENTS = ("unet", *DEEP_CACHE_COMPONENTS)       # the batch doubles under CFG
# attention heads computed at once in an ONNX export (``OnnxExportConfig``'s default; 0 = all):
# ONNX Runtime materialises the scores of the heads it computes together
EXPORT_ATTENTION_HEADS_PER_CHUNK = 1
DEEP_CACHE_BRANCH = 1   # the shallow levels the exported caching graphs run (the cheapest)
# Inputs that stay float32 in fp16 graphs and fp16 TensorRT engines: the UNet's timestep is
# fractional under DPM++/Euler (980.7), and fp16 has 0.5 steps above 512. diffusers builds the
# sinusoidal embedding in float32 and casts the embedding, not the timestep.
FP32_INPUTS = {u: ("timestep",) for u in UNET_COMPONENTS}


class TextEncoderGraph(nn.Module):
    def __init__(self, text_encoder: nn.Module):
        super().__init__()
        self.m = text_encoder

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.m(input_ids, return_dict=False)[0]


class UNetGraph(nn.Module):
    def __init__(self, unet: nn.Module):
        super().__init__()
        self.m = unet

    def forward(self, sample, timestep, encoder_hidden_states):
        return self.m(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                      return_dict=False)[0]


class UNetDeepGraph(nn.Module):
    """The full UNet: (noise_pred, deep_feature) (``DeepCacheUNet.full``)."""

    def __init__(self, unet: nn.Module, branch: int = DEEP_CACHE_BRANCH):
        super().__init__()
        from ..deep_cache import DeepCacheUNet
        self.m = DeepCacheUNet(unet, branch)

    def forward(self, sample, timestep, encoder_hidden_states):
        return self.m.full(sample, timestep, encoder_hidden_states)


class UNetShallowGraph(nn.Module):
    """The shallow pass on a cached deep feature (``DeepCacheUNet.shallow``)."""

    def __init__(self, unet: nn.Module, branch: int = DEEP_CACHE_BRANCH):
        super().__init__()
        from ..deep_cache import DeepCacheUNet
        self.m = DeepCacheUNet(unet, branch)

    def forward(self, sample, timestep, encoder_hidden_states, deep_feature):
        return self.m.shallow(sample, timestep, encoder_hidden_states, deep_feature)


class VaeEncoderGraph(nn.Module):
    """Image in [-1, 1] -> latent distribution parameters (mean and log-variance, 2C channels);
    sampling stays outside the graph so it uses the caller's seeded generator."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.m = vae

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.m.encode(image, return_dict=False)[0].parameters


class VaeDecoderGraph(nn.Module):
    def __init__(self, vae: nn.Module):
        super().__init__()
        self.m = vae

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.m.decode(latent, return_dict=False)[0]


@dataclass(frozen=True)
class ModelGeometry:
    """Shapes an exported model needs at run time (stored in the export manifest)."""

    image_size: int
    image_channels: int
    latent_channels: int
    vae_scale_factor: int
    scaling_factor: float
    unet_in_channels: int
    text_length: int
    text_dim: int
    deep_channels: int = 0   # channels of the DeepCache feature at DEEP_CACHE_BRANCH

    @property
    def latent_size(self) -> int:
        return self.image_size // self.vae_scale_factor

    @classmethod
    def of(cls, comps: SDComponents) -> "ModelGeometry":
        vae, unet = comps.vae.config, comps.unet.config
        factor = 2 ** (len(vae.block_out_channels) - 1)
        return cls(image_size=int(unet.sample_size) * factor, image_channels=int(vae.in_channels),
                   latent_channels=int(vae.latent_channels), vae_scale_factor=factor,
                   scaling_factor=float(vae.scaling_factor),
                   unet_in_channels=int(unet.in_channels),
                   text_length=int(comps.text_encoder.config.max_position_embeddings),
                   text_dim=int(comps.text_encoder.config.hidden_size),
                   deep_channels=_deep_channels(unet))


def _deep_channels(unet_config) -> int:
    from ..deep_cache import deep_channels
    if len(unet_config.block_out_channels) <= DEEP_CACHE_BRANCH:
        return 0
    return deep_channels(unet_config, DEEP_CACHE_BRANCH)


@dataclass(frozen=True)
class ComponentSpec:
    name: str
    wrap: Callable[[SDComponents], nn.Module]
    inputs: tuple[str, ...]
    output: str
    # input name -> {axis: symbolic name}; the output shares the batch axis
    dynamic_axes: dict
    example: Callable[[ModelGeometry, int, torch.Generator], tuple[torch.Tensor, ...]]
    extra_outputs: tuple[str, ...] = ()   # after ``output``, sharing its batch/height/width

    @property
    def outputs(self) -> tuple[str, ...]:
        return (self.output, *self.extra_outputs)

    def shapes(self, g: ModelGeometry, batch: int) -> dict[str, list[int]]:
        """Concrete input shapes at ``batch`` (used for TensorRT profiles and the manifest)."""
        gen = torch.Generator().manual_seed(0)
        return {n: list(t.shape) for n, t in zip(self.inputs, self.example(g, batch, gen))}


def _text_example(g: ModelGeometry, b: int, gen: torch.Generator):
    return (torch.randint(0, 49406, (b, g.text_length), generator=gen),)


def _unet_example(g: ModelGeometry, b: int, gen: torch.Generator):
    s = g.latent_size
    return (torch.randn(b, g.unet_in_channels, s, s, generator=gen),
            torch.tensor(float(torch.randint(0, 1000, (1,), generator=gen))),
            torch.randn(b, g.text_length, g.text_dim, generator=gen))


def _unet_shallow_example(g: ModelGeometry, b: int, gen: torch.Generator):
    s = g.latent_size // 2 ** (DEEP_CACHE_BRANCH - 1)
    return (*_unet_example(g, b, gen), torch.randn(b, g.deep_channels, s, s, generator=gen))


def _vae_enc_example(g: ModelGeometry, b: int, gen: torch.Generator):
    return (torch.rand(b, g.image_channels, g.image_size, g.image_size, generator=gen) * 2 - 1,)


def _vae_dec_example(g: ModelGeometry, b: int, gen: torch.Generator):
    s = g.latent_size
    return (torch.randn(b, g.latent_channels, s, s, generator=gen),)


_B, _HW = {0: "batch"}, {0: "batch", 2: "height", 3: "width"}
SPECS: dict[str, ComponentSpec] = {
    "text_encoder": ComponentSpec("text_encoder", lambda c: TextEncoderGraph(c.text_encoder),
                                  ("input_ids",), "last_hidden_state", {"input_ids": _B},
                                  _text_example),
    "unet": ComponentSpec("unet", lambda c: UNetGraph(c.unet),
                          ("sample", "timestep", "encoder_hidden_states"), "noise_pred",
                          {"sample": _HW, "encoder_hidden_states": _B}, _unet_example),
    "unet_deep": ComponentSpec("unet_deep", lambda c: UNetDeepGraph(c.unet),
                               ("sample", "timestep", "encoder_hidden_states"), "noise_pred",
                               {"sample": _HW, "encoder_hidden_states": _B}, _unet_example,
                               ("deep_feature",)),
    "unet_shallow": ComponentSpec("unet_shallow", lambda c: UNetShallowGraph(c.unet),
                                  ("sample", "timestep", "encoder_hidden_states", "deep_feature"),
                                  "noise_pred", {"sample": _HW, "encoder_hidden_states": _B,
                                                 "deep_feature": _HW}, _unet_shallow_example),
    "vae_encoder": ComponentSpec("vae_encoder", lambda c: VaeEncoderGraph(c.vae), ("image",),
                                 "latent_parameters", {"image": _HW}, _vae_enc_example),
    "vae_decoder": ComponentSpec("vae_decoder", lambda c: VaeDecoderGraph(c.vae), ("latent",),
                                 "image", {"latent": _HW}, _vae_dec_example),
}


Shape = tuple[int, ...]


@dataclass(frozen=True)
class JobShape:
    """What a sampling job asks of a backend: at most ``batch`` images per sampler call of
    ``height`` x ``width`` pixels; ``guidance`` (classifier-free guidance above 1) doubles the
    UNet's batch, and with ``truncated_guidance`` (``SamplerConfig.cfg_cutoff`` < 1) the
    UNet also runs at ``batch`` after the cutoff. Engines with fixed optimisation profiles check
    they can serve every batch (``component_batches``). ``deep_cache``: the job runs the
    step-feature caching graphs (an export made for it must hold them)."""

    batch: int
    height: int
    width: int
    guidance: bool = True
    truncated_guidance: bool = False
    deep_cache: bool = False   # step-feature caching: the export needs the caching graphs

    def component_batch(self, component: str) -> int:
        """The largest batch ``component`` sees in this job."""
        return max(self.component_batches(component))

    def component_batches(self, component: str) -> tuple[int, ...]:
        """Every full-job batch ``component`` runs at (a job's tail batch may be smaller):
        2N under guidance, and also N once guidance is truncated."""
        if component in UNET_COMPONENTS and self.guidance:
            return (self.batch, 2 * self.batch) if self.truncated_guidance else (2 * self.batch,)
        return (self.batch,)


def input_shapes(component: str, g: ModelGeometry, batch: int, height: int | None = None,
                 width: int | None = None) -> dict[str, Shape]:
    """Concrete input shapes of ``component`` at ``batch`` images of ``height`` x ``width``
    pixels (default: the model's native size). Sizes must be multiples of the VAE factor."""
    h, w = height or g.image_size, width or g.image_size
    f = g.vae_scale_factor
    if h % f or w % f:
        raise ValueError(f"image size {h}x{w} is not a multiple of the VAE factor {f}")
    if component == "text_encoder":
        return {"input_ids": (batch, g.text_length)}
    if component in UNET_COMPONENTS:
        shapes = {"sample": (batch, g.unet_in_channels, h // f, w // f), "timestep": (),
                  "encoder_hidden_states": (batch, g.text_length, g.text_dim)}
        if component == "unet_shallow":
            d = f * 2 ** (DEEP_CACHE_BRANCH - 1)
            shapes["deep_feature"] = (batch, g.deep_channels, h // d, w // d)
        return shapes
    if component == "vae_encoder":
        return {"image": (batch, g.image_channels, h, w)}
    if component == "vae_decoder":
        return {"latent": (batch, g.latent_channels, h // f, w // f)}
    raise ValueError(f"unknown component {component!r}; choose from {ALL_COMPONENTS}")


def job_input_shapes(component: str, g: ModelGeometry, job: JobShape) -> list[dict[str, Shape]]:
    """The input shapes ``component`` sees in ``job``, smallest batch first: batch 1 (a tail
    batch; the text encoder also encodes the negative prompt alone) and each of its full
    batches (``JobShape.component_batches``); the last is the largest."""
    return [input_shapes(component, g, b, job.height, job.width)
            for b in sorted({1, *job.component_batches(component)})]


def profile_misfit(profile: dict[str, list], shapes: dict[str, Shape]) -> str | None:
    """None when every input shape lies inside its ``[min, opt, max]`` profile range, else a
    sentence naming the first input that does not fit."""
    for name, shape in shapes.items():
        if name not in profile:
            return f"the engine has no profile for input {name!r}"
        lo, _, hi = (tuple(s) for s in profile[name])
        if len(lo) != len(shape) or any(not a <= s <= b for a, s, b in zip(lo, shape, hi)):
            return f"input {name} shape {tuple(shape)} is outside the profile {lo}..{hi}"
    return None


def probe_feeds(g: ModelGeometry, height: int, width: int, guidance: bool
                ) -> Callable[[int], dict[str, np.ndarray]]:
    """``feeds(batch)``: fixed random UNet inputs for ``batch`` images of ``height`` x ``width``
    px (doubled under guidance), made once per batch and shared by the threads that ask (the
    calibration probes of ONNX Runtime and OpenVINO)."""
    import threading
    rng = np.random.default_rng(0)
    made: dict[int, dict[str, np.ndarray]] = {}
    lock = threading.Lock()

    def feeds(batch: int) -> dict[str, np.ndarray]:
        with lock:
            if batch not in made:
                shapes = input_shapes("unet", g, 2 * batch if guidance else batch, height, width)
                made[batch] = {k: rng.standard_normal(s, dtype=np.float32) if s
                               else np.array(500.0, np.float32) for k, s in shapes.items()}
            return made[batch]
    return feeds
