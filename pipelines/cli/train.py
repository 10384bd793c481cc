"""``medfake train generator|clip``."""
from __future__ import annotations

import argparse
import json

from ..configs.train_clip import ClipTrainConfig
from ..configs.train_generator import GeneratorTrainConfig
from .options import add_config_args, add_trust_flag, config_from_args, trust_code


def _generator(a: argparse.Namespace) -> None:
    from ..train_generator import cached_generator, train_generator
    cfg = config_from_args(GeneratorTrainConfig, a, command="train generator")
    if a.out:
        print(train_generator(a.corpus, a.out, cfg))
    else:
        print(cached_generator(a.corpus, cfg))


def _clip(a: argparse.Namespace) -> None:
    trust_code(a)
    from ...engine.core.distributed import destroy_process_group, rank
    from ..train_clip import fewshot_summary, pretrain_clip
    cfg = config_from_args(ClipTrainConfig, a, command="train clip")
    try:
        if a.stage == "pretrain":
            if not (a.data or cfg.mix) or not a.out:
                raise ValueError("--stage pretrain needs --data DIR [DIR ...] (and/or --mix "
                                 "DIR:WEIGHT) and --out DIR")
            path = pretrain_clip(a.data or [], a.out, cfg)
            if rank() == 0:
                print(path)
        else:
            if not a.real:
                raise ValueError("--stage finetune needs --real DIR (a dataset with train/test "
                                 "splits)")
            res = fewshot_summary(a.init, a.real, a.k, a.seeds, cfg, zero_shot=not a.no_zero_shot)
            if rank() == 0:
                print(json.dumps(res, indent=1))
    finally:
        destroy_process_group()


def register(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help="training").add_subparsers(dest="sub", required=True)
    tg = train.add_parser("generator", help="pretrain the tiny SD on a captioned corpus (cached)")
    tg.add_argument("--corpus", required=True)
    tg.add_argument("--out", help="output dir (default: the cache)")
    add_config_args(tg, GeneratorTrainConfig)
    tg.set_defaults(fn=_generator)

    tc = train.add_parser("clip", help="CLIP pretraining on shards or fine-tuning on real images")
    tc.add_argument("--stage", required=True, choices=["pretrain", "finetune"])
    tc.add_argument("--data", nargs="+", help="pretrain: dataset dirs with captioned shards")
    tc.add_argument("--out", help="pretrain: output dir")
    tc.add_argument("--real", help="finetune: real dataset dir (train/test splits)")
    tc.add_argument("--init", help="finetune: pretrain checkpoint (omit for real-only)")
    tc.add_argument("--k", type=int, default=5, help="finetune: real images per class")
    tc.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                    help="finetune: one run per seed (k-shot subset and initialisation)")
    tc.add_argument("--zero-shot", action="store_true",
                    help="finetune: also evaluate --init zero-shot (the default)")
    tc.add_argument("--no-zero-shot", action="store_true",
                    help="finetune: skip the zero-shot evaluation of --init")
    add_trust_flag(tc, "a pickled --init (.pt/.bin) or a DeepSpeed checkpoint not signed by this "
                   "user (resume)")
    add_config_args(tc, ClipTrainConfig)
    tc.set_defaults(fn=_clip)
