"""Image augmentation shared by the downstream classifiers and the CLIP data stream: crop, flip,
rotation, elastic/affine warp, brightness/contrast/gamma (torchvision v2 transforms).
"""
from __future__ import annotations

from typing import Any

import torch
from torchvision.transforms import v2

WARPS = ("elastic", "affine", "either")


class RandomGamma(v2.Transform):
    """Gamma correction with gamma drawn uniformly from ``gamma`` (torchvision has no random one)."""

    def __init__(self, gamma: tuple[float, float] = (0.8, 1.25)):
        super().__init__()
        self.gamma = gamma

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        lo, hi = self.gamma
        return {"gamma": float(torch.empty(1).uniform_(lo, hi))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(v2.functional.adjust_gamma, inpt, gamma=params["gamma"])


def image_transforms(image_size: int, *, warp: str | None = "either",
                     gamma: bool = True) -> v2.Transform:
    """The shared optional transform set, for one uint8 (C, H, W) image (dtype and shape kept).

    Crop (random crop after reflect padding of size/8), horizontal and vertical flips, rotation
    up to 20 degrees, a warp (``elastic``, ``affine`` -- shift 6%, scale 0.9-1.1, shear 8 --, or
    ``either``, drawn per image; None: no warp), lighting (brightness and contrast +-20%, and
    gamma 0.8-1.25 when ``gamma``). The elastic field scales with the image (sigma 2.5 px and
    alpha 20 at 32x32).
    """
    s = image_size / 32
    elastic = v2.ElasticTransform(alpha=20.0 * s * s, sigma=2.5 * s)
    affine = v2.RandomAffine(degrees=0, translate=(0.06, 0.06), scale=(0.9, 1.1), shear=8)
    warps = {"elastic": elastic, "affine": affine, "either": v2.RandomChoice([elastic, affine])}
    if warp is not None and warp not in warps:
        raise ValueError(f"unknown warp {warp!r}; choose one of {', '.join(WARPS)} or None")
    steps: list[v2.Transform] = [
        v2.RandomCrop(image_size, padding=image_size // 8, padding_mode="reflect"),
        v2.RandomHorizontalFlip(),
        v2.RandomVerticalFlip(),
        v2.RandomRotation(20),
    ]
    if warp is not None:
        steps.append(warps[warp])
    steps.append(v2.ColorJitter(brightness=0.2, contrast=0.2))
    if gamma:
        steps.append(RandomGamma())
    return v2.Compose(steps)


def augmentation(image_size: int = 32) -> v2.Transform:
    """Alias kept for ``clip_data``'s ``classic`` set: ``image_transforms`` without warp and gamma
    (crop, flips, rotation, brightness/contrast), i.e. exactly what it has always been."""
    return image_transforms(image_size, warp=None, gamma=False)
