"""Stable Diffusion: model dirs and presets, single-file conversion, the one denoising loop
(sampler), concurrent streams, inpainting masks, and the inference backends with their
export manifest (backends/).

Public names are exported lazily (``engine.core.lazy``).
"""
from __future__ import annotations

from ..core.lazy import lazy_exports

_EXPORTS = {
    "COMPONENTS": "sd_model",
    "DiffusionBackend": "sampler",
    "MASK_KINDS": "inpainting",
    "MASK_SHAPES": "inpainting",
    "MAX_AUTO_STREAMS": "streams",
    "MaskSpec": "inpainting",
    "ModelDirError": "sd_model",
    "OutpaintSpec": "inpainting",
    "PLACEMENTS": "inpainting",
    "PRESET_DIR": "sd_model",
    "R": "streams",
    "SAFE_SUFFIXES": "single_file",
    "SCHEDULERS": "sampler",
    "SDComponents": "sd_model",
    "Sampler": "sampler",
    "SamplerConfig": "sampler",
    "SamplerStreams": "streams",
    "SingleFileError": "single_file",
    "T": "streams",
    "TRUST_PICKLE_ENV": "sd_model",
    "UNET_PREFIX": "single_file",
    "add_slow_tokenizer_files": "sd_model",
    "build_clip_tokenizer": "sd_model",
    "build_components": "sd_model",
    "cached_model": "sd_model",
    "check_model_dir": "sd_model",
    "config_dir_from_yaml": "single_file",
    "convert_single_file": "single_file",
    "init_model": "sd_model",
    "lesion_centre": "inpainting",
    "list_presets": "sd_model",
    "load_components": "sd_model",
    "make_scheduler": "sampler",
    "mask_geometry": "inpainting",
    "model_hash": "sd_model",
    "outpaint_canvas": "inpainting",
    "preset_config": "sd_model",
    "read_checkpoint": "single_file",
    "render_mask": "inpainting",
    "resize_image": "inpainting",
    "resolve_streams": "streams",
    "save_components": "sd_model",
    "threads_per_stream": "streams",
    "uses_cfg": "sampler",
    "write_clip_tokenizer_files": "sd_model",
}
__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
