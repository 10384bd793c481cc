"""Downstream classifiers for the data studies and a deterministic few-shot trainer for them.

Architectures (``CLASSIFIER_ARCHS``, built by ``create_classifier``):

* ``small-cnn``: the liver-lesion study's ``SmallCNN`` -- three pairs of 3x3 conv (ReLU) each
  followed by 2x2 max-pooling, then two dense layers with dropout 0.5 between them. Channels
  default to 16/32/64: on 2 CPU cores a batch-64 step takes ~0.45 s at width 16 vs ~1.2 s at
  width 32 (1 thread, busy machine), and 300-step arms are run many times per study.
* ``resnet18`` and ``efficientnetv2`` (timm ``resnet18`` / ``tf_efficientnetv2_b0``, the
  smallest EfficientNetV2): built from scratch by timm with ``in_chans``/``num_classes``; both
  global-pool, so any input from 32x32 to 256x256 works.

All three accept a LOCAL weights file (``weights=``; never a download): read through
``engine.safe_load`` (safetensors, pickles refused unless ``--trust-code``), the
classification head is dropped and left freshly initialised for ``n_classes``, an RGB stem is
averaged to the requested input channels (timm ``adapt_input_conv``), and every other tensor
must match the architecture exactly -- otherwise one ``ValueError`` names the file and the arch.

``image_transforms`` is the one shared optional transform set (crop, flip, rotation, elastic or
affine warp, brightness/contrast/gamma); ``train_classifier(augment=True)`` uses it.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from ..core.seeding import seed_everything
from ..data.augmentation import image_transforms

log = logging.getLogger(__name__)

CLASSIFIER_ARCHS = ("small-cnn", "resnet18", "efficientnetv2")
TIMM_NAMES = {"resnet18": "resnet18", "efficientnetv2": "tf_efficientnetv2_b0"}


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


def create_classifier(arch: str, n_classes: int, in_ch: int = 1, image_size: int = 32,
                      weights: str | None = None, width: int = 16) -> nn.Module:
    """A fresh classifier of ``arch`` for float (N, in_ch, H, W) inputs in [-1, 1].

    ``image_size`` and ``width`` only shape ``small-cnn`` (its dense layer depends on the size,
    which must be divisible by 8). ``weights``: a local weights file whose non-head tensors are
    loaded (see the module docstring); the head is always new, sized ``n_classes``.
    """
    if arch not in CLASSIFIER_ARCHS:
        raise ValueError(f"unknown classifier arch {arch!r}; choose one of "
                         f"{', '.join(CLASSIFIER_ARCHS)}")
    if arch == "small-cnn":
        if image_size % 8:
            raise ValueError(f"small-cnn needs an image size divisible by 8, got {image_size}")
        model: nn.Module = SmallCNN(n_classes, in_ch=in_ch, width=width, image_size=image_size)
        head, stem = "head.4.", "features.0.weight"
    else:
        import timm
        model = timm.create_model(TIMM_NAMES[arch], pretrained=False, in_chans=in_ch,
                                  num_classes=n_classes)
        head = model.pretrained_cfg["classifier"] + "."
        stem = model.pretrained_cfg["first_conv"] + ".weight"
    if weights is not None:
        _load_backbone(model, arch, weights, head, stem)
    return model


def _load_backbone(model: nn.Module, arch: str, path: str, head: str, stem: str) -> None:
    """Load every non-head tensor of ``path`` into ``model``; ValueError if it is another arch."""
    from timm.models import adapt_input_conv

    from ..core.safe_load import load_weights_file
    sd = load_weights_file(path)  # pickles only under --trust-code (engine.core.trust)
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    body = {k: v for k, v in sd.items() if not k.startswith(head)}
    own = model.state_dict()
    if stem in body and stem in own and body[stem].ndim == 4 \
            and body[stem].shape[1] != own[stem].shape[1]:
        body[stem] = adapt_input_conv(own[stem].shape[1], body[stem])
    missing = [k for k in own if not k.startswith(head) and k not in body
               and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in body if k not in own]
    wrong = [f"{k} {tuple(body[k].shape)} vs {tuple(own[k].shape)}" for k in body
             if k in own and body[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        problems = ([f"missing {', '.join(missing[:3])}"] if missing else []) + \
                   ([f"unexpected {', '.join(unexpected[:3])}"] if unexpected else []) + \
                   ([f"shape {', '.join(wrong[:3])}"] if wrong else [])
        raise ValueError(f"weights file {path} does not hold {arch} weights "
                         f"({'; '.join(problems)}); pass a file saved from the {arch} "
                         f"architecture")
    model.load_state_dict(body, strict=False)
    log.info("loaded %s backbone weights from %s (%d tensors; head reset)", arch, path, len(body))








def _channels_first(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N,H,W) -> (N,1,H,W); (N,H,W,3) -> (N,3,H,W); (N,C,H,W) unchanged."""
    x = torch.as_tensor(np.asarray(images)) if not torch.is_tensor(images) else images
    if x.ndim == 3:
        return x.unsqueeze(1)
    if x.ndim == 4 and x.shape[-1] == 3 and x.shape[1] != 3:
        return x.permute(0, 3, 1, 2).contiguous()
    return x


def _to_input(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N,H,W), (N,H,W,3) or (N,C,H,W) -> float (N,C,H,W) in [-1, 1]."""
    return _channels_first(images).float().div(127.5).sub(1.0)


def train_classifier(images: np.ndarray, labels: np.ndarray, steps: int = 300, batch: int = 64,
                     lr: float = 1e-3, seed: int = 0, augment: bool = False,
                     n_classes: int | None = None, weight_decay: float = 0.0,
                     width: int = 16, arch: str = "small-cnn",
                     weights: str | None = None) -> nn.Module:
    """Train a fresh ``arch`` classifier on uint8 ``images`` for exactly ``steps`` Adam steps.

    ``images``: grayscale (N,H,W) or RGB (N,H,W,3). Batches are drawn with replacement (so the
    step budget is identical whatever N is, and k-shot sets smaller than ``batch`` work).
    Deterministic for a given ``seed`` on one machine. ``augment`` applies ``image_transforms()``
    independently per sample; ``width`` is the small CNN's first conv pair's channel count
    (doubled per pair); ``weights`` a local backbone weights file (see ``create_classifier``).
    Returns the model in eval mode.
    """
    images = np.asarray(images)
    labels = np.asarray(labels, dtype=np.int64)
    rgb = images.ndim == 4 and images.shape[-1] == 3
    if images.dtype != np.uint8 or not (images.ndim == 3 or rgb) or len(images) != len(labels) \
            or not len(labels):
        raise ValueError(f"need uint8 (N,H,W) or (N,H,W,3) images with N labels, got "
                         f"{images.dtype} {images.shape} and {labels.shape}")
    n_classes = int(n_classes or labels.max() + 1)
    seed_everything(seed)
    model = create_classifier(arch, n_classes, in_ch=3 if rgb else 1,
                              image_size=images.shape[1], weights=weights, width=width)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    rng = np.random.default_rng(seed)
    aug = image_transforms(images.shape[1]) if augment else None
    x_all = _channels_first(images)  # uint8 (N,C,H,W)
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
            log.debug("%s step %d loss %.4f", arch, step, loss.item())
    return model.eval()


@torch.no_grad()
def predict_proba(model: nn.Module, images: np.ndarray, batch: int = 512) -> np.ndarray:
    """Softmax class probabilities (N, C) for uint8 images (N,H,W) or (N,H,W,3); eval mode."""
    model.eval()
    out = [torch.softmax(model(_to_input(images[i:i + batch])), dim=1)
           for i in range(0, len(images), batch)]
    return torch.cat(out).numpy()
