"""The `medfake` command line. Each subcommand is one stage of the chain; `run` is all of them.

Known input errors (bad dataset, bad model dir, bad config) end with one line
``medfake: error: ...`` and exit code 2; anything else is a bug and shows its traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def _cmd_phantoms(a: argparse.Namespace) -> None:
    from ..engine.phantoms import PhantomConfig, make_phantom_world
    cfg = PhantomConfig(image_size=a.size, seed=a.seed, n_public_per_class=a.public_per_class,
                        n_train_per_class=a.train_per_class, n_val_per_class=a.val_per_class,
                        n_test_per_class=a.test_per_class)
    pub, hosp = make_phantom_world(a.out, cfg)
    print(f"public corpus: {pub}\nhospital:      {hosp}")


def _cmd_data_info(a: argparse.Namespace) -> None:
    from ..engine.dataset import DatasetInfo
    info = DatasetInfo.load(a.dir)
    for split, s in info.splits.items():
        print(f"{split:8s} {s['count']:7d}  {json.dumps(s['per_class'])}  shards={len(s['shards'])}")
    if a.verify:
        problems = info.verify()
        print("verify: " + ("OK" if not problems else "; ".join(problems)))
        if problems:
            sys.exit(1)


def _cmd_model_init(a: argparse.Namespace) -> None:
    from ..engine.sd_model import init_model
    print(init_model(a.preset, a.out, seed=a.seed))


def _cmd_train_generator(a: argparse.Namespace) -> None:
    from .train_generator import GeneratorTrainConfig, cached_generator, train_generator
    cfg = GeneratorTrainConfig.profile(a.profile)
    if a.out:
        print(train_generator(a.corpus, a.out, cfg))
    else:
        print(cached_generator(a.corpus, cfg))


def _cmd_synth(a: argparse.Namespace) -> None:
    from .synth import SynthConfig, synthesize
    cfg = SynthConfig(model_dir=a.model, real_dataset=a.real, out_dir=a.out,
                      per_class=a.per_class, seed=a.seed, scheduler=a.scheduler, steps=a.steps,
                      guidance_scale=a.guidance, negative_prompt=a.negative_prompt,
                      batch_size=a.batch_size, backend=a.backend)
    print(synthesize(cfg))


def _cmd_train_clip(a: argparse.Namespace) -> None:
    from .train_clip import ClipTrainConfig, fewshot_summary, pretrain_clip
    cfg = ClipTrainConfig.profile(a.profile)
    if a.stage == "pretrain":
        if not a.data or not a.out:
            raise ValueError("--stage pretrain needs --data DIR [DIR ...] and --out DIR")
        print(pretrain_clip(a.data, a.out, cfg))
    else:
        if not a.real:
            raise ValueError("--stage finetune needs --real DIR (a dataset with train/test splits)")
        print(json.dumps(fewshot_summary(a.init, a.real, a.k, a.seeds, cfg, a.zero_shot), indent=1))


def _cmd_run(a: argparse.Namespace) -> None:
    from .run import RunConfig, run_chain
    cfg = RunConfig.profile(a.profile)
    cfg.name = a.name or cfg.name
    cfg.out_root = a.out_root
    run_chain(cfg)


def _cmd_bench(a: argparse.Namespace) -> None:
    import subprocess
    root = Path(__file__).resolve().parent.parent / "bench"
    sys.exit(subprocess.call([sys.executable, str(root / "run.py"), *a.args]))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medfake", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="cmd", required=True)

    data = sub.add_parser("data", help="datasets").add_subparsers(dest="sub", required=True)
    ph = data.add_parser("phantoms", help="write the embedded phantom world")
    ph.add_argument("--out", required=True)
    ph.add_argument("--size", type=int, default=32)
    ph.add_argument("--seed", type=int, default=0)
    ph.add_argument("--public-per-class", type=int, default=1000)
    ph.add_argument("--train-per-class", type=int, default=200)
    ph.add_argument("--val-per-class", type=int, default=50)
    ph.add_argument("--test-per-class", type=int, default=100)
    ph.set_defaults(fn=_cmd_phantoms)
    di = data.add_parser("info", help="counts per split and class; --verify checks sha256")
    di.add_argument("dir")
    di.add_argument("--verify", action="store_true")
    di.set_defaults(fn=_cmd_data_info)

    model = sub.add_parser("model", help="diffusion models").add_subparsers(dest="sub", required=True)
    mi = model.add_parser("init", help="write a randomly initialised diffusers directory")
    mi.add_argument("--preset", default="tiny")
    mi.add_argument("--out", required=True)
    mi.add_argument("--seed", type=int, default=0)
    mi.set_defaults(fn=_cmd_model_init)

    train = sub.add_parser("train", help="training").add_subparsers(dest="sub", required=True)
    tg = train.add_parser("generator", help="pretrain the tiny SD on a captioned corpus (cached)")
    tg.add_argument("--corpus", required=True)
    tg.add_argument("--out", help="output dir (default: the cache)")
    tg.add_argument("--profile", default="default", choices=["default", "test"])
    tg.set_defaults(fn=_cmd_train_generator)
    tc = train.add_parser("clip", help="CLIP pretraining on shards or fine-tuning on real images")
    tc.add_argument("--stage", required=True, choices=["pretrain", "finetune"])
    tc.add_argument("--data", nargs="+", help="pretrain: dataset dirs with captioned shards")
    tc.add_argument("--out", help="pretrain: output dir")
    tc.add_argument("--real", help="finetune: real dataset dir (train/test splits)")
    tc.add_argument("--init", help="finetune: pretrain checkpoint (omit for real-only)")
    tc.add_argument("--k", type=int, default=5, help="finetune: real images per class")
    tc.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                    help="finetune: one run per seed (k-shot subset and initialisation)")
    tc.add_argument("--zero-shot", action="store_true", help="finetune: also zero-shot --init")
    tc.add_argument("--profile", default="default", choices=["default", "test"])
    tc.set_defaults(fn=_cmd_train_clip)

    sy = sub.add_parser("synth", help="text-to-image synthesis into shards (resumable)")
    sy.add_argument("--model", required=True, help="diffusers model directory")
    sy.add_argument("--real", required=True, help="real dataset (class names, prompt templates)")
    sy.add_argument("--out", required=True)
    sy.add_argument("--per-class", type=int, default=100)
    sy.add_argument("--seed", type=int, default=0)
    sy.add_argument("--scheduler", default="dpm++")
    sy.add_argument("--steps", type=int, default=20)
    sy.add_argument("--guidance", type=float, default=4.0)
    sy.add_argument("--negative-prompt", default="")
    sy.add_argument("--batch-size", type=int, default=16)
    sy.add_argument("--backend", default="torch", choices=["torch"])
    sy.set_defaults(fn=_cmd_synth)

    run = sub.add_parser("run", help="the whole chain, phantoms to real-data evaluation")
    run.add_argument("--profile", default="embedded", choices=["embedded", "test"])
    run.add_argument("--name", default=None)
    run.add_argument("--out-root", default="runs")
    run.set_defaults(fn=_cmd_run)

    be = sub.add_parser("bench", help="run the benchmark suite, write bench/RESULTS.md")
    be.add_argument("args", nargs=argparse.REMAINDER)
    be.set_defaults(fn=_cmd_bench)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from ..engine.dataset import DatasetError
    try:
        args.fn(args)
    except (DatasetError, ValueError, FileNotFoundError) as e:
        print(f"medfake: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
