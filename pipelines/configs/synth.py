"""``SynthConfig``: ``medfake synth`` (``pipelines/synth.py``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ...engine.core.config import JobConfig, option

MODES = ("txt2img", "inpaint", "outpaint", "inpaint-outpaint")
BACKEND_CHOICES = ("auto", "torch", "onnx", "tensorrt", "openvino")  # engine.diffusion.backends (torch)


@dataclass
class SynthConfig(JobConfig):
    """A synthesis job. ``real_dataset`` supplies class names, prompt templates and (for the
    conditioned modes, ``per_real`` and the memorization guard) the real training images.
    Give ``per_class`` or ``per_real`` (neither: ``per_real=10``). Fields after
    ``batch_size`` do not change images and may differ between runs and ranks."""

    PROFILES: ClassVar[dict[str, dict[str, Any]]] = {"default": {}}

    model_dir: str = option(help="diffusers model dir (or an ONNX/TensorRT export dir)",
                            flag="--model")
    real_dataset: str = option(help="real dataset: class names, prompt templates, train images",
                               flag="--real")
    out_dir: str = option(help="output dataset dir", flag="--out")
    mode: str = option("txt2img", "what the diffusion model generates", choices=MODES)
    per_class: int | None = option(None, "N synthetic images per class")
    per_real: int | None = option(None, "K synthetic images per real train image (default 10 "
                                  "unless --per-class)")
    seed: int = option(0, "job seed (a sample's seed derives from it and its key)")
    scheduler: str = option("dpm++", "ddim, ddpm, dpm++, euler, euler-a, pndm, unipc")
    steps: int = option(20, "denoising steps")
    guidance_scale: float = option(4.0, "classifier-free guidance scale", flag="--guidance")
    negative_prompt: str = option("", "negative prompt (default: none)")
    cfg_cutoff: float = option(1.0, "CFG truncation: the fraction of the steps that run "
                               "classifier-free guidance; later steps run the conditional branch "
                               "alone at half the UNet batch (1 = guidance on every step)")
    deep_cache_interval: int = option(1, "step-feature caching (DeepCache): every K-th step runs "
                                      "the full UNet, the steps between reuse its deep features "
                                      "and run only the shallow path (1 = off; onnx/openvino/"
                                      "tensorrt need an export with --deep-cache)", metavar="K")
    deep_cache_branch: int = option(1, "step-feature caching: UNet levels run on a cached step "
                                    "(1 = the outermost only; exports hold branch 1)")
    image_size: int = option(0, "image size (default: the real dataset's)", flag="--size")
    image_format: str = option("png", "sample encoding", flag="--format",
                               choices=("png", "webp", "jpg"))
    quality: int | None = option(None, "jpg quality (default 95); webp: lossy below 100")
    samples_per_shard: int = option(256, "samples per output shard")
    backend: str = option("auto", "auto (default): the fastest this machine runs (`medfake "
                          "doctor`); torch: PyTorch eager; onnx: ONNX Runtime (exports and caches "
                          "the model on first use, or give an export dir as --model); tensorrt: "
                          "GPU engines; openvino: OpenVINO on the ONNX export (CPU)",
                          choices=BACKEND_CHOICES)
    precision: str = option("auto", "fp32, bf16 (on a CPU only with native bf16) or auto: "
                            "openvino bf16 where native, else fp32; torch fp32; --backend auto "
                            "measures which passes the quality gate fastest",
                            choices=("auto", "fp32", "bf16"))
    mask: str = option("lesion", "inpainting masks centred on the lesion, or anywhere",
                       choices=("lesion", "random"))
    mask_shape: str = option("any", "inpainting mask shape", choices=("box", "ellipse", "any"))
    mask_scale: tuple[float, float] = option(
        (0.3, 0.6), "mask side as a fraction of the image side", metavar=("MIN", "MAX"))
    outpaint_scale: tuple[float, float] = option(
        (0.5, 0.75), "real image side as a fraction of the canvas", metavar=("MIN", "MAX"))
    outpaint_placement: str = option("random", "where the real image sits on the canvas",
                                     choices=("random", "center"))
    paste_back: bool = option(True, "keep the decoded pixels outside the mask instead of the "
                              "real ones")
    clip_filter: str | None = option(
        None, "drop samples this CLIP model (a `train clip --stage pretrain` dir) does not "
        "assign to the prompted class", metavar="WEIGHTS")
    clip_model: str | None = option(None, "open_clip model name (default: from WEIGHTS' config)")
    clip_threshold: float = option(0.0, "also drop when p(prompted class) is below this")
    memorization: str | None = option(
        None, "drop samples closer than --memorization-threshold to a real train image",
        choices=("pixel", "clip"))
    memorization_threshold: float = option(0.05, "memorization guard distance")
    batch_size: int | None = option(
        None, "images per backend call (default: measured with --streams/--threads for ONNX "
        "Runtime on a CPU, see --calibration-budget; else 16)")
    extend: bool = option(False, "add samples to an existing job (same parameters) as new shards")
    rank: int | None = option(None, "this process's rank (default: torchrun RANK, srun "
                              "SLURM_PROCID or SLURM_ARRAY_TASK_ID)")
    world_size: int | None = option(None, "number of ranks (default: from the launcher)")
    workers: int = option(2, "background encoder threads")
    max_pending: int = option(4, "batches waiting for the writer before the backend waits")
    threads: int | None = option(None, "backend threads in all (default: torch's)")
    streams: int | None = option(None, "concurrent denoising streams sharing the threads "
                                 "(default: measured for ONNX Runtime on a CPU, never more than "
                                 "the job's batches; else 1)")
    calibration_budget: float = option(
        120.0, "ONNX Runtime on a CPU with automatic --streams or --batch-size: at most this "
        "many seconds (and a tenth of the job's predicted time) measuring streams x threads x "
        "batch, once per model, size and machine (cached); 0: no measurement, one stream per "
        "thread and batch 16")

    def mode_config(self):
        from ...engine.diffusion.inpainting import MaskSpec, OutpaintSpec
        from ...engine.synth.modes import ModeConfig
        return ModeConfig(self.mode, MaskSpec(self.mask, self.mask_shape, tuple(self.mask_scale)),
                          OutpaintSpec(tuple(self.outpaint_scale), self.outpaint_placement),
                          self.paste_back)

    def curation(self):
        from ...engine.synth.curation import CurationConfig
        return CurationConfig(self.clip_filter, self.clip_model, self.clip_threshold,
                              self.memorization, self.memorization_threshold)
