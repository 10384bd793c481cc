"""Small open_clip models for 32x32 grayscale images, built from the presets in ``presets/clip``.

The presets are plain open_clip model configs registered with ``open_clip.add_model_config``, so
after ``register_presets()`` stock open_clip builds them by name (``open_clip.create_model(
"medfake-tiny")``) and a checkpoint written by medfake loads into it with ``strict=True``.
Grayscale images are replicated to 3 channels; normalisation is open_clip's default (OpenAI
mean/std), so ``open_clip.create_model_and_transforms`` yields the same preprocessing.

Presets (chosen by measurement, see ``pipelines/train_clip.py`` and the report):

* ``medfake-tiny``: ViT, patch 8 (16 tokens), width 128, 4 layers, head dim 32; text width 128,
  3 layers, context 32. The default (fastest of the candidates on CPU).
* ``medfake-small``: as tiny with patch 4 (64 tokens); ~2-3x slower per step.
* ``medfake-tiny-rn``: open_clip ModifiedResNet (layers 1-1-1-1, width 16), for comparison.
* ``medfake-micro``: 1-layer towers for tests only.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

import numpy as np
import open_clip
from open_clip.transform import PreprocessCfg, image_transform_v2
import torch

from ..core.trust import LEGACY_TRUST_ENV as TRUST_PICKLE_ENV  # noqa: F401  (deprecated name)

log = logging.getLogger(__name__)

PRESET_DIR = Path(__file__).parents[1] / "presets" / "clip"
DEFAULT_MODEL = "medfake-tiny"
_registered = False


def register_presets() -> list[str]:
    """Register every ``presets/clip/*.json`` with open_clip (idempotent); return their names."""
    global _registered
    names = sorted(p.stem for p in PRESET_DIR.glob("*.json"))
    if not _registered:
        open_clip.add_model_config(PRESET_DIR)
        _registered = True
    return names


def create_clip(name: str = DEFAULT_MODEL, weights: str | os.PathLike | None = None,
                device: str | torch.device = "cpu"
                ) -> tuple[torch.nn.Module, Callable, Callable, Callable]:
    """Build ``(model, preprocess_train, preprocess_eval, tokenizer)`` for a preset or open_clip name.

    ``weights``: optional local file holding a plain state dict (as written by
    ``pretrain_clip``) or a dict with key ``state_dict``; loaded with ``strict=True``. Nothing is
    ever downloaded. The preprocess callables take PIL images (any mode; grayscale is replicated
    to RGB) and return float tensors (3, S, S).
    """
    register_presets()
    model = open_clip.create_model(name, pretrained=None, device=device, output_dict=True)
    if weights is not None:
        load_weights(model, weights)
    pp = PreprocessCfg(**model.visual.preprocess_cfg)
    preprocess_train = image_transform_v2(pp, is_train=True)
    preprocess_eval = image_transform_v2(pp, is_train=False)
    tokenizer = open_clip.get_tokenizer(name)
    return model, preprocess_train, preprocess_eval, tokenizer




def load_weights(model: torch.nn.Module, path: str | os.PathLike,
                 trust_pickle: bool | None = None) -> None:
    """Load a state-dict file into ``model`` with ``strict=True`` (raises on any mismatch).

    ``.safetensors`` loads without executing code. A pickled file (``.pt``/``.pth``/``.bin``,
    e.g. a ``model.pt`` from medfake's older runs) raises ``UnsafeWeightsError`` unless
    ``trust_pickle`` (None: the process-wide trust rule, ``engine.core.trust``, which the CLI's
    ``--trust-code`` sets), and is then read with ``torch.load(weights_only=True)``.
    """
    from ..core.safe_load import load_weights_file

    sd = load_weights_file(path, trust_pickle=trust_pickle)
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    model.load_state_dict(sd, strict=True)
    log.info("loaded CLIP weights from %s", path)


def image_stats(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The model's normalisation ``(mean, std)`` as (1,3,1,1) tensors and its input size."""
    pp = model.visual.preprocess_cfg
    mean = torch.tensor(pp["mean"], dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(pp["std"], dtype=torch.float32).view(1, 3, 1, 1)
    size = pp["size"]
    return mean, std, int(size if isinstance(size, int) else size[0])


def images_to_tensor(images: np.ndarray, model: torch.nn.Module) -> torch.Tensor:
    """uint8 (N,H,W) grayscale or (N,H,W,3) RGB -> normalised float (N,3,S,S) for ``model``.

    Fast batched equivalent of ``preprocess_eval`` for images already at the model's size
    (other sizes are resized bilinearly).
    """
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
    x = x.unsqueeze(1).expand(-1, 3, -1, -1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    mean, std, size = image_stats(model)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear",
                                            align_corners=False)
    return (x - mean) / std
