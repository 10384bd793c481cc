"""The liver-lesion study's small CNN and a deterministic few-shot trainer for it.

``SmallCNN``: three pairs of 3x3 conv (ReLU) each followed by 2x2 max-pooling, then two dense
layers with dropout 0.5 between them. Used as the fixed downstream classifier when comparing
data arms (real only / real + synthetic / ...), and by the phantom calibration.

Channels default to 16/32/64: on 2 CPU cores a batch-64 step takes ~0.45 s at width 16 vs
~1.2 s at width 32 (1 thread, busy machine), and 300-step arms are run many times per study.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn
from torchvision.transforms import v2

from .seeding import seed_everything

log = logging.getLogger(__name__)


class SmallCNN(nn.Module):
    """Input float (N, in_ch, H, W) with H, W divisible by 8 (32x32 -> 4x4); output logits."""

    def __init__(self, n_classes: int, in_ch: int = 1, width: int = 16, image_size: int = 32,
                 hidden: int = 256, dropout: float = 0.5):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_ch
        for c in (width, 2 * width, 4 * width):
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.ReLU(inplace=True),
                       nn.Conv2d(c, c, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c_in = c
        self.features = nn.Sequential(*layers)
        feat = c_in * (image_size // 8) ** 2
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(feat, hidden), nn.ReLU(inplace=True),
                                  nn.Dropout(dropout), nn.Linear(hidden, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def augmentation(image_size: int = 32) -> v2.Transform:
    """Classic augmentation for one uint8 (C, H, W) image: crop, flips, rotation, brightness/contrast."""
    return v2.Compose([
        v2.RandomCrop(image_size, padding=image_size // 8, padding_mode="reflect"),
        v2.RandomHorizontalFlip(),
        v2.RandomVerticalFlip(),
        v2.RandomRotation(20),
        v2.ColorJitter(brightness=0.2, contrast=0.2),
    ])


def _to_input(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N,H,W) or (N,C,H,W) -> float (N,C,H,W) in [-1, 1]."""
    x = torch.as_tensor(np.asarray(images)) if not torch.is_tensor(images) else images
    if x.ndim == 3:
        x = x.unsqueeze(1)
    return x.float().div(127.5).sub(1.0)


def train_classifier(images: np.ndarray, labels: np.ndarray, steps: int = 300, batch: int = 64,
                     lr: float = 1e-3, seed: int = 0, augment: bool = False,
                     n_classes: int | None = None, weight_decay: float = 0.0,
                     width: int = 16) -> SmallCNN:
    """Train a fresh ``SmallCNN`` on uint8 grayscale ``images`` (N,H,W) for exactly ``steps`` steps.

    Batches are drawn with replacement (so the step budget is identical whatever N is, and
    k-shot sets smaller than ``batch`` work). Deterministic for a given ``seed`` on one machine.
    ``augment`` applies ``augmentation()`` independently per sample; ``width`` is the first conv
    pair's channel count (doubled per pair). Returns the model in eval mode.
    """
    images = np.asarray(images)
    labels = np.asarray(labels, dtype=np.int64)
    if images.dtype != np.uint8 or images.ndim != 3 or len(images) != len(labels) or not len(labels):
        raise ValueError(f"need uint8 (N,H,W) images with N labels, got {images.dtype} "
                         f"{images.shape} and {labels.shape}")
    n_classes = int(n_classes or labels.max() + 1)
    seed_everything(seed)
    model = SmallCNN(n_classes, in_ch=1, width=width, image_size=images.shape[-1])
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    rng = np.random.default_rng(seed)
    aug = augmentation(images.shape[-1]) if augment else None
    x_all = torch.from_numpy(images).unsqueeze(1)  # uint8 (N,1,H,W)
    y_all = torch.from_numpy(labels)
    model.train()
    for step in range(steps):
        idx = torch.from_numpy(rng.integers(0, len(labels), batch))
        xb = x_all[idx]
        if aug is not None:
            xb = torch.stack([aug(img) for img in xb])
        loss = nn.functional.cross_entropy(model(_to_input(xb)), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            log.debug("SmallCNN step %d loss %.4f", step, loss.item())
    return model.eval()


@torch.no_grad()
def predict_proba(model: nn.Module, images: np.ndarray, batch: int = 512) -> np.ndarray:
    """Softmax class probabilities (N, C) for uint8 grayscale images (N,H,W); eval mode."""
    model.eval()
    out = [torch.softmax(model(_to_input(images[i:i + batch])), dim=1)
           for i in range(0, len(images), batch)]
    return torch.cat(out).numpy()
