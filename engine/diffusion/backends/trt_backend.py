"""Native TensorRT execution of engines built by ``medfake export tensorrt``.

Tensors stay torch CUDA tensors on this process's GPU (``core.distributed.cuda_device_index``):
each call sets the input shapes and device addresses on an execution context and enqueues on
torch's current stream, so ordering with the torch work before and after is the stream's.

Contracts:

- One execution context per calling thread (``--streams N`` runs N threads): a context holds
  the shapes and addresses of one call and must not be shared by concurrent calls; the
  engine (weights) is shared.
- ``set_input_shape`` is checked: a shape outside the engine's optimisation profile is one
  ``EngineShapeError`` naming the input, the shape, the profile and the rebuild command.
- ``TrtBackend.check_job`` tells before sampling whether the engines' profiles serve a job.

Needs TensorRT and a CUDA GPU; constructing an engine elsewhere raises ``CapabilityError``.
"""
from __future__ import annotations

import logging
import threading
from contextlib import nullcontext
from pathlib import Path

import torch

from .components import JobShape, job_input_shapes, profile_misfit
from .manifest import ExportError, ExportManifest
from ...core import capabilities as cap

log = logging.getLogger(__name__)


class EngineShapeError(ExportError):
    """A call's shapes lie outside the engine's optimisation profile."""


def rebuild_hint(job: JobShape | None = None) -> str:
    if job is None:
        return "rebuild with `medfake export tensorrt --batch MIN:OPT:MAX --size MIN:OPT:MAX`"
    return (f"rebuild with `medfake export tensorrt --batch 1:{job.batch}:{job.batch} --size "
            f"{min(job.height, job.width)}:{max(job.height, job.width)}:"
            f"{max(job.height, job.width)}` (or let the job build engines for a diffusers "
            f"model dir)")


class TrtEngine:
    """One deserialized engine; call with ``{input name: CUDA tensor}`` -> output tensor."""

    def __init__(self, plan_path: str | Path, device: torch.device | None = None,
                 runtime_factory=None):
        if runtime_factory is None:
            cap.require_tensorrt("the tensorrt backend")
        import tensorrt as trt
        self._trt = trt
        self.path = Path(plan_path)
        self.device = device or torch.device("cuda", torch.cuda.current_device())
        self.logger = trt.Logger(trt.Logger.WARNING)
        make_runtime = runtime_factory or trt.Runtime
        self.engine = make_runtime(self.logger).deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise RuntimeError(f"{plan_path} is not a TensorRT engine for this GPU/TensorRT; "
                               f"rebuild it with `medfake export tensorrt`")
        self._local = threading.local()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.OUTPUT
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == mode]
        self.inputs = [n for n in names if n not in self.outputs]

    def _on_device(self):
        """The engine's GPU as the calling thread's current device (a stream thread's current
        device may be another: TensorRT allocates on the current one)."""
        return torch.cuda.device(self.device) if self.device.type == "cuda" else nullcontext()

    @property
    def context(self):
        """This thread's execution context (created on first use, on the engine's GPU)."""
        ctx = getattr(self._local, "context", None)
        if ctx is None:
            with self._on_device():
                ctx = self.engine.create_execution_context()
            if ctx is None:
                raise RuntimeError(f"TensorRT could not create an execution context for "
                                   f"{self.path} (out of GPU memory?)")
            self._local.context = ctx
        return ctx

    def profile(self, name: str) -> tuple[tuple[int, ...], ...]:
        """(min, opt, max) shape of input ``name`` in optimisation profile 0."""
        return tuple(tuple(s) for s in self.engine.get_tensor_profile_shape(name, 0))

    def __call__(self, feeds: dict[str, torch.Tensor]) -> torch.Tensor:
        """The engine's first output."""
        with self._on_device():
            return self._call(feeds)[self.outputs[0]]

    def call_all(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every output by name (the caching graph ``unet_deep`` has two)."""
        with self._on_device():
            return self._call(feeds)

    def _call(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        trt = self._trt
        ctx = self.context
        feeds = dict(feeds)
        for name in self.inputs:
            t = feeds[name].to(self.device).contiguous()
            feeds[name] = t
            if not ctx.set_input_shape(name, tuple(t.shape)):
                lo, _, hi = self.profile(name)
                raise EngineShapeError(
                    f"{self.path.name}: input {name} of shape {tuple(t.shape)} is outside the "
                    f"engine's profile {lo}..{hi}; {rebuild_hint()}")
            ctx.set_tensor_address(name, t.data_ptr())
        outs = {}
        for out_name in self.outputs:
            shape = tuple(ctx.get_tensor_shape(out_name))
            if any(d < 0 for d in shape):
                raise EngineShapeError(f"{self.path.name}: TensorRT could not infer the output "
                                       f"shape {shape} from the inputs; {rebuild_hint()}")
            dtype = {trt.float32: torch.float32, trt.float16: torch.float16}[
                self.engine.get_tensor_dtype(out_name)]
            outs[out_name] = torch.empty(shape, dtype=dtype, device=self.device)
            ctx.set_tensor_address(out_name, outs[out_name].data_ptr())
        if not ctx.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
            raise RuntimeError(f"TensorRT execution of {self.path.name} failed (see the "
                               f"TensorRT log)")
        return outs


def job_misfit(manifest: ExportManifest, job: JobShape) -> str | None:
    """None when every engine's recorded profile serves ``job`` (and a step-feature caching
    job finds the caching engines), else why not."""
    if job.deep_cache and not {"unet_deep", "unet_shallow"} <= set(manifest.components):
        return ("it has no step-feature caching engines (unet_deep, unet_shallow), which "
                "--deep-cache-interval needs: build them from `medfake export onnx ... "
                "--deep-cache`")
    for name, entry in manifest.components.items():
        profile = entry.get("profile")
        if not profile:
            return f"{name} has no recorded profile (built by an older medfake)"
        for shapes in job_input_shapes(name, manifest.geometry, job):
            why = profile_misfit(profile, shapes)
            if why:
                return f"{name}: {why}"
    return None


class TrtBackend:
    """UNet / VAE / text encoder as TensorRT engines (see ``export.tensorrt_build``)."""

    name = "tensorrt"

    def __init__(self, engine_dir: str, job: JobShape | None = None,
                 device_index: int | None = None):
        cap.require_tensorrt("the tensorrt backend")
        self.manifest = ExportManifest.load(engine_dir, kind="tensorrt")
        self.precision = self.manifest.precision   # recorded in every sample's provenance
        g = self.manifest.geometry
        self.geometry = g
        self.latent_channels, self.vae_scale_factor = g.latent_channels, g.vae_scale_factor
        self.scaling_factor, self.unet_in_channels = g.scaling_factor, g.unet_in_channels
        self.engine_dir = engine_dir
        if job is not None:
            self.check_job(job)   # before any GPU memory is taken
        if device_index is None:
            from ...core.distributed import cuda_device_index
            device_index = cuda_device_index() or 0
        torch.cuda.set_device(device_index)   # engines deserialize onto the current device
        self.device = torch.device("cuda", device_index)
        self.engines = {n: TrtEngine(self.manifest.component_path(engine_dir, n), self.device)
                        for n in self.manifest.components}

    def check_job(self, job: JobShape) -> None:
        """``EngineShapeError`` unless these engines' profiles serve ``job``."""
        from . import check_engines_serve
        check_engines_serve(self.engine_dir, job)

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.engines["text_encoder"]({"input_ids": input_ids.to(self.device,
                                                                       torch.int64)}).float()

    def unet(self, latents: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float32).reshape(()).to(self.device)
        return self.engines["unet"]({"sample": latents.float(), "timestep": t,
                                     "encoder_hidden_states": text.float()}).float()

    def vae_encode(self, images: torch.Tensor) -> torch.Tensor:
        if "vae_encoder" not in self.engines:
            raise ValueError("this engine dir has no vae_encoder; export and build it")
        return self.engines["vae_encoder"]({"image": images.float()}).float()

    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.engines["vae_decoder"]({"latent": latents.float()}).float()

    # -- step-feature caching (engines built from an export with --deep-cache) ------------

    def require_deep_cache(self, branch: int) -> None:
        """``DeepCacheError`` naming the rebuild unless the engine dir has the caching graphs."""
        self.manifest.require_deep_cache(self.engine_dir, self.name, branch)

    def _unet_feeds(self, latents, t, text) -> dict[str, torch.Tensor]:
        t = torch.as_tensor(t, dtype=torch.float32).reshape(()).to(self.device)
        return {"sample": latents.float(), "timestep": t, "encoder_hidden_states": text.float()}

    def unet_full_with_cache(self, latents: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
                             branch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.engines["unet_deep"].call_all(self._unet_feeds(latents, t, text))
        return out["noise_pred"].float(), out["deep_feature"]

    def unet_shallow(self, latents: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
                     deep: torch.Tensor, branch: int = 1) -> torch.Tensor:
        feeds = {**self._unet_feeds(latents, t, text), "deep_feature": deep.float()}
        return self.engines["unet_shallow"](feeds).float()
