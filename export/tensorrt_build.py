"""`medfake export tensorrt`: TensorRT engines from an ONNX export, with optimization profiles,
an engine cache, and the same manifest as the ONNX export.

Batch profile ``MIN:OPT:MAX`` counts *images per sampler call*, size profile ``MIN:OPT:MAX``
the image side in pixels (default: the model's native size). Each component's profile follows
from how the sampler calls it: the UNet sees uncond+cond in one batch (2x images with CFG,
1x without), the text encoder sees the prompts (and a single negative prompt), the VAE sees
images. ``profile_for_job`` derives a build config whose profiles cover one job.

Concurrent builds (several ranks of one host, a double launch) are safe: a build of one cache
key holds a file lock on its cache directory, writes a temporary file unique to the process
and thread, and publishes it with ``os.replace``; a process that waited for the lock finds the
published plan and does not build again.

Engines are cached under ``$MEDFAKE_CACHE/tensorrt/<key>`` where the key hashes the ONNX file,
the GPU name, the TensorRT version, the precision (fp16, TF32) and the profile, so a farm node
reuses an engine only if it was built for the same GPU and TensorRT. fp16 engines keep the
layers fed by the UNet's timestep in fp32 (``pin_fp32_from``).

Everything up to the build (profile arithmetic, cache keys, manifest) runs anywhere; the build
itself needs TensorRT and a CUDA GPU and stops with ``CapabilityError`` naming what is missing.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
import threading
import uuid
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

from ..engine.core import capabilities as cap
from ..engine.core.paths import cache_dir
from ..engine.diffusion.backends.components import (FP32_INPUTS, SPECS, UNET_COMPONENTS,
                                                    JobShape, ModelGeometry,
                                                    input_shapes)
from ..engine.diffusion.backends.manifest import ExportError, ExportManifest
from .config import TensorRTBuildConfig

log = logging.getLogger(__name__)

Shape = tuple[int, ...]


def component_batches(component: str, cfg: TensorRTBuildConfig) -> tuple[int, int, int]:
    """(min, opt, max) batch of one component's calls for ``cfg``'s images per call."""
    lo, opt, hi = cfg.min_batch, cfg.opt_batch, cfg.max_batch
    if component in UNET_COMPONENTS:  # CFG doubles the batch; guidance 1 does not
        return lo, 2 * opt, 2 * hi
    if component == "text_encoder":  # the negative prompt is encoded alone
        return 1, opt, hi
    return lo, opt, hi


def profile_shapes(component: str, geom: ModelGeometry, cfg: TensorRTBuildConfig
                   ) -> dict[str, tuple[Shape, Shape, Shape]]:
    """Input name -> (min, opt, max) shapes for the optimization profile (batch and image size
    ranges of ``cfg``)."""
    spec = SPECS[component]
    per = [input_shapes(component, geom, b, s, s)
           for b, s in zip(component_batches(component, cfg), cfg.sizes(geom.image_size))]
    return {name: tuple(tuple(p[name]) for p in per) for name in spec.inputs}


def profile_for_job(job: JobShape, geom: ModelGeometry,
                    base: TensorRTBuildConfig = TensorRTBuildConfig()) -> TensorRTBuildConfig:
    """``base`` with batch and size profiles that cover ``job`` (and the model's native size):
    batch 1..max(job, base), optimised at the job's batch and size."""
    side = max(job.height, job.width)
    lo = min(job.height, job.width, geom.image_size)
    cfg = replace(base, min_batch=1, opt_batch=job.batch, max_batch=max(job.batch, base.max_batch),
                  min_size=lo, opt_size=side, max_size=max(side, geom.image_size))
    cfg.check()
    return cfg


def engine_precision(cfg: TensorRTBuildConfig, onnx_precision: str, weakly_typed: bool) -> str:
    """What an engine computes in: ``fp16`` (fp16 flag or an fp16 graph), ``tf32`` (fp32 graph,
    TF32 allowed: TensorRT's default) or ``fp32``."""
    if onnx_precision == "fp16" or (cfg.fp16 and weakly_typed):
        return "fp16"
    return "fp32" if cfg.strict_fp32 else "tf32"


# max_abs <= tol * max(1, max|onnx|): engines vs the ONNX graph in ORT (CPU, fp32 arithmetic)
ENGINE_TOLERANCE = {"fp16": 5e-2, "tf32": 1e-2, "fp32": 1e-3}


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted([path, *path.parent.glob(path.name + ".data")]):
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def engine_cache_key(onnx_digest: str, gpu_name: str, trt_version: str,
                     cfg: TensorRTBuildConfig, shapes: dict) -> str:
    text = repr((onnx_digest, gpu_name, trt_version, cfg.fp16, cfg.strict_fp32,
                 sorted(shapes.items())))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _build_plan(onnx_path: Path, shapes: dict, cfg: TensorRTBuildConfig, component: str
                ) -> bytes:
    import tensorrt as trt
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    weakly_typed = hasattr(trt.BuilderFlag, "FP16")  # TensorRT < 11; later: strongly typed only
    if not weakly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(cfg.workspace_gb * 2 ** 30))
    if cfg.fp16 and weakly_typed:
        config.set_flag(trt.BuilderFlag.FP16)
        pinned = pin_fp32_from(network, trt, FP32_INPUTS.get(component, ()))
        if pinned:
            config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
            log.info("%s: %d layer(s) after the fp32 inputs kept in fp32", onnx_path, pinned)
    if cfg.strict_fp32 and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ExportError(f"TensorRT failed to build an engine from {onnx_path} (see its log)")
    return bytes(plan)


_STOP_LAYERS = ("MATRIX_MULTIPLY", "FULLY_CONNECTED", "CONVOLUTION")


def pin_fp32_from(network, trt, inputs: tuple[str, ...]) -> int:
    """Constrain to fp32 every layer fed (transitively) by the network inputs named ``inputs``,
    up to the first matrix multiply (the embedding's Linear, which diffusers runs in the model's
    dtype). Layers are in topological order in a TensorRT network. Returns how many."""
    if not inputs:
        return 0
    tainted = {network.get_input(i).name for i in range(network.num_inputs)
               if network.get_input(i).name in inputs}
    floats = (trt.float32, trt.float16)
    stops = {getattr(trt.LayerType, n) for n in _STOP_LAYERS if hasattr(trt.LayerType, n)}
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        ins = [layer.get_input(j) for j in range(layer.num_inputs)]
        if layer.type in stops or not any(t is not None and t.name in tainted for t in ins):
            continue
        outs = [(j, layer.get_output(j)) for j in range(layer.num_outputs)]
        outs = [(j, o) for j, o in outs if o.dtype in floats]
        if not outs:   # shape and index arithmetic: no float to keep precise
            continue
        layer.precision = trt.float32
        for j, out in outs:
            tainted.add(out.name)
            layer.set_output_type(j, trt.float32)
        pinned += 1
    return pinned


def _unique_tmp(path: Path) -> Path:
    """A temporary name beside ``path`` that no other process or thread uses."""
    tag = f"{socket.gethostname()}-{os.getpid()}-{threading.get_ident()}-{uuid.uuid4().hex[:8]}"
    return path.with_name(f".{path.name}.tmp-{tag}")


def publish_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically under a unique temporary name (fsynced)."""
    tmp = _unique_tmp(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def cached_build(path: Path, build: Callable[[], bytes]) -> bool:
    """Make ``path`` exist with ``build()``'s bytes, building at most once across processes
    and threads that share the cache: the build holds ``path``'s directory lock, and whoever
    waited for it finds the published file. Returns whether this call built it."""
    from filelock import FileLock
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.parent / f".{path.name}.lock")):
        if path.exists():
            return False
        publish_bytes(path, build())
        return True


def _copy_published(src: Path, dst: Path) -> None:
    tmp = _unique_tmp(dst)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def build_engines(onnx_dir: str, out_dir: str, cfg: TensorRTBuildConfig = TensorRTBuildConfig()
                  ) -> Path:
    """Build (or fetch from the cache) one engine per exported component; return ``out_dir``."""
    cfg.check()
    src = ExportManifest.load(onnx_dir, kind="onnx")
    if cfg.fp16 and src.precision != "fp16" and not _trt_has_fp16_flag():
        raise ExportError("this TensorRT builds strongly typed networks only: export with "
                          "`medfake export onnx --precision fp16` for fp16 engines")
    shapes = {c: profile_shapes(c, src.geometry, cfg) for c in src.components}
    cap.require_tensorrt("building TensorRT engines")
    import tensorrt as trt
    import torch

    from ..engine.core.distributed import cuda_device_index
    torch.cuda.set_device(cuda_device_index() or 0)   # build on this rank's GPU, not GPU 0
    gpu = torch.cuda.get_device_name()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    computes = engine_precision(cfg, src.precision, _trt_has_fp16_flag())
    manifest = ExportManifest(kind="tensorrt", source_model=src.source_model,
                              source_hash=src.source_hash,
                              precision="fp16" if computes == "fp16" else "fp32",
                              geometry=src.geometry,
                              settings={**asdict(cfg), "onnx_dir": str(Path(onnx_dir).resolve()),
                                        "computes_in": computes},
                              versions={**src.versions, "tensorrt": trt.__version__, "gpu": gpu})
    for name in src.components:
        onnx_path = src.component_path(onnx_dir, name)
        key = engine_cache_key(_file_digest(onnx_path), gpu, trt.__version__, cfg, shapes[name])
        cached = cache_dir("tensorrt", key) / f"{name}.plan"
        build = lambda p=onnx_path, s=shapes[name], n=name: _build_plan(p, s, cfg, n)  # noqa: E731
        if cached_build(cached, build):
            log.info("built TensorRT engine for %s (cache key %s)", name, key)
        _copy_published(cached, out / f"{name}.plan")
        manifest.components[name] = {
            "file": f"{name}.plan", "cache_key": key, "output": SPECS[name].output,
            "profile": {k: [list(s) for s in v] for k, v in shapes[name].items()},
            "validation": [], "tolerance": src.components[name]["tolerance"],
            **{k: src.components[name][k] for k in ("outputs", "deep_cache_branch")
               if k in src.components[name]}}
    for sub in ("tokenizer", "scheduler"):
        if (out / sub).exists():
            shutil.rmtree(out / sub)
        shutil.copytree(Path(onnx_dir) / sub, out / sub)
    if (Path(onnx_dir) / "medfake_prompts.json").is_file():
        shutil.copyfile(Path(onnx_dir) / "medfake_prompts.json", out / "medfake_prompts.json")
    _validate_engines(out, manifest, onnx_dir, cfg, computes)
    manifest.save(out)
    return out


def _validate_engines(out: Path, manifest: ExportManifest, onnx_dir: str,
                      cfg: TensorRTBuildConfig, computes: str) -> None:
    """Compare each engine with the (PyTorch-validated) ONNX graph in ORT on seeded inputs, at
    the profile's smallest and largest batch, with the tolerance of what the engine computes
    in (``computes``: fp16 / tf32 / fp32)."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from ..engine.diffusion.backends.trt_backend import TrtEngine
    bad = []
    for name, entry in manifest.components.items():
        spec = SPECS[name]
        engine = TrtEngine(out / entry["file"])
        sess = ort.InferenceSession(str(Path(onnx_dir) / name / "model.onnx"),
                                    providers=["CPUExecutionProvider"])
        tol = ENGINE_TOLERANCE[computes]
        entry["tolerance"] = {**entry["tolerance"], "engine_vs_onnx": tol, "computes_in": computes}
        geom = replace(manifest.geometry, image_size=cfg.sizes(manifest.geometry.image_size)[1])
        for b in sorted({cfg.min_batch, cfg.max_batch}):
            inputs = spec.example(geom, b, torch.Generator().manual_seed(2000 + b))
            ref = sess.run(None, {n: t.numpy() for n, t in zip(spec.inputs, inputs)})[0]
            got = engine({n: t.cuda() for n, t in zip(spec.inputs, inputs)}).float().cpu().numpy()
            err = float(np.abs(got - ref).max())
            ok = err <= tol * max(1.0, float(np.abs(ref).max()))
            entry["validation"].append({"batch": b, "max_abs": err, "ok": ok})
            print(f"{name:13s} batch {b}: max abs err vs ONNX {err:.2e}  "
                  f"{'OK' if ok else 'OVER TOLERANCE'}")
            if not ok:
                bad.append(name)
    if bad:
        raise ExportError(validation_failure(sorted(set(bad)), computes))


def validation_failure(names: list[str], computes: str) -> str:
    """The one error for engines over their tolerance, with the fix that fits the precision."""
    tol = ENGINE_TOLERANCE[computes]
    fix = {"fp16": "build without --fp16 (and from an fp32 ONNX export) to see whether fp16 "
                   "is the cause",
           "tf32": "rebuild with --strict-fp32 to see whether TF32 is the cause",
           "fp32": "the engine computes in strict fp32, so this is a TensorRT or export bug: "
                   "try another --opset or --exporter for the ONNX export"}[computes]
    return (f"TensorRT engines for {names} differ from their ONNX graphs by more than the "
            f"{computes} tolerance ({tol} x max(1, max|output|)); {fix}")


def _trt_has_fp16_flag() -> bool:
    try:
        import tensorrt as trt
    except Exception:
        return True  # decided later, when TensorRT is required
    return hasattr(trt.BuilderFlag, "FP16")
