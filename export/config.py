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
# engine.diffusion.backends.components.ALL_COMPONENTS (that module imports torch)
# engine.diffusion.backends.components.EXPORT_ATTENTION_HEADS_PER_CHUNK (the memory estimate's)
EXPORT_ATTENTION_HEADS_PER_CHUNK = 1
COMPONENT_CHOICES = ("text_encoder", "unet", "vae_encoder", "vae_decoder", "unet_deep",
                     "unet_shallow")


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
    components: tuple[str, ...] | None = option(None, "components to export (default: the four; "
                                                "--deep-cache adds the caching graphs)",
                                                choices=COMPONENT_CHOICES)
    deep_cache: bool = option(False, "also export the step-feature caching graphs (unet_deep, "
                              "unet_shallow) that `medfake synth --deep-cache-interval K` needs "
                              "on onnx, openvino and tensorrt")
    attention_heads_per_chunk: int = option(
        EXPORT_ATTENTION_HEADS_PER_CHUNK, "attention computed this many heads at a time, "
        "0 = all at once. ONNX Runtime on a CPU materialises the attention scores of every "
        "head; one head at a time held 5.5x less transient memory and ran faster "
        "(bench/attention_memory.py). The TensorRT builds of `--backend tensorrt` use an "
        "export with 0, for TensorRT's fused attention")
    validate_batches: tuple[int, int] = api_only((1, 3))
    simplify: bool = api_only(True)       # onnxslim: fold shape arithmetic, drop redundant nodes
    external_data_threshold: int = api_only(PROTOBUF_LIMIT)  # bytes of weights; 0 forces external

    def resolved_opset(self) -> int:
        return self.opset or DEFAULT_OPSET[self.exporter]

    def check(self) -> None:
        from ..engine.diffusion.backends.components import ALL_COMPONENTS
        if self.exporter not in DEFAULT_OPSET:
            raise ValueError(f"exporter must be one of {sorted(DEFAULT_OPSET)}, got {self.exporter!r}")
        if self.precision not in TOLERANCE:
            raise ValueError(f"precision must be one of {sorted(TOLERANCE)}, got {self.precision!r}")
        bad = set(self.components or ()) - set(ALL_COMPONENTS)
        if bad:
            raise ValueError(f"unknown components {sorted(bad)}; choose from {ALL_COMPONENTS}")
        if self.attention_heads_per_chunk < 0:
            raise ValueError(f"attention_heads_per_chunk must be >= 0 (0 = all heads at once), "
                             f"got {self.attention_heads_per_chunk}")
        if self.exporter == "torchscript" and self.resolved_opset() > 20:
            raise ValueError("the torchscript exporter supports opset <= 20; use --exporter dynamo "
                             "for opset 21-23")


@dataclass(frozen=True)
class TensorRTBuildConfig(JobConfig):
    """Optimisation profile: images per sampler call (``--batch MIN:OPT:MAX``) and image side in
    pixels (``--size MIN:OPT:MAX``, 0 = the model's native size); precision, workspace.

    ``fp16`` builds fp16 engines (weakly typed TensorRT); fp32 layers use TF32 on Ampere and
    later unless ``strict_fp32`` (TensorRT's default is TF32 on). The engines' validation
    tolerance follows from what the engine computes in (``engine_precision``)."""

    PROFILES: ClassVar[dict[str, dict[str, Any]]] = {"default": {}}

    min_batch: int = api_only(1)          # the three are the CLI's --batch MIN:OPT:MAX
    opt_batch: int = api_only(8)
    max_batch: int = api_only(16)
    min_size: int = api_only(0)           # the three are the CLI's --size MIN:OPT:MAX (pixels)
    opt_size: int = api_only(0)
    max_size: int = api_only(0)
    fp16: bool = option(False, "build fp16 engines")
    strict_fp32: bool = option(False, "no TF32 in fp32 layers (slower; closest to the ONNX graph)")
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

    @staticmethod
    def parse_size(text: str) -> dict[str, int]:
        """``"256:512:768"`` -> ``{"min_size": 256, "opt_size": 512, "max_size": 768}``."""
        try:
            lo, opt, hi = (int(p) for p in text.split(":"))
        except ValueError:
            raise ValueError(f"--size must be MIN:OPT:MAX image side in pixels, e.g. "
                             f"256:512:768; got {text!r}") from None
        return {"min_size": lo, "opt_size": opt, "max_size": hi}

    def sizes(self, native: int) -> tuple[int, int, int]:
        """(min, opt, max) image side, 0 replaced by ``native``."""
        return tuple(s or native for s in (self.min_size, self.opt_size, self.max_size))

    def check(self) -> None:
        sizes = (self.min_size, self.opt_size, self.max_size)
        if any(s < 0 for s in sizes) or (all(sizes) and not sizes[0] <= sizes[1] <= sizes[2]):
            raise ValueError(f"--size needs 0 < MIN <= OPT <= MAX pixels (0 = native); got "
                             f"{':'.join(map(str, sizes))}")
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError(f"--batch needs 1 <= MIN <= OPT <= MAX; got "
                             f"{self.min_batch}:{self.opt_batch}:{self.max_batch}")
        if self.workspace_gb <= 0:
            raise ValueError(f"--workspace-gb must be positive, got {self.workspace_gb}")
