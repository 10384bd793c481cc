"""CLIP jobs: contrastive pretraining on streamed shards, few-shot fine-tuning, evaluation.

One command from this 2-core box to GPU nodes: without a launcher, a single process trains
with plain PyTorch (``TorchEngine``); with ``--deepspeed``/``--zero``/``--ds-config``, or when
started by ``torchrun``, ``deepspeed`` or ``srun``, every rank trains through DeepSpeed ZeRO
(gloo on CPU, NCCL on GPU) and the contrastive loss gathers features across ranks with
gradients (open_clip's ``ClipLoss(local_loss=True, gather_with_grad=True)``).

Pretraining output directory (``pretrain_clip``)::

    clip_config.json       model name, settings, launch shape, finished flag
    checkpoints/latest     name of the last complete checkpoint
    checkpoints/stepNNNNNNNN/
        torch_state.pt | DeepSpeed files (mp_rank_*_model_states.pt, *optim_states.pt)
        medfake_rank{r}.pt data position and RNG states of rank r
    model.safetensors      final fp32 weights; loads into open_clip.create_model(name) strictly
    train_log.jsonl        loss, lr, samples/s (total, per rank), data-stall fraction
    tensorboard/           the same scalars for TensorBoard

A checkpoint is written every ``checkpoint_every`` steps; running the same command again after
a kill resumes from ``latest`` exactly (weights, optimizer, schedule, data position, RNG), so
the result equals an uninterrupted run. Resuming needs the same launch shape (ranks, workers,
batch) and training settings; anything else is refused with the differing keys named.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable, Sequence

import open_clip
import torch
from torch import nn

from ..engine.clip.data import (
    AUGMENTS,
    ArrayBatches,
    StreamConfig,
    StreamPosition,
    load_sources,
    steps_per_epoch,
    stream_loader,
)
from ..engine.clip.engine import (
    CheckpointDir,
    EngineConfig,
    build_engine,
    clip_logits_scale,
    cosine_with_warmup,
    param_groups,
    to_stock_state_dict,
)
from ..engine.clip.loop import resume_checkpoint, train_loop
from ..engine.clip.model import create_clip, image_stats
from ..engine.core import distributed as D
from ..engine.core.atomic import atomic_write_bytes
from ..engine.core.safe_load import save_weights
from ..engine.core.seeding import derive_seed, seed_everything
from ..engine.data.format import SplitArrays
from ..engine.data.kshot import kshot_subset
from ..engine.data.reader import DatasetInfo
from ..engine.evaluation.clip_classify import (
    ClipClassifier,
    ZeroShotClassifier,
    class_prompts,
    evaluate_classifier,
    predict_proba,
    zero_shot_weights,
)
from ..engine.training.telemetry import Telemetry
from .configs.train_clip import FT_MODES, ClipTrainConfig

log = logging.getLogger(__name__)

__all__ = ["ClipTrainConfig", "pretrain_clip", "finetune_classifier",
           "evaluate_classifier", "zero_shot_eval", "kshot_subset", "fewshot_runs",
           "fewshot_summary", "ClipClassifier", "zero_shot_weights", "class_prompts",
           "predict_proba", "cosine_with_warmup", "param_groups"]

CONFIG_NAME, WEIGHTS_NAME, CKPT_DIR = "clip_config.json", "model.safetensors", "checkpoints"
# settings that change the training trajectory: a resume must not change them
_RESUME_KEYS = ("model", "split", "steps", "epochs", "batch_size", "grad_accum", "lr",
                "weight_decay", "grad_clip", "warmup", "seed", "shuffle_buffer", "workers",
                "resampled", "augment", "precision")


def _validate(cfg: ClipTrainConfig) -> None:
    if cfg.augment not in AUGMENTS or cfg.ft_augment not in AUGMENTS:
        raise ValueError(f"unknown augmentation {cfg.augment!r}/{cfg.ft_augment!r}; choose "
                         f"one of {AUGMENTS}")
    if cfg.ft_mode not in FT_MODES:
        raise ValueError(f"unknown --finetune-mode {cfg.ft_mode!r}; choose one of {FT_MODES}")
    if cfg.batch_size < 1 or cfg.ft_batch < 1 or cfg.grad_accum < 1:
        raise ValueError("batch sizes and --grad-accum must be at least 1")
    if cfg.checkpoint_every < 1:
        raise ValueError("--checkpoint-every must be at least 1")
    if cfg.resume not in ("auto", "require", "never"):
        raise ValueError(f"--resume {cfg.resume!r}: choose auto, require or never")


def use_deepspeed(cfg: ClipTrainConfig, env: D.DistEnv) -> bool:
    """DeepSpeed when asked for, or when a launcher started several ranks."""
    return cfg.deepspeed or cfg.zero is not None or bool(cfg.ds_config) or env.is_distributed


def _session(cfg: ClipTrainConfig) -> tuple[D.DistEnv, str, torch.device]:
    """Detect the launcher, start the process group if needed; (env, backend, device)."""
    env = D.detect_env()
    backend = "deepspeed" if use_deepspeed(cfg, env) else "torch"
    if backend == "deepspeed":
        D.init_process_group(env)
        D.prepare_deepspeed_comm()
    return env, backend, D.device_for(env)


def _engine_config(cfg: ClipTrainConfig, backend: str, total: int) -> EngineConfig:
    return EngineConfig(backend=backend, zero_stage=cfg.zero, ds_config=cfg.ds_config,
                        precision=cfg.precision, micro_batch=cfg.batch_size,
                        grad_accum=cfg.grad_accum, grad_clip=cfg.grad_clip, lr=cfg.lr,
                        weight_decay=cfg.weight_decay, warmup=cfg.warmup, total_steps=total)


# ----------------------------------------------------------------------------- pretraining

def _run_settings(cfg: ClipTrainConfig, backend: str, world: int, sources: list) -> dict:
    return {**{k: getattr(cfg, k) for k in _RESUME_KEYS}, "backend": backend,
            "world_size": world, "sources": [[s.name, s.weight, len(s.urls)] for s in sources],
            "zero": cfg.zero, "ds_config": cfg.ds_config}


def _check_resumable(out: Path, settings: dict) -> None:
    f = out / CONFIG_NAME
    old = json.loads(f.read_text()).get("settings") if f.is_file() else None
    if old is None:
        return
    old["sources"] = [list(s) for s in old.get("sources", [])]
    diff = {k: (old.get(k), v) for k, v in settings.items()
            if json.loads(json.dumps(v)) != old.get(k)}
    if diff:
        raise ValueError(f"{out} holds a run with other settings ("
                         + ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
                         + "); resume with the same command or use another --out")


def _finished(out: Path, cfg: ClipTrainConfig, sources: list) -> bool:
    f = out / CONFIG_NAME
    if not (out / WEIGHTS_NAME).is_file() or not f.is_file():
        return False
    meta = json.loads(f.read_text())
    old = meta.get("settings") or {}
    if not meta.get("finished"):
        return False
    ours = {**{k: getattr(cfg, k) for k in _RESUME_KEYS},
            "sources": [[s.name, s.weight, len(s.urls)] for s in sources]}
    if any(old.get(k) != json.loads(json.dumps(v)) for k, v in ours.items()):
        raise ValueError(f"{out} holds a finished {old.get('model')} run with other settings; "
                         f"use another --out or delete it")
    return True


def _write_config(out: Path, cfg: ClipTrainConfig, settings: dict, step: int, total: int,
                  finished: bool) -> None:
    atomic_write_bytes(out / CONFIG_NAME, json.dumps(
        {"model": cfg.model, "step": step, "total_steps": total, "finished": finished,
         "settings": settings, "config": asdict(cfg)}, indent=1, default=str).encode())


def pretrain_clip(shard_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                  cfg: ClipTrainConfig,
                  on_step: Callable[[int, float], None] | None = None) -> Path:
    """Contrastively train ``cfg.model`` from scratch on image-caption shards; return the path
    of ``model.safetensors`` (on every rank).

    ``shard_dirs`` form one source; ``cfg.mix`` adds weighted sources (``DIR:WEIGHT``).
    Resumes from ``out_dir/checkpoints/latest`` and returns at once if the run finished.
    ``on_step(step, loss)`` is called after each optimizer step (1-based), after any
    checkpoint of that step.
    """
    _validate(cfg)
    out = Path(out_dir)
    final = out / WEIGHTS_NAME
    sources = load_sources(shard_dirs, cfg.mix, cfg.split)
    if _finished(out, cfg, sources):
        if cfg.resume == "never":
            raise ValueError(f"{out} holds a finished run; use another --out or delete it")
        log.info("%s already trained", out)
        return final
    env, backend, device = _session(cfg)
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
    D.barrier()
    spe = steps_per_epoch(sources, cfg.batch_size * cfg.grad_accum * env.world_size)
    total = cfg.epochs * spe if cfg.epochs > 0 else cfg.steps
    settings = _run_settings(cfg, backend, env.world_size, sources)
    ckpt = CheckpointDir(out / CKPT_DIR)
    if ckpt.latest() is not None:
        if cfg.resume == "never":
            raise ValueError(f"{out} holds a run ({ckpt.latest()}); use another --out, delete "
                             f"it, or drop --resume never to continue it")
        _check_resumable(out, settings)
    elif cfg.resume == "require":
        raise FileNotFoundError(f"--resume require: {out} has no checkpoint to resume from")
    seed_everything(cfg.seed)
    model, _, _, tokenizer = create_clip(cfg.model, device=device)
    stock_shapes = {k: v.shape for k, v in model.state_dict().items()}
    stats = image_stats(model)
    engine = build_engine(model, _engine_config(cfg, backend, total), device, env.world_size)
    start, data = resume_checkpoint(engine, ckpt)
    if env.is_main:
        _write_config(out, cfg, settings, start, total, False)
    position = (StreamPosition.from_state_dict(data) if data
                else StreamPosition(max(1, cfg.workers)))
    stream_cfg = StreamConfig(batch_size=cfg.batch_size, seed=cfg.seed,
                              shuffle_buffer=cfg.shuffle_buffer, workers=cfg.workers,
                              resampled=cfg.resampled, augment=cfg.augment)
    batches = stream_loader(sources, stream_cfg, stats, tokenizer, env.rank, env.world_size,
                            position) if start < total else iter(())
    dist = env.world_size > 1
    loss_fn = open_clip.ClipLoss(local_loss=dist, gather_with_grad=dist, cache_labels=True,
                                 rank=env.rank, world_size=env.world_size)

    def loss_of(batch: tuple[torch.Tensor, torch.Tensor, dict]) -> torch.Tensor:
        images, tokens, info = batch
        position.update(info)
        o = engine.forward(images.to(device, engine.input_dtype), tokens.to(device))
        return loss_fn(o["image_features"].float(), o["text_features"].float(),
                       clip_logits_scale(o["logit_scale"].float()))

    log.info("pretraining %s on %s for steps %d..%d (batch %d x %d ranks x %d accum, %s%s, %s)",
             cfg.model, " + ".join(f"{s.name}({len(s.urls)} shards, w={s.weight:g})"
                                   for s in sources), start, total, cfg.batch_size,
             env.world_size, cfg.grad_accum, backend,
             f" ZeRO-{getattr(engine, 'zero_stage', '')}" if backend == "deepspeed" else "",
             cfg.precision)
    telemetry = Telemetry(out, total, start, f"pretrain {cfg.model}", env.is_main,
                          cfg.batch_size * cfg.grad_accum, cfg.log_every, spe, cfg.tensorboard)
    t0 = time.time()
    try:
        train_loop(engine, batches, loss_of, start=start, total=total, accum=cfg.grad_accum,
                   telemetry=telemetry, ckpt=ckpt, checkpoint_every=cfg.checkpoint_every,
                   keep=cfg.keep_checkpoints, data_state=position.state_dict,
                   skipped=lambda: sum(position.skipped().values()), on_step=on_step)
    finally:
        telemetry.close()
        del batches  # stops DataLoader workers
    skipped = position.skipped()
    if skipped:
        log.warning("rank %d skipped %d bad sample(s): %s", env.rank, sum(skipped.values()),
                    skipped)
    sd = engine.full_state_dict()  # collective
    if env.is_main:
        save_weights(to_stock_state_dict(sd, stock_shapes), final)
        _write_config(out, cfg, settings, total, total, True)
        log.info("pretraining done in %.1f s -> %s", time.time() - t0, final)
    D.barrier()
    return final


# ----------------------------------------------------------------------------- fine-tuning

def _model_name_for(init: str | os.PathLike, default: str) -> str:
    p = Path(init)
    cfg_file = (p if p.is_dir() else p.parent) / CONFIG_NAME
    return json.loads(cfg_file.read_text())["model"] if cfg_file.exists() else default


def _weights_path(init: str | os.PathLike) -> Path:
    """A weights file, or a pretraining output directory (its ``model.safetensors``)."""
    p = Path(init)
    if p.is_dir():
        if not (p / WEIGHTS_NAME).is_file():
            raise FileNotFoundError(f"{p} has no {WEIGHTS_NAME}: pretraining did not finish "
                                    f"(re-run it) or export a checkpoint with "
                                    f"`medfake export clip`")
        return p / WEIGHTS_NAME
    return p


def apply_freeze(model: nn.Module, specs: Sequence[str]) -> None:
    """``image[:N]``: lock the image tower except its last N layer groups (open_clip's
    ``lock_image_tower``); ``text[:N]``: lock the text tower except its last N layers."""
    for spec in specs:
        tower, _, n = spec.partition(":")
        try:
            unlocked = int(n) if n else 0
        except ValueError:
            raise ValueError(f"--freeze {spec!r}: the part after ':' must be an integer") from None
        if tower == "image":
            visual = model.visual
            visual.lock(unlocked_groups=unlocked)
        elif tower == "text":
            if not hasattr(model, "lock_text_tower"):
                raise ValueError("--freeze text needs --finetune-mode contrastive (the "
                                 "classifier modes train no text tower)")
            model.lock_text_tower(unlocked_layers=unlocked)
        else:
            raise ValueError(f"--freeze {spec!r}: use image[:N] or text[:N]")


def _finetune_model(clip: nn.Module, tokenizer: Callable, class_names: Sequence[str],
                    prompt_templates: dict[str, list[str]] | Sequence[str],
                    cfg: ClipTrainConfig) -> nn.Module:
    if cfg.ft_mode == "contrastive":
        apply_freeze(clip, cfg.ft_freeze)
        return clip
    head = (zero_shot_weights(clip, tokenizer, class_names, prompt_templates)
            if cfg.ft_mode == "zeroshot-head" else None)
    model = ClipClassifier(clip, head, float(clip.logit_scale.detach().exp()), len(class_names))
    if cfg.ft_mode == "linear-probe":
        model.visual.lock(unlocked_groups=0)
    apply_freeze(model, cfg.ft_freeze)
    return model


def finetune_classifier(init: str | os.PathLike | None, train: SplitArrays,
                        class_names: Sequence[str],
                        prompt_templates: dict[str, list[str]] | Sequence[str],
                        cfg: ClipTrainConfig) -> nn.Module:
    """Fine-tune on the (few) labelled images of ``train`` for ``cfg.ft_steps`` steps and
    return a classifier (eval mode) mapping normalised images to class logits.

    ``init``: pretraining weights (``model.safetensors`` or its directory; the model name is
    read from ``clip_config.json`` beside it, else ``cfg.model``) or None for a random init
    from ``cfg.seed``. ``cfg.ft_mode``: ``zeroshot-head`` (image tower + a head initialised
    from the text tower's class-prompt embeddings), ``linear-probe`` (frozen image tower,
    random head) or ``contrastive`` (image-prompt contrastive training; classifies zero-shot
    with the tuned text tower). ``cfg.ft_freeze`` locks tower layers. Batches are drawn with
    replacement and augmented with ``cfg.ft_augment``. Under a launcher every rank trains
    (DeepSpeed) and the returned model is the consolidated one.
    """
    _validate(cfg)
    weights = _weights_path(init) if init is not None else None
    name = _model_name_for(init, cfg.model) if init is not None else cfg.model
    env, backend, device = _session(cfg)
    seed_everything(cfg.seed)
    clip, _, _, tokenizer = create_clip(name, weights=weights)
    model = _finetune_model(clip, tokenizer, class_names, prompt_templates, cfg)
    stock_shapes = {k: v.shape for k, v in model.state_dict().items()}
    contrastive = cfg.ft_mode == "contrastive"
    batches = ArrayBatches(train.images, train.labels, cfg.ft_batch, image_stats(model),
                           cfg.ft_augment, seed=derive_seed(cfg.seed, "finetune") % (1 << 63),
                           rank=env.rank,
                           captions=class_prompts(class_names, prompt_templates)
                           if contrastive else None, tokenizer=tokenizer)
    ecfg = EngineConfig(backend=backend, zero_stage=cfg.zero, ds_config=cfg.ds_config,
                        precision=cfg.precision, micro_batch=cfg.ft_batch, grad_accum=1,
                        grad_clip=0.0, lr=cfg.ft_lr, weight_decay=cfg.ft_weight_decay,
                        betas=(0.9, 0.999), eps=1e-8, warmup=max(1, cfg.ft_steps // 10),
                        total_steps=cfg.ft_steps)
    engine = build_engine(model, ecfg, device, env.world_size)
    dist = env.world_size > 1
    loss_fn = open_clip.ClipLoss(local_loss=dist, gather_with_grad=dist, rank=env.rank,
                                 world_size=env.world_size)

    def loss_of(batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]) -> torch.Tensor:
        x, y, tokens = batch
        x = x.to(device, engine.input_dtype)
        if contrastive:
            o = engine.forward(x, tokens.to(device))
            return loss_fn(o["image_features"].float(), o["text_features"].float(),
                           clip_logits_scale(o["logit_scale"].float()))
        return nn.functional.cross_entropy(engine.forward(x).float(), y.to(device))

    engine.module.train()
    telemetry = Telemetry(None, cfg.ft_steps, 0, "finetune", env.is_main, cfg.ft_batch,
                          log_every=max(1, cfg.ft_steps), progress=True)
    try:
        train_loop(engine, batches, loss_of, start=0, total=cfg.ft_steps, accum=1,
                   telemetry=telemetry)
    finally:
        telemetry.close()
    if backend == "deepspeed":  # consolidate into a plain model (ZeRO-3 keeps shards only)
        sd = engine.full_state_dict()
        clip, _, _, tokenizer = create_clip(name)
        model = _finetune_model(clip, tokenizer, class_names, prompt_templates,
                                replace(cfg, ft_freeze=()))
        model.load_state_dict(to_stock_state_dict(sd, stock_shapes), strict=True)
    model = model.cpu().eval()
    if contrastive:
        return ZeroShotClassifier(model, zero_shot_weights(model, tokenizer, class_names,
                                                           prompt_templates)).eval()
    return model


# ----------------------------------------------------------------------------- evaluation

def zero_shot_eval(ckpt: str | os.PathLike, test: SplitArrays, class_names: Sequence[str],
                   prompt_templates: dict[str, list[str]] | Sequence[str],
                   model_name: str | None = None) -> dict:
    """Zero-shot metrics of pretraining weights (file or output directory) on ``test``.

    The model name comes from ``model_name`` or the ``clip_config.json`` beside the weights.
    """
    name = model_name or _model_name_for(ckpt, "")
    if not name:
        raise ValueError(f"no {CONFIG_NAME} next to {ckpt}; pass model_name")
    clip, _, _, tokenizer = create_clip(name, weights=_weights_path(ckpt))
    zs = ZeroShotClassifier(clip, zero_shot_weights(clip, tokenizer, class_names,
                                                    prompt_templates))
    return evaluate_classifier(zs, test, class_names)




def fewshot_runs(init: str | None, data_dir: str, k: int, seeds: Sequence[int],
                 cfg: ClipTrainConfig) -> list[dict]:
    """Fine-tune on k real images per class of ``data_dir`` train and evaluate on its test
    split (metrics at the top level) and val split (``"val"``, when present), once per seed
    (the seed picks the k-shot subset and the initialisation). Under a launcher all ranks
    train and rank 0 evaluates; other ranks return an empty list."""
    from ..engine.data.reader import load_split
    info = DatasetInfo.load(data_dir)
    train, test = load_split(data_dir, "train"), load_split(data_dir, "test")
    val = load_split(data_dir, "val") if "val" in info.splits else None
    results = []
    for seed in seeds:
        t0 = time.time()
        model = finetune_classifier(init, kshot_subset(train, k, seed), info.class_names,
                                    info.prompt_templates, replace(cfg, seed=seed))
        if D.rank() != 0:
            continue
        m = evaluate_classifier(model, test, info.class_names, seed=seed)
        if val is not None:
            m["val"] = evaluate_classifier(model, val, info.class_names, seed=seed)
        m.update(seed=seed, k=k, init=init, mode=cfg.ft_mode,
                 seconds=round(time.time() - t0, 1))
        log.info("k=%d seed=%d init=%s %s: test accuracy %.3f macro_auc %.3f (%.0f s)", k, seed,
                 init, cfg.ft_mode, m["accuracy"], m["macro_auc"], m["seconds"])
        results.append(m)
    return results


def fewshot_summary(init: str | None, data_dir: str, k: int, seeds: Sequence[int],
                    cfg: ClipTrainConfig, zero_shot: bool = True) -> dict:
    """``fewshot_runs`` plus mean/std over seeds and, when ``init`` is given and ``zero_shot``,
    zero-shot metrics of ``init`` on the test and val splits (what ``medfake train clip
    --stage finetune`` prints). Empty on ranks other than 0."""
    from ..engine.data.reader import load_split
    from ..engine.evaluation.metrics import mean_std
    res = fewshot_runs(init, data_dir, k, seeds, cfg)
    if D.rank() != 0:
        return {}
    summary = {key: mean_std([r[key] for r in res]) for key in
               ("accuracy", "balanced_accuracy", "macro_auc", "seconds")}
    if all("val" in r for r in res):
        summary["val_accuracy"] = mean_std([r["val"]["accuracy"] for r in res])
    out = {"init": init, "k": k, "config": asdict(cfg), "summary": summary, "runs": res}
    if zero_shot and init:
        info = DatasetInfo.load(data_dir)
        out["zero_shot"] = zero_shot_eval(init, load_split(data_dir, "test"), info.class_names,
                                          info.prompt_templates)
        if "val" in info.splits:
            out["zero_shot_val"] = zero_shot_eval(init, load_split(data_dir, "val"),
                                                  info.class_names, info.prompt_templates)
    return out
