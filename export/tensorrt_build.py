"""`medfake export tensorrt`: TensorRT engines from an ONNX export, with optimization profiles,
an engine cache, and the same manifest as the ONNX export.

Batch profile ``MIN:OPT:MAX`` counts *images per sampler call*. Each component's profile follows
from how the sampler calls it: the UNet sees uncond+cond in one batch (2x images with CFG,
1x without), the text encoder sees the prompts (and a single negative prompt), the VAE sees
images. Engines are cached under ``$MEDFAKE_CACHE/tensorrt/<key>`` where the key hashes the ONNX
file, the GPU name, the TensorRT version, the precision and the profile, so a farm node reuses
an engine only if it was built for the same GPU and TensorRT.

Everything up to the build (profile arithmetic, cache keys, manifest) runs anywhere; the build
itself needs TensorRT and a CUDA GPU and stops with ``CapabilityError`` naming what is missing.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
from dataclasses import asdict
from pathlib import Path

from ..engine.core import capabilities as cap
from ..engine.core.paths import cache_dir
from ..engine.diffusion.backends.components import SPECS, ModelGeometry
from ..engine.diffusion.backends.manifest import ExportError, ExportManifest
from .config import TensorRTBuildConfig

log = logging.getLogger(__name__)

Shape = tuple[int, ...]


def component_batches(component: str, cfg: TensorRTBuildConfig) -> tuple[int, int, int]:
    """(min, opt, max) batch of one component's calls for ``cfg``'s images per call."""
    lo, opt, hi = cfg.min_batch, cfg.opt_batch, cfg.max_batch
    if component == "unet":          # CFG doubles the batch; guidance 1 does not
        return lo, 2 * opt, 2 * hi
    if component == "text_encoder":  # the negative prompt is encoded alone
        return 1, opt, hi
    return lo, opt, hi


def profile_shapes(component: str, geom: ModelGeometry, cfg: TensorRTBuildConfig
                   ) -> dict[str, tuple[Shape, Shape, Shape]]:
    """Input name -> (min, opt, max) shapes for the optimization profile."""
    spec = SPECS[component]
    per_batch = [spec.shapes(geom, b) for b in component_batches(component, cfg)]
    return {name: tuple(tuple(s[name]) for s in per_batch) for name in spec.inputs}


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted([path, *path.parent.glob(path.name + ".data")]):
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def engine_cache_key(onnx_digest: str, gpu_name: str, trt_version: str,
                     cfg: TensorRTBuildConfig, shapes: dict) -> str:
    text = repr((onnx_digest, gpu_name, trt_version, cfg.fp16, sorted(shapes.items())))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _build_plan(onnx_path: Path, shapes: dict, cfg: TensorRTBuildConfig) -> bytes:
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
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ExportError(f"TensorRT failed to build an engine from {onnx_path} (see its log)")
    return bytes(plan)


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
    gpu = torch.cuda.get_device_name()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = ExportManifest(kind="tensorrt", source_model=src.source_model,
                              source_hash=src.source_hash,
                              precision="fp16" if cfg.fp16 else src.precision,
                              geometry=src.geometry,
                              settings={**asdict(cfg), "onnx_dir": str(Path(onnx_dir).resolve())},
                              versions={**src.versions, "tensorrt": trt.__version__, "gpu": gpu})
    for name in src.components:
        onnx_path = src.component_path(onnx_dir, name)
        key = engine_cache_key(_file_digest(onnx_path), gpu, trt.__version__, cfg, shapes[name])
        cached = cache_dir("tensorrt", key) / f"{name}.plan"
        if not cached.exists():
            log.info("building TensorRT engine for %s (cache key %s)", name, key)
            plan = _build_plan(onnx_path, shapes[name], cfg)
            tmp = cached.with_name(cached.name + ".tmp")
            tmp.write_bytes(plan)
            os.replace(tmp, cached)
        shutil.copyfile(cached, out / f"{name}.plan")
        manifest.components[name] = {
            "file": f"{name}.plan", "cache_key": key, "output": SPECS[name].output,
            "profile": {k: [list(s) for s in v] for k, v in shapes[name].items()},
            "validation": [], "tolerance": src.components[name]["tolerance"]}
    for sub in ("tokenizer", "scheduler"):
        if (out / sub).exists():
            shutil.rmtree(out / sub)
        shutil.copytree(Path(onnx_dir) / sub, out / sub)
    if (Path(onnx_dir) / "medfake_prompts.json").is_file():
        shutil.copyfile(Path(onnx_dir) / "medfake_prompts.json", out / "medfake_prompts.json")
    _validate_engines(out, manifest, onnx_dir, cfg)
    manifest.save(out)
    return out


def _validate_engines(out: Path, manifest: ExportManifest, onnx_dir: str,
                      cfg: TensorRTBuildConfig) -> None:
    """Compare each engine with the (PyTorch-validated) ONNX graph in ORT on seeded inputs."""
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
        tol = 5e-2 if cfg.fp16 else 1e-3
        for b in sorted({cfg.min_batch, cfg.max_batch}):
            inputs = spec.example(manifest.geometry, b, torch.Generator().manual_seed(2000 + b))
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
        raise ExportError(f"TensorRT engines for {sorted(set(bad))} differ from the ONNX graphs "
                          f"beyond tolerance; rebuild without --fp16 to check")


def _trt_has_fp16_flag() -> bool:
    try:
        import tensorrt as trt
    except Exception:
        return True  # decided later, when TensorRT is required
    return hasattr(trt.BuilderFlag, "FP16")
