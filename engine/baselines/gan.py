"""DCGAN and ACGAN networks for the GAN augmentation baselines.

* DCGAN (Radford, Metz, Chintala, ICLR 2016): the generator maps z ~ N(0, I) through a
  transposed convolution to 4x4, then stride-2 transposed convolutions with BatchNorm + ReLU,
  doubling the size and halving the channels per block, and Tanh at the output; the
  discriminator mirrors it with stride-2 convolutions, LeakyReLU(0.2), BatchNorm everywhere but
  the first layer, no pooling and no fully connected hidden layers. Weights ~ N(0, 0.02).
* ACGAN (Odena, Olah, Shlens, ICML 2017): the same networks, class-conditional: the generator
  takes z concatenated with a one-hot class code; the discriminator has two heads, real/fake
  and an auxiliary classifier over the classes.

Defaults follow the papers and the liver-lesion study (Frid-Adar et al., 2018: DCGAN per class
and ACGAN, 64x64 ROIs, z of 100): latent 100, 64 base feature maps, Adam betas (0.5, 0.999).
DCGAN's paper uses lr 2e-4 for both nets; the defaults here are the lung-ultrasound US-DCGAN's
1e-4 (G) / 5e-5 (D), which keep a discriminator from overpowering the generator on a handful of
images. Sizes are powers of two from 16 (32 and 64 are the tested ones); images are in [-1, 1].
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

GAN_KINDS = ("dcgan", "acgan")


@dataclass(frozen=True)
class GANArch:
    """Network shape; ``n_classes`` is 1 for a per-class DCGAN and the class count for ACGAN."""

    kind: str = "dcgan"
    image_size: int = 64
    channels: int = 1
    latent_dim: int = 100
    n_classes: int = 1
    g_features: int = 64
    d_features: int = 64

    def __post_init__(self) -> None:
        if self.kind not in GAN_KINDS:
            raise ValueError(f"unknown GAN kind {self.kind!r}; choose one of {GAN_KINDS}")
        if self.image_size < 16 or self.image_size & (self.image_size - 1):
            raise ValueError(f"GAN image size must be a power of two >= 16 (e.g. 32, 64), got "
                             f"{self.image_size}")
        if self.channels not in (1, 3):
            raise ValueError(f"GAN channels must be 1 (grayscale) or 3 (RGB), got {self.channels}")

    @property
    def levels(self) -> int:
        """Up/down-sampling blocks between 4x4 and the image size."""
        return int(math.log2(self.image_size)) - 2

    @property
    def conditional(self) -> bool:
        return self.kind == "acgan"


def init_weights(m: nn.Module) -> None:
    """DCGAN initialisation: conv weights ~ N(0, 0.02), BatchNorm scale ~ N(1, 0.02), bias 0."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


class Generator(nn.Module):
    """z (N, latent_dim) [+ labels (N,) for ACGAN] -> images (N, channels, size, size) in [-1, 1]."""

    def __init__(self, arch: GANArch):
        super().__init__()
        self.arch = arch
        c = arch.g_features * 2 ** (arch.levels - 1)
        z_in = arch.latent_dim + (arch.n_classes if arch.conditional else 0)
        layers: list[nn.Module] = [nn.ConvTranspose2d(z_in, c, 4, 1, 0, bias=False),
                                   nn.BatchNorm2d(c), nn.ReLU(True)]
        for _ in range(arch.levels - 1):
            layers += [nn.ConvTranspose2d(c, c // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(c // 2),
                       nn.ReLU(True)]
            c //= 2
        layers += [nn.ConvTranspose2d(c, arch.channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.apply(init_weights)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.arch.conditional:
            if labels is None:
                raise ValueError("an ACGAN generator needs class labels")
            z = torch.cat([z, nn.functional.one_hot(labels, self.arch.n_classes).to(z.dtype)], 1)
        return self.net(z[:, :, None, None])


class Discriminator(nn.Module):
    """images -> (real/fake logit (N,), class logits (N, n_classes) for ACGAN else None)."""

    def __init__(self, arch: GANArch):
        super().__init__()
        self.arch = arch
        c = arch.d_features
        layers: list[nn.Module] = [nn.Conv2d(arch.channels, c, 4, 2, 1, bias=False),
                                   nn.LeakyReLU(0.2, True)]
        for _ in range(arch.levels - 1):
            layers += [nn.Conv2d(c, c * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(c * 2),
                       nn.LeakyReLU(0.2, True)]
            c *= 2
        self.features = nn.Sequential(*layers)
        self.src = nn.Conv2d(c, 1, 4, 1, 0, bias=False)
        self.aux = nn.Conv2d(c, arch.n_classes, 4, 1, 0) if arch.conditional else None
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.features(x)
        cls = self.aux(h).flatten(1) if self.aux is not None else None
        return self.src(h).flatten(), cls


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Generator output in [-1, 1] (N, C, H, W) -> uint8 (N, H, W, C)."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)
