"""Inference backends behind one interface, and one way to load a model onto any of them.

``load_model(path, backend)`` returns a ``LoadedModel`` (backend + tokenizer + scheduler config
+ source model hash) whatever the backend, so callers never branch on it:

- ``torch``: PyTorch eager on a diffusers SD directory, fp32 or bf16 autocast (``precision``,
  default fp32; bf16 on a CPU only with native bf16).
- ``onnx``: ONNX Runtime on an export dir (``medfake export onnx``).
- ``tensorrt``: native TensorRT on an engine dir (``medfake export tensorrt``). Needs a GPU.
- ``openvino``: OpenVINO's CPU plugin on the same ONNX export, fp32 or bf16 (``precision``;
  bf16 only on a CPU with native bf16). Needs ``medfake[openvino]``.

Exporting is not this layer's job (``export`` sits above ``engine``): given a diffusers dir,
the onnx and tensorrt backends call the ``prepare(path, kind)`` hook passed to ``load_model``,
which returns an export dir of ``kind`` ("onnx" or "tensorrt"). Jobs pass
``medfake.pipelines.models.prepare_export`` (export once, cached by model hash); without a hook
a diffusers dir on those backends is a ``ModelDirError`` naming the export command.
- ``auto``: the fastest backend this machine can run (tensorrt > onnx > torch), where
  tensorrt counts only for an engine dir whose profiles serve the job (``job``: batch and image
  size): auto never starts a TensorRT build, and never picks engines that would refuse the job.
  On a machine without CUDA, ``choose_auto`` (used by ``load_model`` given a ``job``, and by
  jobs large enough to pay for it) picks backend *and* precision by measured speed among what
  passes the precision gate, cached per model and machine (``select``).

Every GPU backend computes on this process's GPU (``core.distributed.cuda_device_index``:
``LOCAL_RANK`` / ``SLURM_LOCALID`` modulo the visible devices), never on GPU 0 by default.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ...core import capabilities as cap

if TYPE_CHECKING:   # components imports torch; this module stays light for the CLI
    from .components import JobShape

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A model ready to sample: what ``engine.sampler.Sampler`` needs, on one backend."""

    backend: Any                 # a DiffusionBackend
    tokenizer: Any
    scheduler_config: dict
    model_hash: str              # hash of the source diffusers directory
    backend_name: str
    details: dict = field(default_factory=dict)

    def sampler(self, cfg):
        from ..sampler import Sampler
        return Sampler(self.backend, self.tokenizer, self.scheduler_config, cfg)


@dataclass(frozen=True)
class BackendSpec:
    name: str
    description: str
    load: Callable[..., LoadedModel]
    unavailable: Callable[[], str | None]   # None when this machine can run it, else why not


def _is_export(path: Path, kind: str) -> bool:
    from .manifest import MANIFEST_NAME, ExportManifest
    return (path / MANIFEST_NAME).is_file() and ExportManifest.load(path).kind == kind


def default_device() -> str:
    """``cuda:N`` for this process's GPU (see ``core.distributed.cuda_device_index``), else cpu."""
    from ...core.distributed import cuda_device_index
    index = cuda_device_index() if cap.cuda().available else None
    return "cpu" if index is None else f"cuda:{index}"


def _load_torch(path: str, device: str | None = None, attention: str = "auto",
                dtype=None, precision: str = "fp32", **_) -> LoadedModel:
    import torch

    from ..sd_model import load_components, model_hash
    from .torch_backend import TorchBackend, resolve_precision
    device = device or default_device()
    resolved = resolve_precision(precision, device)   # refuse before loading any weights
    comps = load_components(path, device=device, dtype=dtype or torch.float32)
    b = TorchBackend(comps, attention=attention, precision=resolved)
    return LoadedModel(b, comps.tokenizer, dict(comps.scheduler.config), model_hash(path), "torch",
                       {"attention": b.attention, "fused_groupnorm_silu": b.fused,
                        "precision": b.precision})


def _tokenizer_and_scheduler(export_dir: Path) -> tuple[Any, dict]:
    import json

    from transformers import CLIPTokenizer
    tok = CLIPTokenizer.from_pretrained(export_dir / "tokenizer", local_files_only=True)
    sched = json.loads((export_dir / "scheduler" / "scheduler_config.json").read_text())
    return tok, sched


# (diffusers dir, "onnx" | "tensorrt", job or None) -> export dir (engines serving the job)
Prepare = Callable[[str, str, "JobShape | None"], str]


def _prepared(path: str, kind: str, prepare: Prepare | None, job: JobShape | None = None
              ) -> Path:
    """``path`` if it is an export of ``kind``, else what ``prepare`` makes of it."""
    p = Path(path)
    if _is_export(p, kind):
        return p
    if prepare is None:
        from ..sd_model import ModelDirError
        then = (", then `medfake export tensorrt --onnx DIR --out ENGINES`"
                if kind == "tensorrt" else "")
        raise ModelDirError(f"{path} is not a {kind} export, which the {kind} backend runs. "
                            f"Export it first (`medfake export onnx --model {path} --out DIR`"
                            f"{then}) and pass that dir, or load it through a medfake job")
    return Path(prepare(path, kind, job))


def _load_onnx(path: str, provider: str = "auto", threads: int | None = None,
               prepare: Prepare | None = None, job: JobShape | None = None, **_) -> LoadedModel:
    from .ort_backend import OrtBackend
    p = _prepared(path, "onnx", prepare, job)
    b = OrtBackend(str(p), provider=provider, threads=threads, job=job)
    tok, sched = _tokenizer_and_scheduler(p)
    return LoadedModel(b, tok, sched, b.manifest.source_hash, "onnx",
                       {"export_dir": str(p), "providers": b.actual_providers["unet"],
                        "device": str(b.device)})


def _load_openvino(path: str, precision: str = "auto", threads: int | None = None,
                   prepare: Prepare | None = None, job: JobShape | None = None,
                   **_) -> LoadedModel:
    from .ov_backend import OpenVinoBackend
    p = _prepared(path, "onnx", prepare, job)
    b = OpenVinoBackend(str(p), precision=precision, threads=threads)
    tok, sched = _tokenizer_and_scheduler(p)
    return LoadedModel(b, tok, sched, b.manifest.source_hash, "openvino",
                       {"export_dir": str(p), "precision": b.precision})


def _ov_unavailable() -> str | None:
    o = cap.openvino()
    return None if o.available else f"OpenVINO {o.detail}"


def _load_tensorrt(path: str, prepare: Prepare | None = None, job: JobShape | None = None,
                   **_) -> LoadedModel:
    from .trt_backend import TrtBackend
    cap.require_tensorrt("the tensorrt backend")
    p = _prepared(path, "tensorrt", prepare, job)
    b = TrtBackend(str(p), job=job)
    tok, sched = _tokenizer_and_scheduler(p)
    return LoadedModel(b, tok, sched, b.manifest.source_hash, "tensorrt", {"engine_dir": str(p)})


def _ort_unavailable() -> str | None:
    o = cap.onnxruntime()
    return None if o.available else o.detail


def _trt_unavailable() -> str | None:
    t, c = cap.tensorrt(), cap.cuda()
    if not t.available:
        return f"TensorRT {t.detail}"
    return None if c.available else "no CUDA GPU"


BACKENDS: dict[str, BackendSpec] = {
    "torch": BackendSpec("torch", "PyTorch eager (xformers/SDPA attention)", _load_torch,
                         lambda: None),
    "onnx": BackendSpec("onnx", "ONNX Runtime (TensorRT/CUDA/CPU execution providers)",
                        _load_onnx, _ort_unavailable),
    "tensorrt": BackendSpec("tensorrt", "native TensorRT engines", _load_tensorrt,
                            _trt_unavailable),
    "openvino": BackendSpec("openvino", "OpenVINO CPU plugin on the ONNX export (fp32/bf16)",
                            _load_openvino, _ov_unavailable),
}
BACKEND_CHOICES = ("auto", *BACKENDS)


def tensorrt_serves(path: str | None, job: JobShape | None) -> str | None:
    """None when ``path`` is a TensorRT engine dir whose profiles serve ``job``, else why not
    (``auto`` picks tensorrt only then: anything else would build engines or refuse the job)."""
    if path is None:
        return "no engine dir given (a diffusers dir would need a TensorRT build)"
    if not _is_export(Path(path), "tensorrt"):
        return f"{path} is not a TensorRT engine dir (auto does not start a TensorRT build)"
    if job is None:
        return None
    from .manifest import ExportManifest
    from .trt_backend import job_misfit
    why = job_misfit(ExportManifest.load(path), job)
    return None if why is None else f"its engines cannot serve the job: {why}"


def check_engines_serve(path: str, job: JobShape) -> None:
    """For a TensorRT engine dir ``path``: ``EngineShapeError`` (one message with the rebuild
    command) unless its profiles serve ``job``; anything else passes (it is built to fit)."""
    if not _is_export(Path(path), "tensorrt"):
        return
    from .manifest import ExportManifest
    from .trt_backend import EngineShapeError, job_misfit, rebuild_hint
    why = job_misfit(ExportManifest.load(path), job)
    if why:
        raise EngineShapeError(f"the TensorRT engines in {path} cannot serve {job.batch} "
                               f"image(s) per call of {job.height}x{job.width}: {why}; "
                               f"{rebuild_hint(job)}")


def resolve_backend(name: str, path: str | None = None, job: JobShape | None = None) -> str:
    """``auto`` -> the fastest runnable backend for ``path`` and ``job`` (see the module doc);
    otherwise validate the name."""
    if name == "auto":
        for cand in ("tensorrt", "onnx", "torch"):
            if BACKENDS[cand].unavailable() is not None:
                continue
            if cand == "tensorrt":
                why = tensorrt_serves(path, job)
                if why:
                    log.info("--backend auto: not tensorrt: %s", why)
                    continue
            return cand
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKEND_CHOICES)}")
    return name


def source_hash(path: str) -> str:
    """The hash of the diffusers weights behind ``path`` (a diffusers or an export dir)."""
    from .manifest import MANIFEST_NAME, ExportManifest
    if (Path(path) / MANIFEST_NAME).is_file():
        return ExportManifest.load(path).source_hash
    from ..sd_model import model_hash
    return model_hash(path)


def choose_auto(path: str, job: JobShape, *, precision: str = "auto",
                prepare: Prepare | None = None, threads: int | None = None,
                allow_measure: bool = True, **measure_options):
    """``select.Choice`` (backend, precision, why) for ``--backend auto`` on a machine without
    CUDA, measured (or read from the cache) for ``path`` and ``job``; None on a CUDA machine
    (``resolve_backend``'s static rules apply there) or when ``allow_measure`` is False and a
    measurement is missing."""
    if cap.cuda().available:
        return None
    from . import select
    return select.choose(path, source_hash(path), job, precision=precision, prepare=prepare,
                         threads=threads, allow_measure=allow_measure, **measure_options)


def load_model(path: str, backend: str = "torch", *, prepare: Prepare | None = None,
               job: JobShape | None = None, **options) -> LoadedModel:
    """Load ``path`` (diffusers dir or an export dir) on ``backend``; ``prepare`` turns a
    diffusers dir into the export the onnx/tensorrt backends need (see the module doc).
    ``job``: the largest batch and size the model will sample (TensorRT profiles; with
    ``auto`` on a CPU, the shape the backend and precision are measured at)."""
    if backend == "auto" and job is not None:
        choice = choose_auto(path, job, precision=options.get("precision", "auto"),
                             prepare=prepare, threads=options.get("threads"))
        if choice is not None:
            options = {**options, "precision": choice.precision}
            return load_model(path, choice.backend, prepare=prepare, job=job, **options)
    name = resolve_backend(backend, path, job)
    why = BACKENDS[name].unavailable()
    if why:
        raise cap.CapabilityError(f"backend {name!r} cannot run here: {why}. Use --backend "
                                  f"onnx or torch, or see `medfake doctor`.")
    return BACKENDS[name].load(path, prepare=prepare, job=job, **options)
