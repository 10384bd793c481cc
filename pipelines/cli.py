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
    from ..engine.data.phantoms import PhantomConfig, make_phantom_world
    cfg = PhantomConfig(image_size=a.size, seed=a.seed, n_public_per_class=a.public_per_class,
                        n_train_per_class=a.train_per_class, n_val_per_class=a.val_per_class,
                        n_test_per_class=a.test_per_class)
    pub, hosp = make_phantom_world(a.out, cfg)
    print(f"public corpus: {pub}\nhospital:      {hosp}")


def _cmd_data_info(a: argparse.Namespace) -> None:
    from ..engine.data.reader import DatasetInfo
    info = DatasetInfo.load(a.dir)
    for split, s in info.splits.items():
        print(f"{split:8s} {s['count']:7d}  {json.dumps(s['per_class'])}  shards={len(s['shards'])}")
    if a.verify:
        problems = info.verify()
        print("verify: " + ("OK" if not problems else "; ".join(problems)))
        if problems:
            sys.exit(1)


def _cmd_data_import(a: argparse.Namespace) -> None:
    from ..engine.importers import ImportConfig, import_dataset
    cfg = ImportConfig(source=a.source, src=a.src, out=a.out, size=a.size, resize=a.resize,
                       channels=a.channels, val_fraction=a.val, test_fraction=a.test, seed=a.seed,
                       class_names=a.class_names.split(",") if a.class_names else None,
                       templates=a.template, modality=a.modality, window=a.window,
                       slices=a.slices, patient_regex=a.patient_regex, salt_file=a.salt_file,
                       samples_per_shard=a.samples_per_shard)
    res = import_dataset(cfg)
    print(f"{res.out}: " + ", ".join(f"{s} {n}" for s, n in res.counts.items())
          + f"; split: {res.split_method}"
          + (f"; skipped {sum(res.skipped.values())}: {res.skipped}" if res.skipped else ""))
    if a.show_skipped:  # source paths may name patients: printed only on request, never logged
        for ref, reason in res.skipped_refs:
            print(f"skipped\t{reason}\t{ref}", file=sys.stderr)


def _cmd_data_check(a: argparse.Namespace) -> None:
    from .data_check import check_dataset
    report = check_dataset(a.dir, a.synthetic or [])
    print(report.text())
    if a.json:
        Path(a.json).write_text(json.dumps(report.to_json(), indent=1) + "\n")
    if not report.ok:
        sys.exit(1)


def _trust_pickle(a: argparse.Namespace) -> None:
    """``--trust-pickle``: let this process load pickled weights (torch.load weights_only=True)."""
    if getattr(a, "trust_pickle", False):
        import os
        os.environ["MEDFAKE_TRUST_PICKLE"] = "1"


def _cmd_model_init(a: argparse.Namespace) -> None:
    from ..engine.diffusion.sd_model import init_model
    print(init_model(a.preset, a.out, seed=a.seed))


def _cmd_model_convert(a: argparse.Namespace) -> None:
    from ..engine.diffusion.single_file import convert_single_file
    print(convert_single_file(a.checkpoint, a.config, a.out, trust_pickle=a.trust_pickle))


def _cmd_train_generator(a: argparse.Namespace) -> None:
    from .train_generator import GeneratorTrainConfig, cached_generator, train_generator
    cfg = GeneratorTrainConfig.profile(a.profile)
    if a.out:
        print(train_generator(a.corpus, a.out, cfg))
    else:
        print(cached_generator(a.corpus, cfg))


def _cmd_synth(a: argparse.Namespace) -> None:
    if a.status_args:
        _cmd_synth_status(a)
        return
    missing = [f"--{f}" for f in ("model", "real", "out") if not getattr(a, f)]
    if missing:
        raise ValueError(f"medfake synth needs {', '.join(missing)} to run a job (or `medfake "
                         f"synth status OUT` to inspect one)")
    _trust_pickle(a)
    from .synth import SynthConfig, synthesize
    cfg = SynthConfig(model_dir=a.model, real_dataset=a.real, out_dir=a.out, mode=a.mode,
                      per_class=a.per_class, per_real=a.per_real, seed=a.seed,
                      scheduler=a.scheduler, steps=a.steps, guidance_scale=a.guidance,
                      negative_prompt=a.negative_prompt, image_size=a.size,
                      image_format=a.format, quality=a.quality,
                      samples_per_shard=a.samples_per_shard, backend=a.backend, mask=a.mask,
                      mask_shape=a.mask_shape, mask_scale=tuple(a.mask_scale),
                      outpaint_scale=tuple(a.outpaint_scale),
                      outpaint_placement=a.outpaint_placement, paste_back=not a.no_paste_back,
                      clip_filter=a.clip_filter, clip_model=a.clip_model,
                      clip_threshold=a.clip_threshold, memorization=a.memorization,
                      memorization_threshold=a.memorization_threshold,
                      batch_size=a.batch_size, extend=a.extend, rank=a.rank,
                      world_size=a.world_size, workers=a.workers, max_pending=a.max_pending,
                      threads=a.threads, streams=a.streams)
    print(synthesize(cfg))


def _cmd_synth_status(a: argparse.Namespace) -> None:
    if len(a.status_args) != 2 or a.status_args[0] != "status":
        raise ValueError(f"unexpected arguments {' '.join(a.status_args)!r}: use `medfake synth "
                         f"status OUT`, or `medfake synth --model M --real R --out O` to run")
    from .synth import synth_status
    st = synth_status(a.status_args[1], verify=not a.no_verify, finalize_job=a.finalize,
                      remove_corrupt_shards=a.remove_corrupt)
    print(st.text(a.world_size))
    if a.json:
        Path(a.json).write_text(json.dumps(st.to_json(), indent=1) + "\n")
    if not st.complete or st.dataset_json != "complete":
        sys.exit(1)


def _cmd_train_clip(a: argparse.Namespace) -> None:
    _trust_pickle(a)
    from ..engine.core.distributed import destroy_process_group, rank
    from .train_clip import ClipTrainConfig, fewshot_summary, pretrain_clip
    given = {"model": a.model, "steps": a.steps, "epochs": a.epochs, "batch_size": a.batch_size,
             "lr": a.lr, "workers": a.workers, "augment": a.augment,
             "shuffle_buffer": a.shuffle_buffer, "precision": a.precision,
             "grad_accum": a.grad_accum, "checkpoint_every": a.checkpoint_every,
             "zero": a.zero, "ds_config": a.ds_config, "ft_mode": a.finetune_mode,
             "ft_steps": a.ft_steps, "resume": a.resume, "log_every": a.log_every,
             "ft_freeze": tuple(a.freeze) if a.freeze else None,
             "mix": tuple(a.mix) if a.mix else None,
             "deepspeed": a.deepspeed or None, "resampled": a.resampled or None,
             "tensorboard": False if a.no_tensorboard else None}
    cfg = ClipTrainConfig.profile(a.profile, **{k: v for k, v in given.items() if v is not None})
    try:
        if a.stage == "pretrain":
            if not (a.data or a.mix) or not a.out:
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


def _cmd_export_clip(a: argparse.Namespace) -> None:
    from .export_clip import export_clip
    print(export_clip(a.ckpt, a.out, model=a.model, tag=a.tag))


def _cmd_run(a: argparse.Namespace) -> None:
    from .run import RunConfig, run_chain
    cfg = RunConfig.profile(a.profile)
    cfg.name = a.name or cfg.name
    cfg.out_root = a.out_root
    run_chain(cfg)


def _cmd_experiment(a: argparse.Namespace) -> None:
    from .experiment import ExperimentConfig, run_experiment
    cfg = ExperimentConfig.load(a.config, a.profile)
    out = a.out or str(Path("runs") / "experiments" / a.name)
    res = run_experiment(a.name, cfg, out)
    print(f"results: {res}\nreport:  {Path(out) / 'report.html'}")


def _cmd_report(a: argparse.Namespace) -> None:
    from .report import write_report
    html_path, md_path = write_report(a.run_dir)
    print(f"{html_path}\n{md_path}")


def _cmd_export_onnx(a: argparse.Namespace) -> None:
    from ..export.onnx_export import OnnxExportConfig, export_onnx
    cfg = OnnxExportConfig(opset=a.opset, exporter=a.exporter, precision=a.precision,
                           components=tuple(a.components) if a.components else None)
    print(export_onnx(a.model, a.out, cfg))


def _cmd_export_tensorrt(a: argparse.Namespace) -> None:
    from ..export.tensorrt_build import TensorRTBuildConfig, build_engines
    cfg = TensorRTBuildConfig.from_cli(a.batch, fp16=a.fp16, workspace_gb=a.workspace_gb)
    print(build_engines(a.onnx, a.out, cfg))


def _cmd_doctor(a: argparse.Namespace) -> None:
    from .doctor import doctor_report
    print(doctor_report())


def _cmd_finetune_dreambooth(a: argparse.Namespace) -> None:
    from .dreambooth import DreamBoothConfig, finetune_dreambooth
    over = {k: v for k, v in dict(
        k=a.k, kshot_seed=a.kshot_seed, tokens=tuple(a.tokens) if a.tokens else None,
        instance_format=a.instance_format, num_class_images=a.class_images,
        prior_loss_weight=a.prior_weight, steps=a.steps, batch_size=a.batch_size, lr=a.lr,
        lora_rank=a.lora_rank, image_size=a.image_size, checkpoint_every=a.checkpoint_every,
        seed=a.seed, mixed_precision=a.mixed_precision, device=a.device).items() if v is not None}
    for flag in ("train_text_encoder", "gradient_checkpointing", "use_8bit_adam"):
        if getattr(a, flag):
            over[flag] = True
    if a.no_prior:
        over["prior_preservation"] = False
    print(finetune_dreambooth(a.base, a.real, a.out, DreamBoothConfig.profile(a.profile, **over)))


def _cmd_gan_train(a: argparse.Namespace) -> None:
    from .gan import profile, train_gan
    over = {k: v for k, v in dict(
        image_size=a.size, channels=a.channels, k=a.k, kshot_seed=a.kshot_seed, steps=a.steps,
        batch_size=a.batch_size, lr_g=a.lr_g, lr_d=a.lr_d, checkpoint_every=a.checkpoint_every,
        grid_every=a.grid_every, seed=a.seed, device=a.device).items() if v is not None}
    print(train_gan(a.real, a.out, profile(a.profile, a.kind, **over)))


def _cmd_gan_sample(a: argparse.Namespace) -> None:
    from .gan import GANSampleConfig, sample_gan
    print(sample_gan(GANSampleConfig(gan_dir=a.gan, real_dataset=a.real, out_dir=a.out,
                                     per_class=a.per_class, seed=a.seed, image_size=a.size,
                                     batch_size=a.batch_size, device=a.device)))


def _cmd_eval_quality(a: argparse.Namespace) -> None:
    from .eval_samples import eval_quality
    _trust_pickle(a)
    path = eval_quality(a.real, a.synthetic, a.out, split=a.split,
                        synthetic_split=a.synthetic_split, encoder=a.encoder)
    o = json.loads(path.read_text())["overall"]
    print(f"{path}: FD {o['frechet_distance']:.4g}, precision {o['precision']:.3f}, recall "
          f"{o['recall']:.3f}, 1-NN accuracy {o['one_nn_accuracy']:.3f}")


def _cmd_eval_memorization(a: argparse.Namespace) -> None:
    from .eval_samples import eval_memorization
    _trust_pickle(a)
    s = eval_memorization(a.real, a.synthetic, a.out, real_split=a.real_split,
                          synthetic_split=a.synthetic_split, encoder=a.encoder,
                          threshold=a.threshold, max_pairs=a.max_pairs)
    print(f"{a.out}: {s['n_flagged']} of {s['n_synthetic']} synthetic images within "
          f"{s['threshold']:.4g} of a real training image ({s['threshold_rule']})")


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
    dm = data.add_parser("import", help="import real images (ImageFolder, MedMNIST .npz, CSV, "
                         "DICOM) as a de-identified dataset, split by patient")
    dm.add_argument("--from", dest="source", required=True,
                    choices=["imagefolder", "medmnist", "csv", "dicom"])
    dm.add_argument("src", help="class-folder tree (imagefolder, dicom), .npz file or .csv file")
    dm.add_argument("--out", required=True)
    dm.add_argument("--size", type=int, help="output size (default: the source's, if uniform)")
    dm.add_argument("--resize", default="crop", choices=["crop", "pad"])
    dm.add_argument("--channels", type=int, choices=[1, 3], help="default: 1 if all grayscale")
    dm.add_argument("--val", type=float, default=0.1, help="val fraction (no source split)")
    dm.add_argument("--test", type=float, default=0.1, help="test fraction (no source split)")
    dm.add_argument("--seed", type=int, default=0)
    dm.add_argument("--class-names", help="comma-separated class names in label order")
    dm.add_argument("--template", action="append",
                    help="caption template with {cls}, repeatable (e.g. 'a CT image of a {cls} lesion')")
    dm.add_argument("--modality", help="modality word for default captions (e.g. CT, MRI)")
    dm.add_argument("--window", default="auto", help="DICOM: auto, file, abdomen, liver, lung, "
                    "mediastinum, brain, bone, or LEVEL,WIDTH")
    dm.add_argument("--slices", default="all", choices=["all", "middle"],
                    help="DICOM series / multi-frame: every slice, or the middle one")
    dm.add_argument("--patient-regex", help="regex whose first group is the patient id in file names")
    dm.add_argument("--salt-file", help="secret salt for pseudonyms (default: $MEDFAKE_DEID_SALT "
                    "or a per-user secret in the medfake cache)")
    dm.add_argument("--samples-per-shard", type=int, default=1000)
    dm.add_argument("--show-skipped", action="store_true",
                    help="print the source paths of skipped files to stderr (may identify patients)")
    dm.set_defaults(fn=_cmd_data_import)
    dc = data.add_parser("check", help="verify checksums and counts; no patient or image in two "
                         "splits; no synthetic sample derived from a val/test image")
    dc.add_argument("dir")
    dc.add_argument("--synthetic", nargs="+", help="synthetic dataset dir(s) made from DIR")
    dc.add_argument("--json", help="also write the report as JSON to this file")
    dc.set_defaults(fn=_cmd_data_check)

    model = sub.add_parser("model", help="diffusion models").add_subparsers(dest="sub", required=True)
    mi = model.add_parser("init", help="write a randomly initialised diffusers directory")
    mi.add_argument("--preset", default="tiny")
    mi.add_argument("--out", required=True)
    mi.add_argument("--seed", type=int, default=0)
    mi.set_defaults(fn=_cmd_model_init)
    mc = model.add_parser("convert", help="a single-file checkpoint (*.safetensors / *.ckpt, "
                          "original LDM layout) to a diffusers directory, offline")
    mc.add_argument("checkpoint", help="the single-file checkpoint")
    mc.add_argument("--config", required=True, help="a local diffusers SD dir of the same "
                    "architecture, or the checkpoint's original *.yaml (v1-inference.yaml, ...)")
    mc.add_argument("--out", required=True, help="new directory for the diffusers model")
    mc.add_argument("--trust-pickle", action="store_true",
                    help="allow a pickled .ckpt (read with torch.load(weights_only=True))")
    mc.set_defaults(fn=_cmd_model_convert)

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
    tc.add_argument("--zero-shot", action="store_true",
                    help="finetune: also evaluate --init zero-shot (the default)")
    tc.add_argument("--no-zero-shot", action="store_true",
                    help="finetune: skip the zero-shot evaluation of --init")
    tc.add_argument("--profile", default="default", choices=["default", "test"])
    tc.add_argument("--trust-pickle", action="store_true",
                    help="allow a pickled --init (.pt/.bin; read with torch.load weights_only=True)")
    tc.add_argument("--model", help="open_clip model or medfake preset (default: profile's)")
    tc.add_argument("--steps", type=int, help="pretrain: optimizer steps")
    tc.add_argument("--epochs", type=int, help="pretrain: epochs of sum(dataset sizes) samples "
                    "(overrides --steps)")
    tc.add_argument("--batch-size", type=int, help="pretrain: micro-batch per rank")
    tc.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step")
    tc.add_argument("--lr", type=float, help="pretrain: peak learning rate")
    tc.add_argument("--precision", choices=["fp32", "bf16", "fp16"],
                    help="fp32 (default), bf16, or fp16 (CUDA only)")
    tc.add_argument("--deepspeed", action="store_true",
                    help="train through DeepSpeed even in one process (launched runs always do)")
    tc.add_argument("--zero", type=int, choices=[1, 2, 3],
                    help="DeepSpeed ZeRO stage preset (engine/presets/deepspeed/zeroN.json)")
    tc.add_argument("--ds-config", help="DeepSpeed JSON config instead of a preset")
    tc.add_argument("--checkpoint-every", type=int, help="pretrain: steps between checkpoints")
    tc.add_argument("--resume", choices=["auto", "require", "never"],
                    help="pretrain: auto (default) continues --out's latest checkpoint if any; "
                    "require fails without one; never refuses an --out holding a run")
    tc.add_argument("--mix", action="append", metavar="DIR:WEIGHT",
                    help="pretrain: add a source drawn with relative WEIGHT (repeatable; "
                    "--data dirs together have weight 1), e.g. --mix real:0.1")
    tc.add_argument("--workers", type=int, help="pretrain: data worker processes per rank")
    tc.add_argument("--shuffle-buffer", type=int, help="pretrain: sample shuffle buffer")
    tc.add_argument("--resampled", action="store_true",
                    help="pretrain: draw shards with replacement (multi-node)")
    tc.add_argument("--augment", choices=["none", "openclip", "classic", "skin"],
                    help="pretrain augmentation (skin: crop, flips, rotation, elastic, "
                    "brightness/contrast)")
    tc.add_argument("--no-tensorboard", action="store_true", help="pretrain: JSONL log only")
    tc.add_argument("--log-every", type=int, help="pretrain: steps between telemetry records")
    tc.add_argument("--finetune-mode", choices=["zeroshot-head", "linear-probe", "contrastive"],
                    help="finetune: head from class-prompt embeddings (default), linear probe "
                    "on a frozen image tower, or contrastive image-prompt training")
    tc.add_argument("--freeze", action="append", metavar="TOWER[:N]",
                    help="finetune: lock image[:N] or text[:N] (all but the last N groups/layers)")
    tc.add_argument("--ft-steps", type=int, help="finetune: steps per seed")
    tc.set_defaults(fn=_cmd_train_clip)

    sy = sub.add_parser(
        "synth", help="mass synthesis into shards (txt2img, inpaint, outpaint; exactly once, "
        "resumable, many ranks); `medfake synth status OUT` checks a job",
        usage="medfake synth --model M --real R --out O [options]\n"
              "       medfake synth status OUT [--finalize] [--remove-corrupt] [--no-verify] "
              "[--world-size N] [--json FILE]")
    sy.add_argument("status_args", nargs="*", metavar="status OUT",
                    help="report planned, done, missing and corrupt shards of OUT across all "
                    "ranks (verifies checksums); exit 1 unless the job is complete")
    sy.add_argument("--model", help="diffusers model dir (or an ONNX/TensorRT export dir)")
    sy.add_argument("--real", help="real dataset: class names, prompt templates, train images")
    sy.add_argument("--out")
    sy.add_argument("--mode", default="txt2img",
                    choices=["txt2img", "inpaint", "outpaint", "inpaint-outpaint"])
    sy.add_argument("--per-real", type=int, help="K synthetic images per real train image "
                    "(default 10 unless --per-class)")
    sy.add_argument("--per-class", type=int, help="N synthetic images per class")
    sy.add_argument("--seed", type=int, default=0)
    sy.add_argument("--scheduler", default="dpm++",
                    help="ddim, ddpm, dpm++, euler, euler-a, pndm, unipc")
    sy.add_argument("--steps", type=int, default=20)
    sy.add_argument("--guidance", type=float, default=4.0)
    sy.add_argument("--negative-prompt", default="")
    sy.add_argument("--size", type=int, default=0, help="image size (default: the real dataset's)")
    sy.add_argument("--format", default="png", choices=["png", "webp", "jpg"])
    sy.add_argument("--quality", type=int, help="jpg quality (default 95); webp: lossy below 100")
    sy.add_argument("--samples-per-shard", type=int, default=256)
    sy.add_argument("--batch-size", type=int, default=16)
    sy.add_argument("--backend", default="auto", choices=["auto", "torch", "onnx", "tensorrt"],
                    help="auto (default): the fastest this machine runs (`medfake doctor`); torch: "
                    "PyTorch eager; onnx: ONNX Runtime (exports and caches the model on first use,"
                    " or give an export dir as --model); tensorrt: GPU engines")
    sy.add_argument("--threads", type=int, help="backend threads in all (default: torch's)")
    sy.add_argument("--streams", type=int, help="concurrent denoising streams sharing the threads "
                    "(default: one per thread for ONNX Runtime on a CPU, else 1)")
    sy.add_argument("--mask", default="lesion", choices=["lesion", "random"],
                    help="inpainting masks centred on the lesion, or anywhere")
    sy.add_argument("--mask-shape", default="any", choices=["box", "ellipse", "any"])
    sy.add_argument("--mask-scale", type=float, nargs=2, default=[0.3, 0.6], metavar=("MIN", "MAX"),
                    help="mask side as a fraction of the image side")
    sy.add_argument("--outpaint-scale", type=float, nargs=2, default=[0.5, 0.75],
                    metavar=("MIN", "MAX"), help="real image side as a fraction of the canvas")
    sy.add_argument("--outpaint-placement", default="random", choices=["random", "center"])
    sy.add_argument("--no-paste-back", action="store_true",
                    help="keep the decoded pixels outside the mask instead of the real ones")
    sy.add_argument("--clip-filter", metavar="WEIGHTS", help="drop samples this CLIP model "
                    "(a `train clip --stage pretrain` dir) does not assign to the prompted class")
    sy.add_argument("--clip-model", help="open_clip model name (default: from WEIGHTS' config)")
    sy.add_argument("--clip-threshold", type=float, default=0.0,
                    help="also drop when p(prompted class) is below this")
    sy.add_argument("--memorization", choices=["pixel", "clip"],
                    help="drop samples closer than --memorization-threshold to a real train image")
    sy.add_argument("--memorization-threshold", type=float, default=0.05)
    sy.add_argument("--extend", action="store_true",
                    help="add samples to an existing job (same parameters) as new shards")
    sy.add_argument("--rank", type=int, help="this process's rank (default: torchrun RANK, "
                    "srun SLURM_PROCID or SLURM_ARRAY_TASK_ID)")
    sy.add_argument("--world-size", type=int, help="number of ranks (default: from the launcher)")
    sy.add_argument("--workers", type=int, default=2, help="background encoder threads")
    sy.add_argument("--max-pending", type=int, default=4,
                    help="batches waiting for the writer before the backend waits")
    sy.add_argument("--trust-pickle", action="store_true",
                    help="allow a model dir with only pickled .bin weights (torch.load weights_only=True)")
    sy.add_argument("--finalize", action="store_true",
                    help="status: write dataset.json if every shard is done")
    sy.add_argument("--remove-corrupt", action="store_true",
                    help="status: delete corrupt shards so the job rewrites them")
    sy.add_argument("--no-verify", action="store_true", help="status: skip sha256 verification")
    sy.add_argument("--json", help="status: also write the report as JSON to this file")
    sy.set_defaults(fn=_cmd_synth)

    run = sub.add_parser("run", help="the whole chain, phantoms to real-data evaluation")
    run.add_argument("--profile", default="embedded", choices=["embedded", "test"])
    run.add_argument("--name", default=None)
    run.add_argument("--out-root", default="runs")
    run.set_defaults(fn=_cmd_run)

    xp = sub.add_parser("experiment", help="run an evaluation protocol (resumable): "
                        "few-shot-sweep, substitution, generators, clip-medfake, ratio")
    xp.add_argument("name", choices=["few-shot-sweep", "substitution", "generators",
                                     "clip-medfake", "ratio"])
    xp.add_argument("--config", help="JSON config (keys: ExperimentConfig fields; "
                    "see docs/evaluation.md); default: the profile's")
    xp.add_argument("--out", help="experiment dir (default runs/experiments/NAME)")
    xp.add_argument("--profile", default="default", choices=["default", "test"],
                    help="base sizes the config overrides (test: tiny, seconds per protocol)")
    xp.set_defaults(fn=_cmd_experiment)
    rp = sub.add_parser("report", help="self-contained HTML + Markdown report of an "
                        "experiment or run dir")
    rp.add_argument("run_dir")
    rp.set_defaults(fn=_cmd_report)

    ex = sub.add_parser("export", help="export models (ONNX, TensorRT engines, CLIP weights)"
                        ).add_subparsers(dest="sub", required=True)
    eo = ex.add_parser("onnx", help="UNet, VAE encoder/decoder, text encoder to validated ONNX")
    eo.add_argument("--model", required=True, help="diffusers SD 1.x/2.x model directory")
    eo.add_argument("--out", required=True)
    eo.add_argument("--opset", type=int, default=None, help="ONNX opset (default: per exporter)")
    eo.add_argument("--exporter", default="torchscript", choices=["torchscript", "dynamo"])
    eo.add_argument("--precision", default="fp32", choices=["fp32", "fp16"])
    eo.add_argument("--components", nargs="+", default=None,
                    choices=["text_encoder", "unet", "vae_encoder", "vae_decoder"])
    eo.set_defaults(fn=_cmd_export_onnx)
    et = ex.add_parser("tensorrt", help="TensorRT engines from an ONNX export (needs a GPU)")
    et.add_argument("--onnx", required=True, help="directory written by `medfake export onnx`")
    et.add_argument("--out", required=True)
    et.add_argument("--batch", default="1:8:16", help="images per call MIN:OPT:MAX")
    et.add_argument("--fp16", action="store_true")
    et.add_argument("--workspace-gb", type=float, default=4.0)
    et.set_defaults(fn=_cmd_export_tensorrt)
    ec = ex.add_parser("clip", help="CLIP checkpoint (DeepSpeed ZeRO or single-process) to a "
                       "plain open_clip state dict")
    ec.add_argument("ckpt", help="pretraining --out dir, its checkpoints/ dir or one step dir")
    ec.add_argument("--out", required=True, help=".safetensors (or .pt) file to write")
    ec.add_argument("--model", help="model name (default: from clip_config.json)")
    ec.add_argument("--tag", help="checkpoint tag (default: latest)")
    ec.set_defaults(fn=_cmd_export_clip)

    dr = sub.add_parser("doctor", help="what this machine can run, and which backend each stage uses")
    dr.set_defaults(fn=_cmd_doctor)

    ft = sub.add_parser("finetune", help="adapt a generator to the real images"
                        ).add_subparsers(dest="sub", required=True)
    db = ft.add_parser("dreambooth", help="DreamBooth: rare token per class, prior preservation, "
                       "full or LoRA (resumable)")
    db.add_argument("--base", required=True, help="base diffusers SD dir (text-to-image or inpaint)")
    db.add_argument("--real", required=True, help="real dataset (train split, class names, templates)")
    db.add_argument("--out", required=True)
    db.add_argument("--profile", default="default", choices=["default", "sd15"],
                    help="sd15: the paper's recipe for a real SD 1.5 on a GPU")
    db.add_argument("--k", type=int, help="real images per class (0: whole split; default 5)")
    db.add_argument("--kshot-seed", type=int)
    db.add_argument("--tokens", nargs="+", help="one rare identifier per class (default sks ohwx phol)")
    db.add_argument("--instance-format", help='instance prompt, default "{prompt} {token}"')
    db.add_argument("--class-images", type=int, help="prior-preservation images per class")
    db.add_argument("--prior-weight", type=float, help="prior-preservation loss weight")
    db.add_argument("--no-prior", action="store_true", help="disable prior preservation")
    db.add_argument("--steps", type=int)
    db.add_argument("--batch-size", type=int)
    db.add_argument("--lr", type=float)
    db.add_argument("--train-text-encoder", action="store_true")
    db.add_argument("--lora-rank", type=int, help="> 0: LoRA adapters of this rank (peft)")
    db.add_argument("--image-size", type=int)
    db.add_argument("--checkpoint-every", type=int)
    db.add_argument("--seed", type=int)
    db.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"])
    db.add_argument("--gradient-checkpointing", action="store_true")
    db.add_argument("--use-8bit-adam", action="store_true", help="bitsandbytes AdamW8bit (CUDA)")
    db.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    db.set_defaults(fn=_cmd_finetune_dreambooth)

    gan = sub.add_parser("gan", help="DCGAN / ACGAN baselines").add_subparsers(dest="sub",
                                                                               required=True)
    gt = gan.add_parser("train", help="DCGAN (one per class) or ACGAN (one model), resumable")
    gt.add_argument("--kind", required=True, choices=["dcgan", "acgan"])
    gt.add_argument("--real", required=True)
    gt.add_argument("--out", required=True)
    gt.add_argument("--profile", default="default", choices=["default", "test"])
    gt.add_argument("--size", type=int, help="32 or 64 (default 64)")
    gt.add_argument("--channels", type=int, choices=[1, 3], help="default: the dataset's")
    gt.add_argument("--k", type=int, help="real images per class (default 0: whole split)")
    gt.add_argument("--kshot-seed", type=int)
    gt.add_argument("--steps", type=int, help="optimisation steps per model")
    gt.add_argument("--batch-size", type=int)
    gt.add_argument("--lr-g", type=float)
    gt.add_argument("--lr-d", type=float)
    gt.add_argument("--checkpoint-every", type=int)
    gt.add_argument("--grid-every", type=int)
    gt.add_argument("--seed", type=int)
    gt.add_argument("--device")
    gt.set_defaults(fn=_cmd_gan_train)
    gs = gan.add_parser("sample", help="sample a trained GAN into shards (resumable)")
    gs.add_argument("--gan", required=True, help="directory written by `medfake gan train`")
    gs.add_argument("--real", required=True, help="real dataset (class names, prompt templates)")
    gs.add_argument("--out", required=True)
    gs.add_argument("--per-class", type=int, default=100)
    gs.add_argument("--seed", type=int, default=0)
    gs.add_argument("--size", type=int, default=0, help="output size (default: the dataset's)")
    gs.add_argument("--batch-size", type=int, default=64)
    gs.add_argument("--device", default="cpu")
    gs.set_defaults(fn=_cmd_gan_sample)

    ev = sub.add_parser("eval", help="sample quality and memorization audit of synthetic "
                        "images").add_subparsers(dest="sub", required=True)
    enc_help = "feature space: pixel[:SIZE], clip:PATH (CLIP dir or weights), torchscript:PATH"
    eq = ev.add_parser("quality", help="Frechet distance, precision/recall, 1-NN accuracy vs "
                       "real held-out images, overall and per class -> OUT/quality.json")
    em = ev.add_parser("memorization", help="nearest real training image of every synthetic "
                       "image -> OUT/memorization.json, _pairs.png, _hist.png")
    for e in (eq, em):
        e.add_argument("--real", required=True, help="real dataset dir")
        e.add_argument("--synthetic", required=True, help="synthetic dataset dir")
        e.add_argument("--synthetic-split", default="train")
        e.add_argument("--encoder", default="pixel", help=enc_help)
        e.add_argument("--trust-pickle", action="store_true",
                       help="allow a pickled CLIP weights file (torch.load weights_only=True)")
        e.add_argument("--out", required=True)
    eq.add_argument("--split", default="test", help="real split to compare with")
    eq.set_defaults(fn=_cmd_eval_quality)
    em.add_argument("--real-split", default="train", help="the generator's real training split")
    em.add_argument("--threshold", type=float,
                    help="flag distance (default: 1/3 of the median real-train leave-one-out "
                    "nearest-neighbour distance; 1/9 for cosine)")
    em.add_argument("--max-pairs", type=int, default=16, help="pairs in memorization_pairs.png")
    em.set_defaults(fn=_cmd_eval_memorization)

    be = sub.add_parser("bench", help="run the benchmark suite, write bench/RESULTS.md")
    be.add_argument("args", nargs=argparse.REMAINDER)
    be.set_defaults(fn=_cmd_bench)
    return p


def _drop_local_rank(argv: list[str]) -> list[str]:
    """The `deepspeed` launcher appends --local_rank=N (also exported as LOCAL_RANK): drop it."""
    out, skip = [], False
    for tok in argv:
        if skip:
            skip = False
        elif tok in ("--local_rank", "--local-rank"):
            skip = True
        elif not tok.startswith(("--local_rank=", "--local-rank=")):
            out.append(tok)
    return out


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(_drop_local_rank(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from ..engine.core.capabilities import CapabilityError
    from ..engine.data.format import DatasetError
    try:
        args.fn(args)
    except (DatasetError, ValueError, FileNotFoundError, CapabilityError) as e:
        print(f"medfake: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
