"""ONNX Runtime execution of an ONNX export (``medfake export onnx``).

Execution providers are picked by capability: ``auto`` takes TensorRT EP > CUDA EP > CPU EP,
using only what the installed ONNX Runtime provides and only GPU providers when a CUDA device
exists; asking for a provider this machine cannot run raises ``CapabilityError``.

Contracts a GPU run relies on:

- Device: GPU providers get ``device_id`` = this process's GPU (``LOCAL_RANK`` /
  ``SLURM_LOCALID`` mapped by ``core.distributed.cuda_device_index``), the same GPU torch uses.
- Actual providers: the device of each session comes from ``session.get_providers()``, not from
  the request. A GPU provider that failed to load (CUDA/cuDNN mismatch: ORT only logs it) is a
  ``CapabilityError`` when it was asked for by name; under ``auto`` that session runs on the
  CPU with numpy inputs, logged as a warning.
- Stream order with I/O binding: torch tensors are bound by pointer, so torch's current stream
  is synchronized before ``run_with_iobinding`` (inputs written, the output's memory no longer
  in use by earlier kernels), and the binding's outputs are synchronized after it, before torch
  reads them. (ORT's ``user_compute_stream`` option would share one stream, but it is fixed per
  session, while every sampler stream is a thread with its own torch stream.)
- Precision: the TensorRT EP enables fp16 only for an fp16 export (``trt_fp16_enable``), so an
  fp32 export runs in fp32 as its provenance says.
- TensorRT EP engine cache: shared by the ranks of a host. Sessions are created under a file
  lock on the cache with explicit profiles covering the job, and (TensorRT EP only) one
  warm-up call per component at the job's largest shapes runs under the same lock, so the
  engines are built and written by one process while the others wait and then read them.
"""
from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from .components import (
    DEEP_CACHE_COMPONENTS,
    JobShape,
    input_shapes,
    job_input_shapes,
    probe_feeds,
)
from .manifest import ExportManifest
from ...core import capabilities as cap

log = logging.getLogger(__name__)

PROVIDERS = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider",
             "cpu": "CPUExecutionProvider"}
GPU_PROVIDERS = frozenset({PROVIDERS["tensorrt"], PROVIDERS["cuda"]})
COMPONENTS = ("text_encoder", "unet", "vae_decoder", "vae_encoder", *DEEP_CACHE_COMPONENTS)
DEFAULT_JOB_BATCH = 16   # export.config.TensorRTBuildConfig.max_batch (export sits above engine)


def _shape_text(shapes: dict[str, tuple]) -> str:
    """ORT TensorRT EP profile syntax: ``name:1x4x64x64,other:2x77``; 0-dim inputs omitted."""
    return ",".join(f"{n}:{'x'.join(map(str, s))}" for n, s in shapes.items() if s)


def trt_profile_options(component: str, manifest: ExportManifest, job: JobShape) -> dict:
    """``trt_profile_{min,opt,max}_shapes`` covering ``job`` (batch 1 .. the job's largest
    batch at the job's size, and the model's native size)."""
    g = manifest.geometry
    big = job_input_shapes(component, g, job)[-1]
    b = job.component_batch(component)
    lo_side = min(job.height, job.width, g.image_size)
    hi_h, hi_w = max(job.height, g.image_size), max(job.width, g.image_size)
    lo = input_shapes(component, g, 1, lo_side, lo_side)
    hi = input_shapes(component, g, b, hi_h, hi_w)
    return {"trt_profile_min_shapes": _shape_text(lo), "trt_profile_opt_shapes": _shape_text(big),
            "trt_profile_max_shapes": _shape_text(hi)}


def select_providers(requested: str = "auto", cache_dir: str | None = None, *,
                     fp16: bool = False, device_id: int | None = None) -> list:
    """ORT provider list for ``requested`` in {auto, tensorrt, cuda, cpu}; GPU providers get
    ``device_id`` (default: this process's GPU) and the TensorRT EP fp16 only when ``fp16``."""
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
    if device_id is None and any(p != "cpu" for p in chosen):
        from ...core.distributed import cuda_device_index
        device_id = cuda_device_index() or 0
    out: list = []
    for p in dict.fromkeys(chosen):
        if p == "tensorrt":
            opts = {"device_id": device_id, "trt_fp16_enable": bool(fp16),
                    "trt_engine_cache_enable": True}
            if cache_dir:
                opts["trt_engine_cache_path"] = cache_dir
            out.append((PROVIDERS[p], opts))
        elif p == "cuda":
            out.append((PROVIDERS[p], {"device_id": device_id}))
        else:
            out.append(PROVIDERS[p])
    return out


def provider_names(providers: list) -> list[str]:
    return [p if isinstance(p, str) else p[0] for p in providers]


def session_device(actual: list[str], device_id: int | None) -> torch.device:
    """Where a session with the providers it actually got computes its (first) nodes."""
    if actual and actual[0] in GPU_PROVIDERS:
        return torch.device("cuda", device_id or 0)
    return torch.device("cpu")


def check_actual_providers(name: str, requested: str, wanted: list[str], actual: list[str]
                           ) -> None:
    """Raise ``CapabilityError`` when a provider asked for by name did not load."""
    if requested == "auto" or requested == "cpu":
        missing = [p for p in wanted if p in GPU_PROVIDERS and p not in actual]
        if missing:
            log.warning("%s: ONNX Runtime could not load %s (it runs on %s); this session "
                        "computes on the CPU. Set ORT log level 0 to see why (often a CUDA or "
                        "cuDNN version mismatch).", name, missing, actual)
        return
    need = PROVIDERS[requested]
    if need not in actual:
        raise cap.CapabilityError(
            f"ONNX Runtime could not load {need} for {name}: the session runs on "
            f"{', '.join(actual)}. Usually the CUDA/cuDNN (or TensorRT) libraries do not match "
            f"this onnxruntime-gpu build; run `medfake doctor` and check onnxruntime-gpu's "
            f"requirements, or use --backend torch")


def session_options(threads: int | None = None):
    """The ``SessionOptions`` every medfake session uses: all graph optimisations,
    ``threads`` intra-op threads (default: torch's), warnings and errors logged only, and no
    CPU memory arena.

    Memory: each session's arena keeps the largest activation memory it ever needed and never
    returns it, so with one session per network (text encoder, UNet, VAE) the process holds
    the *sum* of their peaks (issue 21: 5.0 GB of sessions, 9.5 GB after one UNet call at batch
    4, 11.6 GB after the VAE decode, SD 1.5 at 512 px). Without the arena a call's tensors are
    allocated for the call (the memory pattern plans them as one block) and given back after
    it, so the process peaks at the weights plus the largest single call. Speed cost measured
    on the tiny UNet (batch 16, one thread, 2026-12-02): 20.75 vs 20.41 ms CPU per call
    (+1.7%); without the memory pattern as well it was +5%, so the pattern stays on."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads or torch.get_num_threads()
    so.log_severity_level = 3
    so.enable_cpu_mem_arena = False
    so.enable_mem_pattern = True
    return so


def unet_probe(export_dir: str, threads: int, height: int, width: int, guidance: bool = True):
    """A CPU session of the export's UNet with ``threads`` intra-op threads, returned as
    ``run(batch)``: one UNet call at ``batch`` images of ``height`` x ``width`` px (doubled
    under guidance) on fixed random inputs. Safe to call from several threads at once (one
    session shared, as the backend's streams share it). For ``engine.diffusion.calibrate``."""
    import onnxruntime as ort
    manifest = ExportManifest.load(export_dir, kind="onnx")
    g = manifest.geometry
    sess = ort.InferenceSession(str(manifest.component_path(export_dir, "unet")),
                                session_options(threads), providers=["CPUExecutionProvider"])
    feeds = probe_feeds(g, height, width, guidance)

    def run(batch: int):
        return sess.run(None, feeds(batch))[0]
    return run


class OrtBackend:
    """The three networks (and the VAE encoder) as ONNX Runtime sessions. ``job`` (the
    largest batch and size this backend will be called with) sets the TensorRT EP profiles."""

    name = "onnx"

    def __init__(self, export_dir: str, provider: str = "auto", threads: int | None = None,
                 job: JobShape | None = None, device_id: int | None = None,
                 session_factory=None):
        import onnxruntime as ort
        self.export_dir = Path(export_dir)
        self.manifest = ExportManifest.load(export_dir, kind="onnx")
        g = self.manifest.geometry
        self.latent_channels, self.vae_scale_factor = g.latent_channels, g.vae_scale_factor
        self.scaling_factor, self.unet_in_channels = g.scaling_factor, g.unet_in_channels
        self.geometry = g
        # without a job: TensorRT's default build profile (16 images at the native size)
        self.job = job or JobShape(DEFAULT_JOB_BATCH, g.image_size, g.image_size)
        cache = self.export_dir / "trt_cache"
        self.providers = select_providers(provider, str(cache),
                                          fp16=self.manifest.precision == "fp16",
                                          device_id=device_id)
        gpu_ids = [p[1]["device_id"] for p in self.providers if not isinstance(p, str)]
        self.device_id = gpu_ids[0] if gpu_ids else None
        make = session_factory or ort.InferenceSession
        so = session_options(threads)
        wanted = provider_names(self.providers)
        uses_trt = PROVIDERS["tensorrt"] in wanted
        self.sessions, self.session_devices, self.actual_providers = {}, {}, {}
        lock = nullcontext()
        if uses_trt:
            from filelock import FileLock
            cache.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(cache / ".build.lock"))
        with lock:
            for name in COMPONENTS:
                if name not in self.manifest.components:
                    continue
                path = self.manifest.component_path(export_dir, name)
                provs = [(p[0], {**p[1], **trt_profile_options(name, self.manifest, self.job)})
                         if not isinstance(p, str) and p[0] == PROVIDERS["tensorrt"] else p
                         for p in self.providers]
                sess = make(str(path), so, providers=provs)
                actual = list(sess.get_providers())
                check_actual_providers(name, provider, wanted, actual)
                self.sessions[name] = sess
                self.actual_providers[name] = actual
                self.session_devices[name] = session_device(actual, self.device_id)
            missing = {"text_encoder", "unet", "vae_decoder"} - set(self.sessions)
            if missing:
                raise ValueError(f"{export_dir} lacks {sorted(missing)}; re-run `medfake export "
                                 f"onnx` without --components")
            self.device = self.session_devices["unet"]
            if uses_trt:   # the TensorRT EP builds (and caches) engines on first use
                self.warm_up()
        log.info("onnx backend: %s on %s", export_dir, self.actual_providers)

    def warm_up(self) -> None:
        """One call per component at the job's largest shapes (builds lazy engines)."""
        g = self.geometry
        for name in self.sessions:
            shapes = job_input_shapes(name, g, self.job)[-1]
            feeds = {}
            for k, s in shapes.items():
                dtype = torch.int64 if k == "input_ids" else torch.float32
                feeds[k] = torch.zeros(s, dtype=dtype, device=self.session_devices[name])
            out = self.sessions[name].get_outputs()[0].name
            self._run(name, feeds, self._out_shape(name, shapes), out_name=out)

    def _out_shape(self, name: str, shapes: dict) -> tuple[int, ...]:
        g = self.geometry
        f = g.vae_scale_factor
        if name == "text_encoder":
            b, n = shapes["input_ids"]
            return (b, n, g.text_dim)
        if name in ("unet", *DEEP_CACHE_COMPONENTS):
            b, _, h, w = shapes["sample"]
            return (b, g.latent_channels, h, w)
        if name == "vae_encoder":
            b, _, h, w = shapes["image"]
            return (b, 2 * g.latent_channels, h // f, w // f)
        b, _, h, w = shapes["latent"]
        return (b, g.image_channels, h * f, w * f)

    @property
    def precision(self) -> str:
        """The export's precision (``fp16`` graphs run in fp16 on every provider; an fp32
        export also on the TensorRT EP, whose fp16 is enabled only for fp16 exports)."""
        return self.manifest.precision

    def _run(self, name: str, feeds: dict[str, torch.Tensor], out_shape: tuple[int, ...],
             out_name: str | None = None) -> torch.Tensor:
        sess = self.sessions[name]
        dev = self.session_devices[name]
        if dev.type == "cpu":
            arrays = {k: v.detach().cpu().numpy() for k, v in feeds.items()}
            return torch.from_numpy(sess.run(None, arrays)[0]).to(self.device)
        feeds = {k: v.to(dev).contiguous() for k, v in feeds.items()}
        out = torch.empty(out_shape, dtype=torch.float32, device=dev)
        return run_bound(sess, feeds, out, out_name or sess.get_outputs()[0].name, dev.index or 0)

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        ids = input_ids.to(self.device, torch.int64)
        g = self.geometry
        return self._run("text_encoder", {"input_ids": ids},
                         (ids.shape[0], ids.shape[1], g.text_dim))

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

    # -- step-feature caching (the export's optional unet_deep / unet_shallow graphs) -----

    def require_deep_cache(self, branch: int) -> None:
        """``DeepCacheError`` naming the re-export command unless the export has the graphs."""
        self.manifest.require_deep_cache(self.export_dir, self.name, branch)

    def unet_full_with_cache(self, latents: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
                             branch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        b, _, h, w = latents.shape
        eps, deep = _ort_run_outputs(self, "unet_deep", _unet_feeds(self, latents, t, text),
                                     [(b, self.latent_channels, h, w),
                                      (b, self.geometry.deep_channels, h, w)])
        return eps, deep

    def unet_shallow(self, latents: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
                     deep: torch.Tensor, branch: int = 1) -> torch.Tensor:
        b, _, h, w = latents.shape
        return self._run("unet_shallow", _unet_feeds(self, latents, t, text, deep),
                         (b, self.latent_channels, h, w))


def run_bound(sess, feeds: dict[str, torch.Tensor], out: torch.Tensor, out_name: str,
              device_index: int) -> torch.Tensor:
    """Run ``sess`` on CUDA tensors by pointer (I/O binding), ordered with torch: torch's
    current stream is synchronized first (the inputs are written and the output's memory is
    no longer used by earlier kernels), and the binding's outputs after (ORT's kernels are
    done before torch reads ``out``). Returns ``out``."""
    binding = sess.io_binding()
    for k, v in feeds.items():
        binding.bind_input(k, "cuda", device_index, _np_dtype(v), list(v.shape), v.data_ptr())
    binding.bind_output(out_name, "cuda", device_index, np.float32, list(out.shape),
                        out.data_ptr())
    torch.cuda.current_stream(out.device if out.is_cuda else None).synchronize()
    sess.run_with_iobinding(binding)
    binding.synchronize_outputs()
    return out


def _np_dtype(t: torch.Tensor):
    return {torch.float32: np.float32, torch.int64: np.int64, torch.float16: np.float16}[t.dtype]


def _ort_run_outputs(backend: OrtBackend, name: str, feeds: dict[str, torch.Tensor],
                     out_shapes: list[tuple[int, ...]]) -> list[torch.Tensor]:
    """Every output of session ``name`` (``OrtBackend._run`` returns the first only)."""
    sess, dev = backend.sessions[name], backend.session_devices[name]
    if dev.type == "cpu":
        arrays = {k: v.detach().cpu().numpy() for k, v in feeds.items()}
        return [torch.from_numpy(a).to(backend.device) for a in sess.run(None, arrays)]
    feeds = {k: v.to(dev).contiguous() for k, v in feeds.items()}
    outs = [torch.empty(s, dtype=torch.float32, device=dev) for s in out_shapes]
    binding = sess.io_binding()
    index = dev.index or 0
    for k, v in feeds.items():
        binding.bind_input(k, "cuda", index, _np_dtype(v), list(v.shape), v.data_ptr())
    for o, t in zip(sess.get_outputs(), outs):
        binding.bind_output(o.name, "cuda", index, np.float32, list(t.shape), t.data_ptr())
    torch.cuda.current_stream(dev).synchronize()
    sess.run_with_iobinding(binding)
    binding.synchronize_outputs()
    return outs


def _unet_feeds(backend, latents, t, text, deep=None) -> dict[str, torch.Tensor]:
    t = torch.as_tensor(t, dtype=torch.float32).reshape(()).to(backend.device)
    feeds = {"sample": latents.float(), "timestep": t, "encoder_hidden_states": text.float()}
    if deep is not None:
        feeds["deep_feature"] = deep.float()
    return feeds
