"""CLIP: open_clip models and presets, the streaming WebDataset input, the training engine
(single process or DeepSpeed ZeRO) and its loop.

Public names are exported lazily (``engine.core.lazy``).
"""
from __future__ import annotations

from ..core.lazy import lazy_exports

_EXPORTS = {
    "AUGMENTS": "data",
    "ArrayBatches": "data",
    "CachedTokenizer": "data",
    "CheckpointDir": "engine",
    "ClipStream": "data",
    "DEFAULT_MODEL": "model",
    "DS_PRESET_DIR": "engine",
    "DeepSpeedEngine": "engine",
    "EngineConfig": "engine",
    "LOGIT_SCALE_MAX": "engine",
    "PRECISIONS": "engine",
    "PRESET_DIR": "model",
    "Source": "data",
    "StreamConfig": "data",
    "StreamPosition": "data",
    "TORCH_STATE": "engine",
    "TRUST_PICKLE_ENV": "model",
    "TorchEngine": "engine",
    "TrainEngine": "engine",
    "augment_batch": "data",
    "build_augment": "data",
    "build_engine": "engine",
    "clip_logits_scale": "engine",
    "cosine_with_warmup": "engine",
    "create_clip": "model",
    "image_stats": "model",
    "images_to_tensor": "model",
    "load_ds_config": "engine",
    "load_sources": "data",
    "load_weights": "model",
    "make_adamw": "engine",
    "normalize_batch": "data",
    "param_groups": "engine",
    "parse_mix": "data",
    "register_presets": "model",
    "reshape_scalar_params": "engine",
    "resume_checkpoint": "loop",
    "save_checkpoint": "loop",
    "steps_per_epoch": "data",
    "stream_loader": "data",
    "to_stock_state_dict": "engine",
    "train_loop": "loop",
}
__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
