"""CLIP: open_clip models and presets, the streaming WebDataset input, the training engine
(single process or DeepSpeed ZeRO) and its loop.

Public names are exported lazily (PEP 562): ``from medfake.engine.clip import X`` imports
only the module that defines X, so the CLI stays fast to start.
"""
from __future__ import annotations

import importlib
from typing import Any

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
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
