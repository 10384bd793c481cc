"""OpenVINO execution of an ONNX export (``medfake export onnx``) on a CPU.

The same ONNX files ONNX Runtime runs are compiled by OpenVINO's CPU plugin; there is no second
exporter. ``precision`` picks the CPU plugin's ``INFERENCE_PRECISION_HINT``:

- ``fp32``: every layer in fp32 (the reference numerics);
- ``bf16``: bf16 matmuls/convolutions where the CPU has native bf16 (AVX512_BF16 or AMX);
  refused with one clear error on a CPU without it, where OpenVINO would emulate it slowly;
- ``auto``: bf16 where the CPU has it natively, else fp32.

Each call takes an infer request of its own from the backend's pool (one per concurrent
caller, so one per ``--streams`` stream), which OpenVINO requires: a request is not safe to use
from two threads at once, a compiled model is. The pool, not the calling threads, owns the
requests, so they are released with the backend, never by a worker thread's exit. OpenVINO's
own streams stay at one (latency mode on all the threads): its throughput mode (several
OpenVINO streams) crashed the test process later (SIGSEGV, 2026-12-02), so concurrent callers
share that one stream. Tensors cross as numpy arrays; outputs are copied out of OpenVINO's
buffers before the request is reused.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import torch

from ...core import capabilities as cap
from .manifest import ExportManifest

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16")
_HINT = {"fp32": "f32", "bf16": "bf16"}


def resolve_precision(requested: str) -> str:
    """``fp32`` or ``bf16`` for ``requested`` (see the module docstring)."""
    if requested not in PRECISIONS:
        raise ValueError(f"OpenVINO precision must be one of {', '.join(PRECISIONS)}; got "
                         f"{requested!r}")
    native = cap.openvino_bf16()
    if requested == "auto":
        return "bf16" if native else "fp32"
    if requested == "bf16" and not native:
        raise cap.CapabilityError(
            f"--precision bf16 needs a CPU with native bf16 (AVX512_BF16 or AMX); OpenVINO "
            f"reports {cap.openvino().detail}. Use --precision fp32 (or auto) on this machine.")
    return requested


def compile_config(precision: str, threads: int) -> dict:
    """The CPU plugin's properties: one OpenVINO stream of ``threads`` threads at ``precision``
    (``fp32``/``bf16``, already resolved)."""
    return {"INFERENCE_PRECISION_HINT": _HINT[precision], "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}


class OpenVinoBackend:
    """The three networks (and the VAE encoder) as OpenVINO compiled models on the CPU."""

    name = "openvino"

    def __init__(self, export_dir: str, precision: str = "auto", threads: int | None = None):
        cap.require_openvino("the openvino backend")
        import openvino as ov
        self.export_dir = Path(export_dir)
        self.manifest = ExportManifest.load(export_dir, kind="onnx")
        g = self.manifest.geometry
        self.latent_channels, self.vae_scale_factor = g.latent_channels, g.vae_scale_factor
        self.scaling_factor, self.unet_in_channels = g.scaling_factor, g.unet_in_channels
        self.geometry = g
        self.device = torch.device("cpu")
        self.precision = resolve_precision(precision)
        self.threads = threads or torch.get_num_threads()
        config = compile_config(self.precision, self.threads)
        core = ov.Core()
        self.compiled = {}
        for name in ("text_encoder", "unet", "vae_decoder", "vae_encoder", "unet_deep",
                     "unet_shallow"):
            if name in self.manifest.components:
                path = self.manifest.component_path(export_dir, name)
                self.compiled[name] = core.compile_model(str(path), "CPU", config)
        missing = {"text_encoder", "unet", "vae_decoder"} - set(self.compiled)
        if missing:
            raise ValueError(f"{export_dir} lacks {sorted(missing)}; re-run `medfake export onnx`"
                             f" without --components")
        self._lock = threading.Lock()
        self._idle: dict[str, list] = {name: [] for name in self.compiled}
        log.info("openvino backend: %s, precision %s, %d thread(s)", export_dir, self.precision,
                 self.threads)

    def _run(self, name: str, feeds: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._run_all(name, feeds)[0]

    def _run_all(self, name: str, feeds: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Every output of ``name``, copied out of OpenVINO's buffers before the request goes
        back to the pool."""
        arrays = {}
        for k, v in feeds.items():   # not np.ascontiguousarray: it turns a 0-d timestep 1-d
            a = v.detach().cpu().numpy()
            arrays[k] = a if a.flags.c_contiguous else a.copy()
        with self._lock:
            idle = self._idle[name]
            req = idle.pop() if idle else self.compiled[name].create_infer_request()
        try:
            req.infer(arrays)
            return [torch.from_numpy(np.array(req.get_output_tensor(i).data, dtype=np.float32,
                                              copy=True))
                    for i in range(len(self.compiled[name].outputs))]
        finally:
            with self._lock:
                self._idle[name].append(req)

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self._run("text_encoder", {"input_ids": input_ids.to(torch.int64)})

    def unet(self, latents: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float32).reshape(())
        return self._run("unet", {"sample": latents.float(), "timestep": t,
                                  "encoder_hidden_states": text.float()})

    def vae_encode(self, images: torch.Tensor) -> torch.Tensor:
        if "vae_encoder" not in self.compiled:
            raise ValueError(f"{self.export_dir} has no vae_encoder; re-export with it "
                             f"(needed for inpainting/outpainting)")
        return self._run("vae_encoder", {"image": images.float()})

    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self._run("vae_decoder", {"latent": latents.float()})

    # -- step-feature caching (the export's optional unet_deep / unet_shallow graphs) -----

    def require_deep_cache(self, branch: int) -> None:
        """``DeepCacheError`` naming the re-export command unless the export has the graphs."""
        self.manifest.require_deep_cache(self.export_dir, self.name, branch)

    def unet_full_with_cache(self, latents: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
                             branch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.as_tensor(t, dtype=torch.float32).reshape(())
        eps, deep = self._run_all("unet_deep", {"sample": latents.float(), "timestep": t,
                                                "encoder_hidden_states": text.float()})
        return eps, deep

    def unet_shallow(self, latents: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
                     deep: torch.Tensor, branch: int = 1) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float32).reshape(())
        return self._run("unet_shallow", {"sample": latents.float(), "timestep": t,
                                          "encoder_hidden_states": text.float(),
                                          "deep_feature": deep.float()})
