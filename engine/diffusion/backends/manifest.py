"""The export manifest: one JSON file per export directory (ONNX or TensorRT) saying what was
exported from which model, with which settings, and how closely it matches PyTorch.

``export_manifest.json``::

    {"format": "medfake-export/1", "kind": "onnx" | "tensorrt", "source_model": path,
     "source_hash": sha, "precision": "fp32" | "fp16", "geometry": {...},
     "settings": {...}, "components": {name: {"file", "opset", "inputs", "output", "bytes",
     "external_data", "validation": [{"batch", "max_abs", "max_rel", "ok"}], "tolerance"}},
     "versions": {...}}
"""
from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .components import ModelGeometry

MANIFEST_NAME = "export_manifest.json"
FORMAT = "medfake-export/1"


class ExportError(ValueError):
    """An export failed validation or its input is not exportable; the message says the fix."""


@dataclass
class ExportManifest:
    kind: str
    source_model: str
    source_hash: str
    precision: str
    geometry: ModelGeometry
    settings: dict[str, Any] = field(default_factory=dict)
    components: dict[str, dict[str, Any]] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)

    def save(self, out_dir: str | os.PathLike) -> Path:
        path = Path(out_dir) / MANIFEST_NAME
        d = {"format": FORMAT, **asdict(self)}
        # unique per process and thread: concurrent writers never share a temporary file
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
        tmp.write_text(json.dumps(d, indent=1) + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, out_dir: str | os.PathLike, kind: str | None = None) -> "ExportManifest":
        path = Path(out_dir) / MANIFEST_NAME
        if not path.is_file():
            raise ExportError(f"{out_dir} is not a medfake export directory (no {MANIFEST_NAME}). "
                              f"Create one with `medfake export onnx --model MODEL_DIR --out DIR`.")
        d = json.loads(path.read_text())
        if d.pop("format", None) != FORMAT:
            raise ExportError(f"{path} has an unknown format; re-export with this medfake version")
        m = cls(**{**d, "geometry": ModelGeometry(**d["geometry"])})
        if kind and m.kind != kind:
            raise ExportError(f"{out_dir} holds a {m.kind} export, but a {kind} export is needed")
        return m

    def component_path(self, out_dir: str | os.PathLike, name: str) -> Path:
        if name not in self.components:
            raise ExportError(f"{out_dir} has no exported {name} (it has "
                              f"{', '.join(self.components) or 'nothing'}); re-export with it")
        return Path(out_dir) / self.components[name]["file"]

    def require_deep_cache(self, out_dir: str | os.PathLike, backend: str, branch: int) -> None:
        """``DeepCacheError`` unless this export holds the step-feature caching graphs
        (``unet_deep``, ``unet_shallow``) for ``branch``; the message names the re-export."""
        from ..deep_cache import DeepCacheError
        missing = [n for n in ("unet_deep", "unet_shallow") if n not in self.components]
        if missing:
            how = ("`medfake export onnx --model MODEL --out DIR --deep-cache`, then rebuild the "
                   "engines from it" if self.kind == "tensorrt" else
                   f"`medfake export onnx --model {self.source_model} --out DIR --deep-cache`")
            raise DeepCacheError(
                f"{out_dir} has no step-feature caching graphs ({', '.join(missing)}), which "
                f"--deep-cache-interval needs on the {backend} backend; re-export with {how} "
                f"(or use --backend torch)")
        have = int(self.components["unet_shallow"].get("deep_cache_branch", 1))
        if have != branch:
            raise DeepCacheError(f"{out_dir} holds caching graphs for --deep-cache-branch {have},"
                                 f" not {branch}; use --deep-cache-branch {have} (or --backend "
                                 f"torch)")
