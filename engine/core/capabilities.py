"""What this machine can run: probes for CUDA, ONNX Runtime providers, TensorRT, xformers,
Triton and DeepSpeed, plus ``require_*`` helpers that fail with one message naming what is
missing and how to get it.

Probes import lazily and never raise; they are cached for the process.
"""
from __future__ import annotations

import functools
import importlib
import importlib.metadata
from dataclasses import dataclass


class CapabilityError(RuntimeError):
    """A GPU-only or optional path was asked for on a machine that cannot run it."""


@dataclass(frozen=True)
class Probe:
    name: str
    available: bool
    version: str = ""
    detail: str = ""


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return ""


@functools.cache
def cuda() -> Probe:
    import torch
    if not torch.cuda.is_available():
        return Probe("cuda", False, torch.version.cuda or "", "no CUDA device visible to torch")
    names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    return Probe("cuda", True, torch.version.cuda or "", names)


@functools.cache
def onnxruntime() -> Probe:
    try:
        import onnxruntime as ort
    except ImportError:
        return Probe("onnxruntime", False, "", "not installed: pip install 'medfake[cpu]' "
                     "(or 'medfake[gpu]' for onnxruntime-gpu; never both)")
    return Probe("onnxruntime", True, ort.__version__, ", ".join(ort.get_available_providers()))


def ort_providers() -> list[str]:
    """Execution providers compiled into the installed ONNX Runtime ([] if not installed)."""
    p = onnxruntime()
    return p.detail.split(", ") if p.available else []


@functools.cache
def tensorrt() -> Probe:
    try:
        import tensorrt as trt  # noqa: F401
    except Exception as e:  # ImportError, or missing CUDA libraries at import
        return Probe("tensorrt", False, "", f"not importable ({type(e).__name__}): install "
                     "'medfake[gpu]' with NVIDIA's index (pip install tensorrt "
                     "--extra-index-url https://pypi.nvidia.com) on a CUDA machine")
    return Probe("tensorrt", True, trt.__version__, "")


@functools.cache
def xformers() -> Probe:
    try:
        import xformers  # noqa: F401
        import xformers.ops  # noqa: F401
    except Exception as e:
        return Probe("xformers", False, "", f"not importable ({type(e).__name__}): "
                     "pip install 'medfake[xformers]' (its wheel pins one torch: only with "
                     "that torch)")
    return Probe("xformers", True, _version("xformers"),
                 "" if cuda().available else "installed, but its attention has no CPU kernel")


@functools.cache
def triton() -> Probe:
    try:
        import triton as tr
    except Exception as e:
        return Probe("triton", False, "", f"not importable ({type(e).__name__})")
    return Probe("triton", True, tr.__version__,
                 "" if cuda().available else "installed; kernels run on CUDA only "
                 "(tests use TRITON_INTERPRET=1 on CPU)")


@functools.cache
def deepspeed() -> Probe:
    version = _version("deepspeed")
    if not version:
        return Probe("deepspeed", False, "", "not installed: pip install deepspeed")
    try:  # which ops can be JIT-built here (no build is triggered)
        from deepspeed.ops.op_builder import CPUAdamBuilder, FusedAdamBuilder
        ops = {"cpu_adam": CPUAdamBuilder().is_compatible(verbose=False),
               "fused_adam": FusedAdamBuilder().is_compatible(verbose=False)}
        detail = ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in ops.items())
    except Exception as e:
        detail = f"op probe failed: {type(e).__name__}: {e}"
    backend = "nccl" if cuda().available else "gloo"
    return Probe("deepspeed", True, version, f"comm backend {backend}; JIT ops: {detail}")


@functools.cache
def openvino() -> Probe:
    """OpenVINO runtime (``medfake[openvino]``); detail: its CPU's optimisation capabilities."""
    try:
        import openvino as ov
    except ImportError:
        return Probe("openvino", False, "", "not installed: pip install 'medfake[openvino]'")
    try:
        caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception as e:  # a broken install: say so rather than fail later
        return Probe("openvino", False, ov.__version__, f"CPU plugin unusable: {e}")
    return Probe("openvino", True, ov.__version__.split("-")[0],
                 "CPU capabilities " + ", ".join(str(c) for c in caps))


def openvino_bf16() -> bool:
    """Whether OpenVINO's CPU plugin reports native bf16 on this CPU (AVX512_BF16 or AMX)."""
    o = openvino()
    return o.available and "BF16" in o.detail.split("capabilities ", 1)[-1].split(", ")


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags the kernel reports (``/proc/cpuinfo``; empty where unreadable)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_bf16() -> Probe:
    """Native bf16 arithmetic on this CPU (AVX512_BF16 or AMX-BF16), which PyTorch's bf16
    autocast and OpenVINO's bf16 hint need to be fast; elsewhere bf16 is emulated (slower than
    fp32). ``version`` is empty; ``detail`` names the flags found or says none were."""
    found = [f for f in NATIVE_BF16_FLAGS if f in cpu_flags()]
    if found:
        return Probe("cpu_bf16", True, "", "native bf16: " + ", ".join(found))
    return Probe("cpu_bf16", False, "", "no native bf16 on this CPU (neither "
                 + " nor ".join(NATIVE_BF16_FLAGS) + " in /proc/cpuinfo)")


def require_openvino(what: str) -> None:
    o = openvino()
    if not o.available:
        raise CapabilityError(f"{what} needs OpenVINO, which is {o.detail}.")


@functools.cache
def rapidocr() -> Probe:
    """The optional offline text detector (``rapidocr``, its PP-OCR ONNX models in the wheel,
    run on the installed ONNX Runtime)."""
    import importlib.util
    version = _version("rapidocr")
    if not version or importlib.util.find_spec("rapidocr") is None:
        return Probe("rapidocr", False, "", "not installed: pip install 'medfake[ocr]' (rapidocr; "
                     "needs ONNX Runtime, medfake[cpu] or medfake[gpu])")
    if not onnxruntime().available:
        return Probe("rapidocr", False, version, f"installed, but ONNX Runtime is "
                     f"{onnxruntime().detail}")
    return Probe("rapidocr", True, version, "PP-OCR text detector (bundled ONNX models)")


def require_rapidocr(what: str) -> None:
    r = rapidocr()
    if not r.available:
        raise CapabilityError(f"{what} needs the offline text detector rapidocr, which is "
                              f"{r.detail}.")


def require_cuda(what: str) -> None:
    c = cuda()
    if not c.available:
        raise CapabilityError(f"{what} needs a CUDA GPU, and this machine has none "
                              f"({c.detail}). Use the 'onnx' (ONNX Runtime CPU) or 'torch' "
                              f"backend here, or run on a GPU node.")


def require_tensorrt(what: str) -> None:
    t = tensorrt()
    if not t.available:
        raise CapabilityError(f"{what} needs TensorRT, which is {t.detail}.")
    require_cuda(what)


def require_onnxruntime(what: str) -> None:
    o = onnxruntime()
    if not o.available:
        raise CapabilityError(f"{what} needs ONNX Runtime, which is {o.detail}.")


def all_probes() -> list[Probe]:
    import torch
    return [Probe("torch", True, torch.__version__, f"{torch.get_num_threads()} CPU threads"),
            cpu_bf16(), cuda(), onnxruntime(), openvino(), tensorrt(), xformers(), triton(),
            deepspeed()]
