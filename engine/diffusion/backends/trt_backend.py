"""Native TensorRT execution of engines built by ``medfake export tensorrt``.

Tensors stay torch CUDA tensors: each call sets the input shapes and device addresses on the
execution context and enqueues on torch's current stream. Needs TensorRT and a CUDA GPU;
constructing an engine elsewhere raises ``CapabilityError`` naming what is missing.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from .manifest import ExportManifest
from ...core import capabilities as cap

log = logging.getLogger(__name__)


class TrtEngine:
    """One deserialized engine; call with ``{input name: CUDA tensor}`` -> output tensor."""

    def __init__(self, plan_path: str | Path):
        cap.require_tensorrt("the tensorrt backend")
        import tensorrt as trt
        self._trt = trt
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(Path(plan_path).read_bytes())
        if self.engine is None:
            raise RuntimeError(f"{plan_path} is not a TensorRT engine for this GPU/TensorRT; "
                               f"rebuild it with `medfake export tensorrt`")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.OUTPUT
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == mode]
        self.inputs = [n for n in names if n not in self.outputs]

    def __call__(self, feeds: dict[str, torch.Tensor]) -> torch.Tensor:
        trt = self._trt
        for name in self.inputs:
            t = feeds[name].contiguous()
            feeds[name] = t
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        out_name = self.outputs[0]
        shape = tuple(self.context.get_tensor_shape(out_name))
        dtype = {trt.float32: torch.float32, trt.float16: torch.float16}[
            self.engine.get_tensor_dtype(out_name)]
        out = torch.empty(shape, dtype=dtype, device="cuda")
        self.context.set_tensor_address(out_name, out.data_ptr())
        if not self.context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise RuntimeError("TensorRT execution failed (see the TensorRT log)")
        return out


class TrtBackend:
    """UNet / VAE / text encoder as TensorRT engines (see ``export.tensorrt_build``)."""

    name = "tensorrt"

    def __init__(self, engine_dir: str):
        cap.require_tensorrt("the tensorrt backend")
        self.manifest = ExportManifest.load(engine_dir, kind="tensorrt")
        g = self.manifest.geometry
        self.geometry = g
        self.latent_channels, self.vae_scale_factor = g.latent_channels, g.vae_scale_factor
        self.scaling_factor, self.unet_in_channels = g.scaling_factor, g.unet_in_channels
        self.device = torch.device("cuda")
        self.engines = {n: TrtEngine(self.manifest.component_path(engine_dir, n))
                        for n in self.manifest.components}

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.engines["text_encoder"]({"input_ids": input_ids.to("cuda", torch.int64)}).float()

    def unet(self, latents: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float32).reshape(()).to("cuda")
        return self.engines["unet"]({"sample": latents.float(), "timestep": t,
                                     "encoder_hidden_states": text.float()}).float()

    def vae_encode(self, images: torch.Tensor) -> torch.Tensor:
        if "vae_encoder" not in self.engines:
            raise ValueError("this engine dir has no vae_encoder; export and build it")
        return self.engines["vae_encoder"]({"image": images.float().cuda()}).float()

    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.engines["vae_decoder"]({"latent": latents.float()}).float()
