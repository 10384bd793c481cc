"""Loading a model for a job: the engine's backends plus the export step they leave to the jobs.

``load_model(path, backend, **options)`` is ``engine.diffusion.backends.load_model`` with
``prepare=prepare_export``. Given a diffusers dir, the onnx backend then exports it once
(validated, ``medfake export onnx``) into ``$MEDFAKE_CACHE/onnx/<model hash>``, and the tensorrt
backend builds engines from that export (``medfake export tensorrt``'s cache, keyed by GPU,
TensorRT version and profile) with profiles covering the job's batch and image size
(``export.tensorrt_build.profile_for_job``). Exporting sits in ``export/``, above ``engine``;
this module joins the two.

Concurrent callers (ranks of one host, double launches) are safe: an export into the cache is
built under a file lock named after it, in a temporary dir unique to the process, and a caller
that waited finds it published.
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable

from ..engine.core.atomic import fsync_dir
from ..engine.core.paths import cache_dir
from ..engine.diffusion.backends import LoadedModel
from ..engine.diffusion.backends.components import JobShape
from ..engine.diffusion.backends import load_model as _engine_load_model
from ..engine.diffusion.backends.manifest import MANIFEST_NAME, ExportManifest
from ..engine.diffusion.sd_model import model_hash

log = logging.getLogger(__name__)
__all__ = ["load_model", "prepare_export"]


def _export_cached(model_dir: str, sub: str, make: Callable[[str, str], Any]) -> Path:
    """Build an export of ``model_dir`` once under the cache (atomic: tmp dir then rename)."""
    from filelock import FileLock
    root = cache_dir(sub)
    final = root / model_hash(model_dir)[:24]
    if final.exists():
        return final
    with FileLock(str(root / f".{final.name}.lock")):
        if not final.exists():
            tmp = root / (final.name + f".tmp{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)   # only this pid's: a killed run of it
            log.info("no %s export of %s cached yet: exporting to %s", sub, model_dir, final)
            make(model_dir, str(tmp))
            os.replace(tmp, final)
            fsync_dir(root)
    return final


def _is_export(path: Path, kind: str) -> bool:
    return (path / MANIFEST_NAME).is_file() and ExportManifest.load(path).kind == kind


def prepare_export(path: str, kind: str, job: JobShape | None = None) -> str:
    """An export dir of ``kind`` ("onnx" or "tensorrt") for a diffusers (or ONNX) dir, cached;
    TensorRT engines get profiles that serve ``job`` (default: the model's native size); a
    ``job.deep_cache`` export also holds the step-feature caching graphs. The onnx kind (ONNX
    Runtime, OpenVINO) computes attention one head at a time (``OnnxExportConfig``'s default);
    the TensorRT engines are built from an export with all heads in one attention."""
    from ..export.config import OnnxExportConfig
    from ..export.onnx_export import export_onnx
    p = Path(path)
    deep = job is not None and job.deep_cache
    # ONNX Runtime / OpenVINO get attention one head at a time (the export default); TensorRT
    # builds from an export with all heads in one attention, the pattern it fuses
    cfg = OnnxExportConfig(deep_cache=deep, **(
        {"attention_heads_per_chunk": 0} if kind == "tensorrt" else {}))
    # one cache entry per graph layout (exports cached before head chunking are not reused)
    sub = (f"onnx{'-deepcache' if deep else ''}-heads{cfg.attention_heads_per_chunk}")
    if _is_export(p, "onnx"):
        onnx_dir = p
    else:   # deep: the step-feature caching graphs too
        onnx_dir = _export_cached(path, sub, lambda m, o: export_onnx(m, o, cfg))
    if kind == "onnx":
        return str(onnx_dir)
    if kind != "tensorrt":
        raise ValueError(f"unknown export kind {kind!r}; expected onnx or tensorrt")
    from filelock import FileLock

    from ..export.config import TensorRTBuildConfig
    from ..export.tensorrt_build import build_engines, profile_for_job
    src = ExportManifest.load(onnx_dir)
    g = src.geometry
    cfg = profile_for_job(job or JobShape(1, g.image_size, g.image_size), g, TensorRTBuildConfig())
    key = (f"{src.source_hash[:24]}-b{cfg.max_batch}-s{cfg.min_size}-{cfg.max_size}"
           f"{'-dc' if 'unet_deep' in src.components else ''}")
    out = cache_dir("tensorrt-run", key)
    with FileLock(str(out.parent / f".{key}.lock")):   # one builder per engine dir
        if not _is_export(out, "tensorrt"):
            build_engines(str(onnx_dir), str(out), cfg)
    return str(out)


def load_model(path: str, backend: str = "torch", **options) -> LoadedModel:
    """A model ready to sample on ``backend``, exporting a diffusers dir first when needed."""
    return _engine_load_model(path, backend, prepare=prepare_export, **options)
