"""Pixel conversion shared by the importers: any source image -> uint8, channels, square size.

Choices (documented in the README):

- 8-bit images keep their values. Images with more bits (16-bit PNG/TIFF, float) and DICOM
  modalities without calibrated units are scaled per image from the 0.5th..99.5th percentile
  to 0..255 (robust to a few hot pixels); CT uses a fixed HU window instead (``dicom.py``).
- Grayscale stays grayscale (1 channel); colour stays RGB. When a dataset mixes both, the
  importer picks 3 channels and replicates grayscale; ``channels=1`` forces ITU-R 601 luma.
- Size: ``crop`` scales the shorter side to ``size`` and centre-crops (torchvision's
  Resize + CenterCrop); ``pad`` scales the longer side and pads with black. Resampling is PIL
  bicubic, which low-pass filters when shrinking (no aliasing of fine texture).
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

from .config import RESIZE_MODES

GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def robust_to_uint8(arr: np.ndarray, lo_pct: float = 0.5, hi_pct: float = 99.5) -> np.ndarray:
    """Scale any numeric array to uint8 from its ``lo_pct``..``hi_pct`` percentile range."""
    a = np.asarray(arr, dtype=np.float64)
    lo, hi = np.percentile(a, [lo_pct, hi_pct])
    if hi <= lo:
        hi = lo + 1.0
    return (np.clip((a - lo) / (hi - lo), 0.0, 1.0) * 255.0).round().astype(np.uint8)


def to_uint8(arr: np.ndarray) -> np.ndarray:
    """uint8 arrays as they are; bool as 0/255; anything else scaled by ``robust_to_uint8``."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    return robust_to_uint8(arr)


def pil_to_array(im: Image.Image) -> np.ndarray:
    """A PIL image as uint8 HxW (grayscale modes) or HxWx3 (everything else).

    EXIF orientation is applied, alpha is dropped, palettes are expanded; metadata (EXIF, PNG
    text chunks) is never carried over, since only pixels are returned.
    """
    im = ImageOps.exif_transpose(im)
    if im.mode in ("1", "L", "LA"):
        return np.asarray(im.convert("L"))
    if im.mode in GRAY_MODES:  # 16-bit or float grayscale
        return to_uint8(np.asarray(im))
    return np.asarray(im.convert("RGB"))


def set_channels(img: np.ndarray, channels: int) -> np.ndarray:
    """Grayscale HxW <-> RGB HxWx3 (replicate, or ITU-R 601 luma via PIL)."""
    if channels == 1:
        return img if img.ndim == 2 else np.asarray(Image.fromarray(img).convert("L"))
    return img if img.ndim == 3 else np.repeat(img[:, :, None], 3, axis=2)


def fit_size(img: np.ndarray, size: int, mode: str = "crop") -> np.ndarray:
    """Make ``img`` ``size`` x ``size`` (see the module docstring for ``crop`` / ``pad``)."""
    h, w = img.shape[:2]
    if (h, w) == (size, size):
        return img
    im = Image.fromarray(img)
    if mode == "crop":
        return np.asarray(ImageOps.fit(im, (size, size), Image.Resampling.BICUBIC))
    if mode == "pad":
        return np.asarray(ImageOps.pad(im, (size, size), Image.Resampling.BICUBIC, color=0))
    raise ValueError(f"resize mode {mode!r} is not one of {', '.join(RESIZE_MODES)}")
