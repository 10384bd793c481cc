"""GPU acceptance: every GPU path medfake has, checked against the PyTorch fp32 reference and
timed, in one command.

    python bench/gpu_acceptance.py OUT_DIR [--preset sd15] [--size 512] [--steps 20] [--batch 8]

On one CUDA GPU, with no network and no model hub, it builds a random-weight model of
``--preset`` (default sd15: SD 1.5's published architecture, the real-size test fixture), the
PyTorch fp32 reference images for a fixed set of prompts and seeds, and then, for each path
installed here, the same images on that path:

- torch fp16 / bf16 eager with SDPA; torch fp16 + xformers;
- ONNX Runtime CUDA EP with I/O binding; ONNX Runtime TensorRT EP;
- native TensorRT fp16 and fp32 (TF32) from a dynamic profile, also at a size and batch other
  than the export's;
- inpainting (latent-replacement, plain UNet) on each of those;
- the mass-synthesis sampler options (CFG truncation after half the steps + DeepCache every 3rd
  step, ``FAST``) on torch fp16, the ORT CUDA EP and native TensorRT fp16, each against the
  torch fp32 reference *with the same options*; the ONNX/TensorRT rows run the second exported
  graph (the shallow pass, ``OnnxExportConfig(deep_cache=True)``);
- the fused Triton GroupNorm+SiLU kernel on CUDA vs its PyTorch definition;
- DreamBooth LoRA, 20 steps, fp16 and bf16 (8-bit Adam when bitsandbytes is installed);
- CLIP pretraining, 20 steps, DeepSpeed ZeRO-2 on NCCL, world size 1 (and 2 ranks with 2 GPUs);
- two synthesis ranks on two GPUs (each must report its own device).

Each row: path | ran / not installed / skipped / failed | max image difference vs the fp32
reference (and the bound it must stay under) | images/s at ``--size``, ``--steps``, batch
``--batch`` | speed relative to torch fp16. The table is printed and written as
``OUT_DIR/gpu_acceptance.json`` (and ``.md``). Exit status 1 if any installed path failed, else 0.

Images are compared as float arrays in [0, 1]; the bounds (``BOUNDS``) are the largest max-abs
pixel difference accepted per precision. They were set from the arithmetic (fp16/bf16 rounding
over 20 steps), not measured: no GPU had run medfake when they were written, so the first GPU
run calibrates them (see docs/export-backends.md).

On a machine without CUDA every GPU path is reported "skipped" with the reason and the exit
status is 0; a path whose package is missing is "not installed", never a crash.
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import logging
import os
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

log = logging.getLogger("gpu_acceptance")

# max |image - fp32 reference| (images in [0, 1]) accepted per path precision
BOUNDS = {"fp32": 2e-2, "tf32": 6e-2, "fp16": 0.15, "bf16": 0.25}
# the mass-synthesis sampler options the FAST rows run (SamplerConfig fields; the frontier's
# 2026-12-03 recommendation on the embedded generator used the same two)
FAST = {"cfg_cutoff": 0.5, "deep_cache_interval": 3}
PROMPTS = ["a CT image of a liver cyst", "an MRI of a brain tumour", "a chest x-ray",
           "a CT image of a kidney stone"]
RAN, NOT_INSTALLED, SKIPPED, FAILED = "ran", "not installed", "skipped", "failed"


@dataclass
class PathResult:
    """One row of the table."""

    path: str
    status: str
    max_diff: float | None = None
    bound: float | None = None
    images_per_s: float | None = None
    vs_torch_fp16: float | None = None
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class PathFailed(RuntimeError):
    """A path ran but its result is wrong (over the bound, bad exit status)."""


def missing_packages(packages: tuple[str, ...]) -> list[str]:
    """The import names in ``packages`` that are not installed (no import is attempted)."""
    out = []
    for p in packages:
        try:
            if importlib.util.find_spec(p) is None:
                out.append(p)
        except (ImportError, ValueError):
            out.append(p)
    return out


def image_diff(reference: np.ndarray, images: np.ndarray) -> float:
    """Max absolute difference of two float image batches in [0, 1] (same shape)."""
    ref, got = np.asarray(reference, np.float64), np.asarray(images, np.float64)
    if ref.shape != got.shape:
        raise PathFailed(f"images of shape {got.shape} where the reference has {ref.shape}")
    if not np.isfinite(got).all():
        raise PathFailed("images contain NaN or inf")
    return float(np.abs(ref - got).max())


def compare(name: str, reference: np.ndarray, images: np.ndarray, bound: float) -> float:
    """``image_diff``, raising ``PathFailed`` above ``bound``."""
    d = image_diff(reference, images)
    if d > bound:
        raise PathFailed(f"{name}: max image difference {d:.4f} vs the fp32 reference is over "
                         f"the bound {bound}")
    return d


def timed_generate(sampler, prompts: list[str], seeds: list[int], sync: Callable[[], None]
                   ) -> tuple[np.ndarray, float]:
    """(float images, images/s) of one ``sampler.generate`` after one warm-up call."""
    sampler.generate(prompts[:1], seeds[:1], output="float")
    sync()
    t = time.perf_counter()
    images = sampler.generate(prompts, seeds, output="float")
    sync()
    return images, len(prompts) / (time.perf_counter() - t)


def run_path(name: str, fn: Callable[[], dict], *, packages: tuple[str, ...] = (),
             gpu_reason: str | None = None, extra_reason: str | None = None) -> PathResult:
    """Run one path: "skipped" with ``gpu_reason`` (no GPU) or ``extra_reason``, "not
    installed" when one of ``packages`` is missing, else ``fn()`` -> "ran" with its numbers,
    or "failed" with the error. Never raises."""
    if gpu_reason:
        return PathResult(name, SKIPPED, detail=gpu_reason)
    missing = missing_packages(packages)
    if missing:
        return PathResult(name, NOT_INSTALLED, detail=f"missing: {', '.join(missing)}")
    if extra_reason:
        return PathResult(name, SKIPPED, detail=extra_reason)
    t = time.perf_counter()
    try:
        out = fn() or {}
    except Exception as e:  # one path's failure must not stop the others
        log.debug("%s failed:\n%s", name, traceback.format_exc())
        first = (str(e).strip().splitlines() or [""])[0][:300]
        return PathResult(name, FAILED, detail=f"{type(e).__name__}: {first}")
    res = PathResult(name, RAN, **{k: v for k, v in out.items() if k in
                                   ("max_diff", "bound", "images_per_s", "detail", "extra")})
    res.extra.setdefault("seconds", round(time.perf_counter() - t, 1))
    return res


def add_speed_ratios(results: list[PathResult], baseline: str = "torch fp16 eager (SDPA)"
                     ) -> None:
    base = next((r.images_per_s for r in results if r.path == baseline and r.images_per_s), None)
    for r in results:
        if base and r.images_per_s:
            r.vs_torch_fp16 = r.images_per_s / base


def render_table(results: list[PathResult]) -> str:
    def num(v, fmt):
        return "" if v is None else format(v, fmt)
    rows = ["| path | status | max diff (bound) | images/s | vs torch fp16 | detail |",
            "|---|---|---|---|---|---|"]
    for r in results:
        diff = "" if r.max_diff is None else f"{r.max_diff:.4f} (< {r.bound})"
        rows.append(f"| {r.path} | {r.status} | {diff} | {num(r.images_per_s, '.2f')} | "
                    f"{num(r.vs_torch_fp16, '.2f')} | {r.detail} |")
    return "\n".join(rows)


def write_results(out_dir: Path, results: list[PathResult], meta: dict) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "gpu_acceptance.json"
    path.write_text(json.dumps({"meta": meta, "results": [asdict(r) for r in results]},
                               indent=1) + "\n")
    (out_dir / "gpu_acceptance.md").write_text(render_table(results) + "\n")
    return path


def exit_status(results: list[PathResult]) -> int:
    return 1 if any(r.status == FAILED for r in results) else 0


# ----------------------------------------------------------------------------- the paths

class Acceptance:
    """State shared by the paths: the model, its exports, the fp32 reference images."""

    def __init__(self, work: Path, preset: str, size: int, steps: int, batch: int,
                 simplify: bool = True, inpaint: bool = True):
        self.work, self.preset, self.size, self.steps, self.batch = work, preset, size, steps, batch
        self.simplify, self.inpaint = simplify, inpaint
        self.prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
        self.seeds = list(range(batch))
        self._cache: dict[str, Any] = {}
        import torch
        self.sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)

    # -- shared inputs, built on first use ------------------------------------------------
    def once(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    @property
    def model(self) -> Path:
        from medfake.engine.diffusion.sd_model import init_model
        return self.once("model", lambda: init_model(self.preset, self.work / self.preset))

    def sampler_config(self, size: int | None = None, fast: bool = False):
        """The sampler settings of every path; ``fast``: also the ``FAST`` sampler options."""
        from medfake.engine.diffusion.sampler import SamplerConfig
        s = size or self.size
        return SamplerConfig("dpm++", self.steps, 4.0, "", s, s, **(FAST if fast else {}))

    def reference(self, size: int | None = None, n: int | None = None,
                  fast: bool = False) -> np.ndarray:
        """torch fp32 images of the first ``n`` prompts at ``size`` (TF32 off), with the
        ``FAST`` sampler options when ``fast``."""
        size, n = size or self.size, n or self.batch

        def make():
            import torch
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
            s = self.torch_sampler(torch.float32, "sdpa", size, fused=False, fast=fast)
            return s.generate(self.prompts[:n], self.seeds[:n], output="float")
        return self.once(f"ref-{size}-{n}{'-fast' if fast else ''}", make)

    def inpaint_inputs(self, n: int = 2) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (n, self.size, self.size, 3), dtype=np.uint8)
        masks = np.zeros((n, self.size, self.size), np.float32)
        masks[:, self.size // 4: 3 * self.size // 4, self.size // 4: 3 * self.size // 4] = 1
        return images, masks

    def inpaint_reference(self, n: int = 2) -> np.ndarray:
        def make():
            images, masks = self.inpaint_inputs(n)
            s = self.torch_sampler(__import__("torch").float32, "sdpa", fused=False)
            return s.generate_conditioned(self.prompts[:n], self.seeds[:n], images, masks,
                                          output="float")
        return self.once(f"inpaint-ref-{n}", make)

    def torch_sampler(self, dtype, attention: str, size: int | None = None, fused: bool = True,
                      fast: bool = False):
        from medfake.engine.diffusion.backends import default_device
        from medfake.engine.diffusion.backends.torch_backend import TorchBackend
        from medfake.engine.diffusion.sampler import Sampler
        from medfake.engine.diffusion.sd_model import load_components
        comps = load_components(self.model, device=default_device(), dtype=dtype)
        b = TorchBackend(comps, attention=attention, fused_kernels=fused)
        return Sampler(b, comps.tokenizer, dict(comps.scheduler.config),
                       self.sampler_config(size, fast))

    def onnx_export(self, deep: bool = False) -> Path:
        """The ONNX export every ONNX/TensorRT path runs; ``deep``: with the step-feature
        caching graphs (the shallow pass) too, for the ``FAST`` rows."""
        def make():
            from medfake.export.config import OnnxExportConfig
            from medfake.export.onnx_export import export_onnx
            out = self.work / ("onnx-deepcache" if deep else "onnx")
            comps = ("text_encoder", "unet", "vae_decoder") + (("vae_encoder",)
                                                               if self.inpaint else ())
            export_onnx(str(self.model), str(out), OnnxExportConfig(
                validate_batches=(1,), simplify=self.simplify, components=comps,
                deep_cache=deep))
            return out
        return self.once(f"onnx-{deep}", make)

    def engines(self, fp16: bool, deep: bool = False) -> Path:
        def make():
            from medfake.export.config import TensorRTBuildConfig
            from medfake.export.tensorrt_build import build_engines
            other = (self.size * 3 // 4) // 8 * 8
            cfg = TensorRTBuildConfig(min_batch=1, opt_batch=self.batch, max_batch=self.batch,
                                      min_size=other, opt_size=self.size, max_size=self.size,
                                      fp16=fp16)
            out = self.work / f"trt-{'fp16' if fp16 else 'fp32'}{'-deepcache' if deep else ''}"
            return build_engines(str(self.onnx_export(deep)), str(out), cfg)
        return self.once(f"trt-{fp16}-{deep}", make)

    # -- one sampler path: txt2img (timed) + inpainting --------------------------------------
    def sampler_path(self, make_sampler: Callable[[int | None], Any], precision: str,
                     other_size: bool = False, fast: bool = False) -> dict:
        """Time txt2img on ``make_sampler(None)`` and compare it, and inpainting (unless
        ``inpaint`` is off) (and with
        ``other_size`` a 3/4 size at batch 3 from ``make_sampler(size)``), with the torch fp32
        reference; ``PathFailed`` over ``BOUNDS[precision]``. Runs on any device. ``fast``:
        the sampler runs the ``FAST`` options and is compared with the reference made with
        them (txt2img only)."""
        bound = BOUNDS[precision]
        sampler = make_sampler(None)
        images, ips = timed_generate(sampler, self.prompts, self.seeds, self.sync)
        d = compare("txt2img", self.reference(fast=fast), images, bound)
        extra: dict[str, Any] = {"sampler_options": FAST} if fast else {}
        if self.inpaint and not fast:
            im, masks = self.inpaint_inputs()
            inp = sampler.generate_conditioned(self.prompts[:2], self.seeds[:2], im, masks,
                                               output="float")
            extra["inpaint_max_diff"] = compare("inpaint", self.inpaint_reference(), inp, bound)
        if other_size:   # a size and batch the export was not validated at
            s = (self.size * 3 // 4) // 8 * 8
            got = make_sampler(s).generate(self.prompts[:3], self.seeds[:3], output="float")
            extra["other_size"] = f"{s}px batch 3"
            extra["other_size_max_diff"] = compare(f"{s}px batch 3", self.reference(s, 3), got,
                                                   bound)
        return {"max_diff": max([d, *(v for k, v in extra.items() if k.endswith("max_diff"))]),
                "bound": bound, "images_per_s": ips, "extra": extra}

    def torch_path(self, dtype_name: str, attention: str, fast: bool = False) -> dict:
        import torch
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[dtype_name]
        return self.sampler_path(lambda s: self.torch_sampler(dtype, attention, s, fast=fast),
                                 dtype_name, fast=fast)

    def ort_path(self, provider: str, fast: bool = False) -> dict:
        from medfake.engine.diffusion.backends import load_model
        from medfake.engine.diffusion.backends.components import JobShape

        def make(size):
            s = size or self.size
            m = load_model(str(self.onnx_export(fast)), "onnx", provider=provider,
                           job=JobShape(self.batch, s, s))
            want = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
            if want[provider] not in m.details["providers"]:
                raise PathFailed(f"session runs on {m.details['providers']}")
            return m.sampler(self.sampler_config(s, fast))
        return self.sampler_path(make, "tf32", fast=fast)

    def trt_path(self, fp16: bool, fast: bool = False) -> dict:
        from medfake.engine.diffusion.backends import load_model
        engines = self.engines(fp16, deep=fast)
        return self.sampler_path(
            lambda s: load_model(str(engines), "tensorrt").sampler(self.sampler_config(s, fast)),
            "fp16" if fp16 else "tf32", other_size=not fast, fast=fast)

    def triton_path(self) -> dict:
        import torch
        from torch import nn

        from medfake.kernels.groupnorm_silu import group_norm_silu, group_norm_silu_reference
        x = torch.randn(self.batch * 2, 320, self.size // 8, self.size // 8, device="cuda",
                        dtype=torch.float16)
        norm32 = nn.GroupNorm(32, 320).cuda()
        norm = copy.deepcopy(norm32).half()
        with torch.no_grad():
            ref = group_norm_silu_reference(x.float(), norm32)
            got = group_norm_silu(x, norm, backend="triton")
            d = float((got.float() - ref).abs().max())

            def clock(fn, n=20):
                fn()
                torch.cuda.synchronize()
                t = time.perf_counter()
                for _ in range(n):
                    fn()
                torch.cuda.synchronize()
                return (time.perf_counter() - t) / n
            fused = clock(lambda: group_norm_silu(x, norm, backend="triton"))
            eager = clock(lambda: group_norm_silu_reference(x, norm))
        bound = 1e-2
        if d > bound:
            raise PathFailed(f"fused kernel differs from the reference by {d:.4g} > {bound}")
        return {"max_diff": d, "bound": bound,
                "detail": f"fused {fused * 1e3:.3f} ms vs eager {eager * 1e3:.3f} ms "
                          f"({eager / fused:.2f}x)"}

    # -- training and multi-process paths (through the CLI, as a user runs them) -------------
    def world(self) -> tuple[Path, Path]:
        def make():
            from medfake.engine.data.phantoms import PhantomConfig, make_phantom_world
            return make_phantom_world(self.work / "world", PhantomConfig(
                n_public_per_class=64, n_train_per_class=8, n_val_per_class=2,
                n_test_per_class=2, samples_per_shard=64))
        return self.once("world", make)

    def cli(self, args: list[str], env: dict | None = None, timeout: float = 900,
            launcher: list[str] | None = None) -> subprocess.CompletedProcess:
        cmd = (launcher or [sys.executable, "-m"]) + ["medfake.pipelines.cli", *args]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, **(env or {})})
        if p.returncode != 0:
            tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
            raise PathFailed(f"`{' '.join(args[:2])}` exited {p.returncode}: {' | '.join(tail)}")
        return p

    def dreambooth_path(self, precision: str) -> dict:
        _, hospital = self.world()
        out = self.work / f"dreambooth-{precision}"
        args = dreambooth_args(self.model, hospital, out, precision,
                               eight_bit=not missing_packages(("bitsandbytes",)))
        t = time.perf_counter()
        self.cli(args)
        if not (out / "lora" / "pytorch_lora_weights.safetensors").is_file():
            raise PathFailed(f"no LoRA adapter under {out / 'lora'}")
        return {"detail": f"20 steps in {time.perf_counter() - t:.1f} s"
                          + (", 8-bit Adam" if "--use-8bit-adam" in args else "")}

    def clip_path(self, ranks: int) -> dict:
        public, _ = self.world()
        out = self.work / f"clip-zero2-{ranks}"
        args = clip_args(public, out)
        launcher = None
        if ranks > 1:
            launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                        f"--nproc_per_node={ranks}", "-m"]
        t = time.perf_counter()
        self.cli(args, launcher=launcher)   # NCCL: the process group's backend on CUDA
        if not (out / "model.safetensors").is_file():
            raise PathFailed(f"no model.safetensors in {out}")
        return {"detail": f"20 steps on {ranks} rank(s) in {time.perf_counter() - t:.1f} s"}

    def synth_ranks_path(self) -> dict:
        _, hospital = self.world()
        out = self.work / "synth-2ranks"
        procs = []
        for r in range(2):
            env = {"RANK": str(r), "WORLD_SIZE": "2", "LOCAL_RANK": str(r),
                   "LOCAL_WORLD_SIZE": "2"}
            doctor = self.cli(["doctor"], env=env).stdout
            want = f"local rank {r} (this process)"
            line = next((x for x in doctor.splitlines() if x.startswith(want)), "")
            if f"cuda:{r}" not in line:
                raise PathFailed(f"rank {r} would not use cuda:{r}: {line!r}")
            cmd = [sys.executable, "-m", "medfake.pipelines.cli",
                   *synth_args(self.model, hospital, out, self.steps)]
            procs.append(subprocess.Popen(cmd, env={**os.environ, **env},
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True))
        for r, p in enumerate(procs):
            _, err = p.communicate(timeout=900)
            if p.returncode != 0:
                raise PathFailed(f"synth rank {r} exited {p.returncode}: {err.strip()[-300:]}")
        if not (out / "dataset.json").is_file():
            raise PathFailed(f"{out} has no dataset.json after both ranks finished")
        return {"detail": "2 ranks on cuda:0 and cuda:1, dataset complete"}


def dreambooth_args(model: Path, real: Path, out: Path, precision: str, eight_bit: bool
                    ) -> list[str]:
    return ["finetune", "dreambooth", "--base", str(model), "--real", str(real), "--out",
            str(out), "--steps", "20", "--lora-rank", "4", "--batch-size", "1", "--no-prior",
            "--k", "2", "--mixed-precision", precision, "--device", "cuda",
            "--checkpoint-every", "1000", *(["--use-8bit-adam"] if eight_bit else [])]


def clip_args(data: Path, out: Path) -> list[str]:
    return ["train", "clip", "--stage", "pretrain", "--data", str(data), "--out", str(out),
            "--profile", "test", "--steps", "20", "--deepspeed", "--zero", "2",
            "--precision", "bf16", "--no-tensorboard", "--workers", "0"]


def synth_args(model: Path, real: Path, out: Path, steps: int) -> list[str]:
    return ["synth", "--model", str(model), "--real", str(real), "--out", str(out),
            "--per-class", "4", "--samples-per-shard", "2", "--steps", str(steps),
            "--backend", "torch", "--batch-size", "2", "--size", "256"]


def plan(acc: Acceptance) -> list[tuple[str, Callable[[], dict], tuple[str, ...], str | None]]:
    """(path, run, packages it needs, reason to skip beyond "no GPU") in table order."""
    import torch
    two = None if torch.cuda.device_count() >= 2 else "needs 2 GPUs"
    bf16 = None if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else \
        "this GPU has no bf16"
    from medfake.engine.core import capabilities as cap
    cuda_ep = None if "CUDAExecutionProvider" in cap.ort_providers() else \
        "onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"
    trt_ep = None if "TensorrtExecutionProvider" in cap.ort_providers() else \
        "onnxruntime has no TensorrtExecutionProvider (install onnxruntime-gpu)"
    export = ("onnx", "onnxruntime") + (("onnxslim",) if acc.simplify else ())  # + validation
    clip = ("deepspeed", "open_clip", "webdataset")
    return [
        ("torch fp16 eager (SDPA)", lambda: acc.torch_path("fp16", "sdpa"), (), None),
        ("torch bf16 eager (SDPA)", lambda: acc.torch_path("bf16", "sdpa"), (), bf16),
        ("torch fp16 + xformers", lambda: acc.torch_path("fp16", "xformers"), ("xformers",), None),
        ("ORT CUDA EP, I/O binding", lambda: acc.ort_path("cuda"), export, cuda_ep),
        ("ORT TensorRT EP", lambda: acc.ort_path("tensorrt"), (*export, "tensorrt"), trt_ep),
        ("TensorRT fp16, dynamic profile", lambda: acc.trt_path(True), (*export, "tensorrt"),
         None),
        ("TensorRT fp32 (TF32), dynamic profile", lambda: acc.trt_path(False),
         (*export, "tensorrt"), None),
        ("torch fp16, CFG cutoff 0.5 + DeepCache k=3",
         lambda: acc.torch_path("fp16", "sdpa", fast=True), (), None),
        ("ORT CUDA EP, CFG cutoff 0.5 + DeepCache k=3", lambda: acc.ort_path("cuda", fast=True),
         export, cuda_ep),
        ("TensorRT fp16, CFG cutoff 0.5 + DeepCache k=3", lambda: acc.trt_path(True, fast=True),
         (*export, "tensorrt"), None),
        ("Triton GroupNorm+SiLU", acc.triton_path, ("triton",), None),
        ("DreamBooth LoRA 20 steps fp16", lambda: acc.dreambooth_path("fp16"), ("peft",), None),
        ("DreamBooth LoRA 20 steps bf16", lambda: acc.dreambooth_path("bf16"), ("peft",), bf16),
        ("CLIP ZeRO-2 NCCL, 1 rank", lambda: acc.clip_path(1), clip, None),
        ("CLIP ZeRO-2 NCCL, 2 ranks", lambda: acc.clip_path(2), clip, two),
        ("synthesis, 2 ranks on 2 GPUs", acc.synth_ranks_path, ("webdataset",), two),
    ]


def run_all(acc: Acceptance, gpu_reason: str | None) -> list[PathResult]:
    results = []
    for name, fn, packages, extra in plan(acc):
        log.info("path: %s", name)
        r = run_path(name, fn, packages=packages, gpu_reason=gpu_reason, extra_reason=extra)
        log.info("  -> %s %s", r.status, r.detail)
        results.append(r)
    add_speed_ratios(results)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", help="directory for gpu_acceptance.json/.md and the work files")
    ap.add_argument("--preset", default="sd15", help="diffusion preset (default: sd15)")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = Path(a.out_dir)
    import torch
    gpu_reason = None if torch.cuda.is_available() else \
        "no CUDA GPU visible to torch (CPU machine): this path needs one"
    os.environ.setdefault("MEDFAKE_CACHE", str(out / "cache"))
    acc = Acceptance(out / "work", a.preset, a.size, a.steps, a.batch)
    t = time.perf_counter()
    results = run_all(acc, gpu_reason)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "gpu": ", ".join(torch.cuda.get_device_name(i)
                             for i in range(torch.cuda.device_count())) or "none",
            "torch": torch.__version__, "preset": a.preset, "size": a.size,
            "steps": a.steps, "batch": a.batch, "seconds": round(time.perf_counter() - t, 1),
            "bounds": BOUNDS}
    path = write_results(out, results, meta)
    print(render_table(results))
    print(f"\n{meta['gpu']}; {meta['seconds']} s; written to {path}")
    return exit_status(results)


if __name__ == "__main__":
    sys.exit(main())
