"""Inference backends behind one interface, and one way to load a model onto any of them.

``load_model(path, backend)`` returns a ``LoadedModel`` (backend + tokenizer + scheduler config
+ source model hash) whatever the backend, so callers never branch on it:

- ``torch``: PyTorch eager on a diffusers SD directory.
- ``onnx``: ONNX Runtime on an export dir (``medfake export onnx``).
- ``tensorrt``: native TensorRT on an engine dir (``medfake export tensorrt``). Needs a GPU.
- ``openvino``: OpenVINO's CPU plugin on the same ONNX export, fp32 or bf16 (``precision``;
  bf16 only on a CPU with native bf16). Needs ``medfake[openvino]``.

Exporting is not this layer's job (``export`` sits above ``engine``): given a diffusers dir,
the onnx and tensorrt backends call the ``prepare(path, kind)`` hook passed to ``load_model``,
which returns an export dir of ``kind`` ("onnx" or "tensorrt"). Jobs pass
``medfake.pipelines.models.prepare_export`` (export once, cached by model hash); without a hook
a diffusers dir on those backends is a ``ModelDirError`` naming the export command.
- ``auto``: the fastest backend this machine can run (tensorrt > onnx > torch).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ...core import capabilities as cap

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


def _load_torch(path: str, device: str | None = None, attention: str = "auto", **_) -> LoadedModel:
    from ..sd_model import load_components, model_hash
    from .torch_backend import TorchBackend
    device = device or ("cuda" if cap.cuda().available else "cpu")
    comps = load_components(path, device=device)
    b = TorchBackend(comps, attention=attention)
    return LoadedModel(b, comps.tokenizer, dict(comps.scheduler.config), model_hash(path), "torch",
                       {"attention": b.attention, "fused_groupnorm_silu": b.fused})


def _tokenizer_and_scheduler(export_dir: Path) -> tuple[Any, dict]:
    import json

    from transformers import CLIPTokenizer
    tok = CLIPTokenizer.from_pretrained(export_dir / "tokenizer", local_files_only=True)
    sched = json.loads((export_dir / "scheduler" / "scheduler_config.json").read_text())
    return tok, sched


Prepare = Callable[[str, str], str]   # (diffusers dir, "onnx" | "tensorrt") -> export dir


def _prepared(path: str, kind: str, prepare: Prepare | None) -> Path:
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
    return Path(prepare(path, kind))


def _load_onnx(path: str, provider: str = "auto", threads: int | None = None,
               prepare: Prepare | None = None, **_) -> LoadedModel:
    from .ort_backend import OrtBackend
    p = _prepared(path, "onnx", prepare)
    b = OrtBackend(str(p), provider=provider, threads=threads)
    tok, sched = _tokenizer_and_scheduler(p)
    return LoadedModel(b, tok, sched, b.manifest.source_hash, "onnx",
                       {"export_dir": str(p), "providers": [x if isinstance(x, str) else x[0]
                                                            for x in b.providers]})


def _load_openvino(path: str, precision: str = "auto", threads: int | None = None,
                   prepare: Prepare | None = None, **_) -> LoadedModel:
    from .ov_backend import OpenVinoBackend
    p = _prepared(path, "onnx", prepare)
    b = OpenVinoBackend(str(p), precision=precision, threads=threads)
    tok, sched = _tokenizer_and_scheduler(p)
    return LoadedModel(b, tok, sched, b.manifest.source_hash, "openvino",
                       {"export_dir": str(p), "precision": b.precision})


def _ov_unavailable() -> str | None:
    o = cap.openvino()
    return None if o.available else f"OpenVINO {o.detail}"


def _load_tensorrt(path: str, prepare: Prepare | None = None, **_) -> LoadedModel:
    from .trt_backend import TrtBackend
    cap.require_tensorrt("the tensorrt backend")
    p = _prepared(path, "tensorrt", prepare)
    b = TrtBackend(str(p))
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


def resolve_backend(name: str) -> str:
    """``auto`` -> the fastest runnable backend; otherwise validate the name."""
    if name == "auto":
        for cand in ("tensorrt", "onnx", "torch"):
            if BACKENDS[cand].unavailable() is None:
                return cand
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKEND_CHOICES)}")
    return name


def load_model(path: str, backend: str = "torch", *, prepare: Prepare | None = None,
               **options) -> LoadedModel:
    """Load ``path`` (diffusers dir or an export dir) on ``backend``; ``prepare`` turns a
    diffusers dir into the export the onnx/tensorrt backends need (see the module doc)."""
    name = resolve_backend(backend)
    why = BACKENDS[name].unavailable()
    if why:
        raise cap.CapabilityError(f"backend {name!r} cannot run here: {why}. Use --backend "
                                  f"onnx or torch, or see `medfake doctor`.")
    return BACKENDS[name].load(path, prepare=prepare, **options)
