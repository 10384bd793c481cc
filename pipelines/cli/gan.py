"""``medfake gan train|sample``."""
from __future__ import annotations

import argparse

from ..configs.gan import GANSampleConfig, GANTrainConfig
from .options import add_config_args, config_from_args


def _train(a: argparse.Namespace) -> None:
    from ..gan import train_gan
    print(train_gan(a.real, a.out, config_from_args(GANTrainConfig, a, command="gan train")))


def _sample(a: argparse.Namespace) -> None:
    from ..gan import sample_gan
    print(sample_gan(config_from_args(GANSampleConfig, a, command="gan sample")))


def register(sub: argparse._SubParsersAction) -> None:
    gan = sub.add_parser("gan", help="DCGAN / ACGAN baselines").add_subparsers(dest="sub",
                                                                               required=True)
    gt = gan.add_parser("train", help="DCGAN (one per class) or ACGAN (one model), resumable")
    gt.add_argument("--real", required=True)
    gt.add_argument("--out", required=True)
    add_config_args(gt, GANTrainConfig)
    gt.set_defaults(fn=_train)

    gs = gan.add_parser("sample", help="sample a trained GAN into shards (resumable)")
    add_config_args(gs, GANSampleConfig)
    gs.set_defaults(fn=_sample)
