"""The export jobs' configs (``export onnx``, ``export tensorrt``), apart from the exporters so
the CLI can build its flags without importing torch, onnx or TensorRT."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..engine.core.config import JobConfig, api_only, option

PROTOBUF_LIMIT = 2 * 1024 ** 3
DEFAULT_OPSET = {"torchscript": 17, "dynamo": 23}
# max_abs <= atol + rtol * max|reference|
TOLERANCE = {"fp32": (1e-4, 1e-4), "fp16": (2e-2, 2e-2)}
# engine.diffusion.backends.components.COMPONENT_NAMES (that module imports torch)
COMPONENT_CHOICES = ("text_encoder", "unet", "vae_encoder", "vae_decoder")


@dataclass(frozen=True)
class OnnxExportConfig(JobConfig):
    """``exporter``: "torchscript" (torch.onnx legacy tracer: fast, opset <= 20) or "dynamo"
    (torch.export-based; opset 23 emits a native Attention op). ``bench/bench_export.py``
    measures which graph ORT runs fastest; the default is the measured winner."""

    PROFILES: ClassVar[dict[str, dict[str, Any]]] = {"default": {}}

    opset: int | None = option(None, "ONNX opset (default: per exporter)")
    exporter: str = option("torchscript", "torchscript (legacy tracer, opset <= 20) or dynamo "
                           "(torch.export)", choices=tuple(DEFAULT_OPSET))
    precision: str = option("fp32", "fp16 computes in fp16 inside float32 graphs",
                            choices=tuple(TOLERANCE))
    components: tuple[str, ...] | None = option(None, "components to export (default: all four)",
                                                choices=COMPONENT_CHOICES)
    validate_batches: tuple[int, int] = api_only((1, 3))
    simplify: bool = api_only(True)       # onnxslim: fold shape arithmetic, drop redundant nodes
    external_data_threshold: int = api_only(PROTOBUF_LIMIT)  # bytes of weights; 0 forces external

    def resolved_opset(self) -> int:
        return self.opset or DEFAULT_OPSET[self.exporter]

    def check(self) -> None:
        from ..engine.diffusion.backends.components import COMPONENT_NAMES
        if self.exporter not in DEFAULT_OPSET:
            raise ValueError(f"exporter must be one of {sorted(DEFAULT_OPSET)}, got {self.exporter!r}")
        if self.precision not in TOLERANCE:
            raise ValueError(f"precision must be one of {sorted(TOLERANCE)}, got {self.precision!r}")
        bad = set(self.components or ()) - set(COMPONENT_NAMES)
        if bad:
            raise ValueError(f"unknown components {sorted(bad)}; choose from {COMPONENT_NAMES}")
        if self.exporter == "torchscript" and self.resolved_opset() > 20:
            raise ValueError("the torchscript exporter supports opset <= 20; use --exporter dynamo "
                             "for opset 21-23")


@dataclass(frozen=True)
class TensorRTBuildConfig(JobConfig):
    """Batch profile (images per sampler call, ``--batch MIN:OPT:MAX``), precision, workspace."""

    PROFILES: ClassVar[dict[str, dict[str, Any]]] = {"default": {}}

    min_batch: int = api_only(1)          # the three are the CLI's --batch MIN:OPT:MAX
    opt_batch: int = api_only(8)
    max_batch: int = api_only(16)
    fp16: bool = option(False, "build fp16 engines")
    workspace_gb: float = option(4.0, "TensorRT builder workspace (GiB)")

    @staticmethod
    def parse_batch(text: str) -> dict[str, int]:
        """``"1:8:16"`` -> ``{"min_batch": 1, "opt_batch": 8, "max_batch": 16}``."""
        try:
            lo, opt, hi = (int(p) for p in text.split(":"))
        except ValueError:
            raise ValueError(f"--batch must be MIN:OPT:MAX images per call, e.g. 1:8:16; "
                             f"got {text!r}") from None
        return {"min_batch": lo, "opt_batch": opt, "max_batch": hi}

    def check(self) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError(f"--batch needs 1 <= MIN <= OPT <= MAX; got "
                             f"{self.min_batch}:{self.opt_batch}:{self.max_batch}")
        if self.workspace_gb <= 0:
            raise ValueError(f"--workspace-gb must be positive, got {self.workspace_gb}")
