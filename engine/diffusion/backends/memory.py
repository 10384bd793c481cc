"""Peak memory of sampling on a backend, before loading it: measured where it was, else estimated.

``estimate_peak_bytes(backend, model_dir, job, streams)`` is what an automatic backend choice
calls to refuse a configuration that would not fit in the memory available. It returns, in
order of preference:

1. a peak measured on this machine for the same model, backend, job shape and streams
   (``record_peak``, cached with ``engine.core.measured``, kind ``peak_rss``);
2. an estimate from the model's files (no network is loaded):

       base + weights x WEIGHT_FACTOR[backend] + streams x max(UNet call, VAE decode)

   - ``weights``: bytes of the text encoder, UNet and VAE weights (an export's manifest, or a
     diffusers dir's weight files);
   - a UNet call at the job's UNet batch ``B`` (doubled under CFG) on ``h x w`` latents keeps
     the skip activations of every down level, ``sum_l (layers + 1) x C_l x h w / 4^l``, and a
     working set of ``WORKING`` tensors of the top level, ``C_0 x h x w``, in float32; on ONNX
     Runtime the attention at the top attention level also materialises its scores and their
     softmax for the heads computed together, ``2 x heads x (h w)^2`` per image, where heads
     is the export's ``attention_heads_per_chunk`` (1 by default; 0 = all the layer's heads;
     PyTorch's SDPA on a CPU computes attention in blocks and does not);
   - a VAE decode keeps ``VAE_WORKING`` tensors of its top level (``C x H x W`` at the image
     size) and its mid-block attention scores at the latent size;
   - ``streams`` concurrent calls each hold their own activations (the weights are shared).

The constants are stated below with what they were fitted to; the estimate is meant to be of
the right size (within ~25% at SD 1.5 size), and a measurement replaces it once a job ran.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from .components import JobShape

log = logging.getLogger(__name__)

KIND = "peak_rss"
BASE_BYTES = 850 * 2 ** 20       # interpreter, torch, onnxruntime, tokenizer (tiny job: 0.86 GB)
# resident weights per byte of fp32 weight files (ORT: initializers plus pre-packed copies of
# the GEMM/conv weights it re-lays out; fitted to bench/synth_memory.py --realsize. OpenVINO:
# the ONNX graphs read, converted and compiled for the CPU plugin; its SD 1.5 job peaked at
# 14979 MB, 2026-12-02, bench/cpu_precision.py --size sd15 --per-class 1 --steps 2)
WEIGHT_FACTOR = {"torch": 1.0, "onnx": 1.15, "openvino": 3.1, "tensorrt": 0.3}
WORKING = 6                      # top-level activations live at once in a UNet block
VAE_WORKING = 4                  # in a VAE up block at full resolution
FP32 = 4


def _unet_config(model_dir: Path) -> dict:
    for d in (model_dir, _source_of(model_dir)):
        if d is not None and (d / "unet" / "config.json").is_file():
            return json.loads((d / "unet" / "config.json").read_text())
    return {}


def _vae_config(model_dir: Path) -> dict:
    for d in (model_dir, _source_of(model_dir)):
        if d is not None and (d / "vae" / "config.json").is_file():
            return json.loads((d / "vae" / "config.json").read_text())
    return {}


def _source_of(model_dir: Path) -> Path | None:
    from .manifest import MANIFEST_NAME, ExportManifest
    if (model_dir / MANIFEST_NAME).is_file():
        src = Path(ExportManifest.load(model_dir).source_model)
        return src if src.is_dir() else None
    return None


def weight_bytes(model_dir: str | Path) -> int:
    """Bytes of the text encoder, UNet and VAE weights of a diffusers dir or an export (its
    manifest; the VAE counted once although encoder and decoder are two graphs)."""
    from .manifest import MANIFEST_NAME, ExportManifest
    d = Path(model_dir)
    if (d / MANIFEST_NAME).is_file():
        comps = ExportManifest.load(d).components
        vae = max((comps[n].get("bytes", 0) for n in ("vae_decoder", "vae_encoder")
                   if n in comps), default=0)
        return sum(comps[n].get("bytes", 0) for n in ("text_encoder", "unet") if n in comps) + vae
    total = 0
    for sub in ("text_encoder", "unet", "vae"):
        files = [p for p in (d / sub).glob("*") if p.suffix in (".safetensors", ".bin")
                 and ".fp16." not in p.name]
        total += sum(p.stat().st_size for p in files)
    return total


def _unet_activation_bytes(cfg: dict, batch: int, h: int, w: int,
                           heads_at_once: int | None) -> int:
    """``heads_at_once``: None where attention is computed in blocks (torch); 0 = all heads."""
    chans = list(cfg.get("block_out_channels", (320, 640, 1280, 1280)))
    layers = int(cfg.get("layers_per_block", 2))
    skip = sum((layers + 1) * c * h * w // 4 ** lvl for lvl, c in enumerate(chans))
    total = skip + WORKING * chans[0] * h * w
    if heads_at_once is not None:
        kinds = cfg.get("down_block_types", ["CrossAttnDownBlock2D"] * len(chans))
        heads = cfg.get("attention_head_dim", 8)
        heads = heads if isinstance(heads, list) else [heads] * len(chans)
        top = next((lvl for lvl, k in enumerate(kinds) if "Attn" in k), None)
        if top is not None:
            tokens = h * w // 4 ** top
            n = int(heads[min(top, len(heads) - 1)])
            total += 2 * (min(n, heads_at_once) if heads_at_once else n) * tokens * tokens
    return FP32 * batch * total


def _vae_decode_bytes(cfg: dict, batch: int, height: int, width: int, h: int, w: int) -> int:
    top = int(next(iter(cfg.get("block_out_channels", (128, 256, 512, 512)))))
    return FP32 * batch * (VAE_WORKING * top * height * width + 2 * (h * w) ** 2)


def estimate_peak_bytes(backend: str, model_dir: str, job: JobShape, streams: int = 1,
                        model_hash: str | None = None) -> int:
    """Peak resident bytes of a process sampling ``job`` on ``backend`` ("torch", "onnx",
    "openvino", "tensorrt") from ``model_dir`` (diffusers dir or export) with ``streams``
    concurrent streams: the recorded measurement for this model hash when there is one, else
    the estimate of the module doc. ``model_hash``: the model's hash if the caller has it (the
    measurement cache is keyed by it); None skips the cache."""
    if model_hash is not None:
        got = load_peak(backend, model_hash, job, streams)
        if got is not None:
            return got
    d = Path(model_dir)
    f = 8   # the VAE factor of every SD model
    from .components import EXPORT_ATTENTION_HEADS_PER_CHUNK
    from .manifest import MANIFEST_NAME, ExportManifest
    heads_at_once = EXPORT_ATTENTION_HEADS_PER_CHUNK   # a diffusers dir: the export to come
    if (d / MANIFEST_NAME).is_file():
        m = ExportManifest.load(d)
        f = m.geometry.vae_scale_factor
        heads_at_once = int(m.settings.get("attention_heads_per_chunk", 0))  # older: all
    elif _vae_config(d).get("block_out_channels"):
        f = 2 ** (len(_vae_config(d)["block_out_channels"]) - 1)
    h, w = job.height // f, job.width // f
    unet = _unet_activation_bytes(_unet_config(d), job.component_batch("unet"), h, w,
                                  heads_at_once=None if backend == "torch" else heads_at_once)
    vae = _vae_decode_bytes(_vae_config(d), job.batch, job.height, job.width, h, w)
    weights = weight_bytes(d) * WEIGHT_FACTOR.get(backend, 1.0)
    return int(BASE_BYTES + weights + streams * max(unet, vae))


def _key(backend: str, job: JobShape, streams: int) -> dict:
    return {"backend": backend, "height": job.height, "width": job.width, "batch": job.batch,
            "guidance": job.guidance, "streams": streams}


def record_peak(backend: str, model_hash: str, job: JobShape, streams: int,
                peak_bytes: int) -> None:
    """Remember a measured peak for ``estimate_peak_bytes`` (the larger of the old and new)."""
    from ...core.measured import save_measured
    old = load_peak(backend, model_hash, job, streams) or 0
    save_measured(KIND, model_hash, _key(backend, job, streams),
                  {"peak_bytes": max(int(peak_bytes), old)})


def load_peak(backend: str, model_hash: str, job: JobShape, streams: int) -> int | None:
    from ...core.measured import load_measured
    got = load_measured(KIND, model_hash, _key(backend, job, streams))
    return int(got["peak_bytes"]) if got and "peak_bytes" in got else None


def reset_peak() -> bool:
    """Restart this process's peak-RSS count (Linux: ``/proc/self/clear_refs``); False where
    it cannot be (then ``peak_since_reset`` would include earlier work: do not record it)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def proc_kib_field(path: str, key: str) -> int | None:
    """The ``key:`` line of a /proc file (``/proc/meminfo``, ``/proc/self/status``) in bytes
    (its value is in kB), None where there is none."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_since_reset() -> int | None:
    """This process's peak resident bytes since ``reset_peak`` (``VmHWM``), None off Linux."""
    return proc_kib_field("/proc/self/status", "VmHWM")
