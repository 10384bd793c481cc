"""ONNX Runtime execution of an ONNX export (``medfake export onnx``).

Execution providers are picked by capability: ``auto`` takes TensorRT EP > CUDA EP > CPU EP,
using only what the installed ONNX Runtime provides and only GPU providers when a CUDA device
exists; asking for a provider this machine cannot run raises ``CapabilityError``. On CPU the
tensors cross as numpy arrays (zero-copy views); on CUDA through I/O binding of torch tensors,
so latents never leave the GPU.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from .manifest import ExportManifest
from ...core import capabilities as cap

log = logging.getLogger(__name__)

PROVIDERS = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider",
             "cpu": "CPUExecutionProvider"}


def select_providers(requested: str = "auto", cache_dir: str | None = None) -> list:
    """ORT provider list for ``requested`` in {auto, tensorrt, cuda, cpu}."""
    if requested not in ("auto", *PROVIDERS):
        raise ValueError(f"ORT provider must be one of auto, {', '.join(PROVIDERS)}; "
                         f"got {requested!r}")
    cap.require_onnxruntime("the onnx backend")
    have = set(cap.ort_providers())
    gpu = cap.cuda().available
    if requested == "auto":
        order = ["tensorrt", "cuda", "cpu"] if gpu else ["cpu"]
        chosen = [p for p in order if PROVIDERS[p] in have]
    else:
        if requested != "cpu":
            cap.require_cuda(f"ONNX Runtime's {PROVIDERS[requested]}")
        if PROVIDERS[requested] not in have:
            raise cap.CapabilityError(
                f"{PROVIDERS[requested]} is not in this ONNX Runtime build (it has "
                f"{', '.join(sorted(have))}); install 'medfake[gpu]' (onnxruntime-gpu) instead "
                f"of 'medfake[cpu]' — never both")
        chosen = [requested] + (["cuda"] if requested == "tensorrt" else []) + ["cpu"]
    out: list = []
    for p in dict.fromkeys(chosen):
        if p == "tensorrt":
            opts = {"trt_fp16_enable": True, "trt_engine_cache_enable": True}
            if cache_dir:
                opts["trt_engine_cache_path"] = cache_dir
            out.append((PROVIDERS[p], opts))
        else:
            out.append(PROVIDERS[p])
    return out


class OrtBackend:
    """The three networks (and the VAE encoder) as ONNX Runtime sessions."""

    name = "onnx"

    def __init__(self, export_dir: str, provider: str = "auto", threads: int | None = None):
        import onnxruntime as ort
        self.export_dir = Path(export_dir)
        self.manifest = ExportManifest.load(export_dir, kind="onnx")
        g = self.manifest.geometry
        self.latent_channels, self.vae_scale_factor = g.latent_channels, g.vae_scale_factor
        self.scaling_factor, self.unet_in_channels = g.scaling_factor, g.unet_in_channels
        self.geometry = g
        self.providers = select_providers(provider, str(self.export_dir / "trt_cache"))
        self.device = torch.device("cuda" if self.providers[0] != "CPUExecutionProvider" else "cpu")
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = threads or torch.get_num_threads()
        so.log_severity_level = 3
        self.sessions = {}
        for name in ("text_encoder", "unet", "vae_decoder", "vae_encoder"):
            if name in self.manifest.components:
                path = self.manifest.component_path(export_dir, name)
                self.sessions[name] = ort.InferenceSession(str(path), so, providers=self.providers)
        missing = {"text_encoder", "unet", "vae_decoder"} - set(self.sessions)
        if missing:
            raise ValueError(f"{export_dir} lacks {sorted(missing)}; re-run `medfake export onnx`"
                             f" without --components")
        log.info("onnx backend: %s on %s", export_dir, [p if isinstance(p, str) else p[0]
                                                       for p in self.providers])

    def _run(self, name: str, feeds: dict[str, torch.Tensor], out_shape: tuple[int, ...]
             ) -> torch.Tensor:
        sess = self.sessions[name]
        if self.device.type == "cpu":
            arrays = {k: v.detach().cpu().numpy() for k, v in feeds.items()}
            return torch.from_numpy(sess.run(None, arrays)[0])
        binding = sess.io_binding()
        feeds = {k: v.contiguous() for k, v in feeds.items()}
        for k, v in feeds.items():
            binding.bind_input(k, "cuda", v.device.index or 0, _np_dtype(v), list(v.shape),
                               v.data_ptr())
        out = torch.empty(out_shape, dtype=torch.float32, device=self.device)
        binding.bind_output(sess.get_outputs()[0].name, "cuda", out.device.index or 0,
                            np.float32, list(out.shape), out.data_ptr())
        sess.run_with_iobinding(binding)
        return out

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        ids = input_ids.to(self.device, torch.int64)
        g = self.geometry
        return self._run("text_encoder", {"input_ids": ids}, (ids.shape[0], ids.shape[1], g.text_dim))

    def unet(self, latents: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float32).reshape(()).to(self.device)
        b, _, h, w = latents.shape
        return self._run("unet", {"sample": latents.float(), "timestep": t,
                                  "encoder_hidden_states": text.float()},
                         (b, self.latent_channels, h, w))

    def vae_encode(self, images: torch.Tensor) -> torch.Tensor:
        if "vae_encoder" not in self.sessions:
            raise ValueError(f"{self.export_dir} has no vae_encoder; re-export with it "
                             f"(needed for inpainting/outpainting)")
        b, _, h, w = images.shape
        f = self.vae_scale_factor
        return self._run("vae_encoder", {"image": images.float().to(self.device)},
                         (b, 2 * self.latent_channels, h // f, w // f))

    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        b, _, h, w = latents.shape
        f = self.vae_scale_factor
        return self._run("vae_decoder", {"latent": latents.float()},
                         (b, self.geometry.image_channels, h * f, w * f))


def _np_dtype(t: torch.Tensor):
    return {torch.float32: np.float32, torch.int64: np.int64, torch.float16: np.float16}[t.dtype]
