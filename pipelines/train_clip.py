"""CLIP jobs: contrastive pretraining on captioned shards, few-shot fine-tuning, evaluation.

Single process, CPU. The optimisation step (``clip_train_step``) is a separate function taking
the model, loss and optimiser, so a DeepSpeed engine can replace it later without touching the
data or checkpoint code.

Pretraining output directory (``pretrain_clip``)::

    clip_config.json   {"model": name, "config": ClipTrainConfig, "step": n}
    checkpoint.pt      resume state: model, optimiser, scheduler, step, RNG (atomic rewrite)
    model.pt           final plain state dict; loads into open_clip.create_model(name) strictly
"""
from __future__ import annotations

import io
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import open_clip
import torch
import webdataset as wds
from PIL import Image
from torch import nn
from tqdm import tqdm

from ..engine.classifiers import augmentation
from ..engine.clip_model import create_clip, images_to_tensor
from ..engine.dataset import DatasetInfo, SplitArrays
from ..engine.metrics import bootstrap_ci, classification_metrics
from ..engine.seeding import derive_seed, seed_everything

log = logging.getLogger(__name__)

CONFIG_NAME, CKPT_NAME, MODEL_NAME = "clip_config.json", "checkpoint.pt", "model.pt"


@dataclass
class ClipTrainConfig:
    """Hyper-parameters of pretraining (``steps`` ...) and fine-tuning (``ft_*``)."""

    model: str = "medfake-tiny"
    split: str = "train"             # split of each shard dir used for pretraining
    steps: int = 200
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 0.1
    grad_clip: float = 1.0           # max global grad norm (0 disables)
    warmup: int = 50
    seed: int = 0
    shuffle_buffer: int = 2000       # samples; must exceed n_classes x shard size if shards are class-pure
    workers: int = 1                 # DataLoader workers (capped at the number of shards)
    checkpoint_every: int = 100
    ft_steps: int = 150
    ft_batch: int = 32
    ft_lr: float = 3e-4
    ft_weight_decay: float = 0.05
    ft_augment: bool = True

    @classmethod
    def profile(cls, name: str, **overrides) -> "ClipTrainConfig":
        """Profile ``default`` (alias ``embedded``) or ``test``, with fields overridden."""
        return get_profile(name, **overrides)


PROFILES: dict[str, ClipTrainConfig] = {
    "default": ClipTrainConfig(),
    "embedded": ClipTrainConfig(),
    "test": ClipTrainConfig(model="medfake-micro", steps=6, batch_size=8, warmup=2,
                            shuffle_buffer=16, workers=0, checkpoint_every=3, ft_steps=10,
                            ft_batch=8),
}


def get_profile(name: str = "default", **overrides) -> ClipTrainConfig:
    """A copy of profile ``name`` with ``overrides`` applied (unknown keys raise TypeError)."""
    if name not in PROFILES:
        raise ValueError(f"unknown CLIP profile {name!r}; choose one of {sorted(PROFILES)}")
    return replace(PROFILES[name], **overrides)


def cosine_with_warmup(warmup: int, total: int) -> Callable[[int], float]:
    """LR multiplier: linear warmup over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
    return f


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """open_clip_train's rule: no weight decay on gains, biases, norms and ``logit_scale``."""
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n
        (no_decay if skip else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0},
            {"params": decay, "weight_decay": weight_decay}]


# ----------------------------------------------------------------------------- data

def shard_urls(shard_dirs: Sequence[str | os.PathLike], split: str) -> list[str]:
    """All shard paths of ``split`` over the dataset dirs (validated through dataset.json)."""
    urls = [u for d in shard_dirs for u in DatasetInfo.load(d).shard_paths(split)]
    if not urls:
        raise ValueError(f"no {split!r} shards in {list(map(str, shard_dirs))}")
    return urls


class _Decode:
    """png -> grayscale PIL -> preprocess (3-channel tensor); txt -> token ids. Picklable."""

    def __init__(self, preprocess: Callable, tokenizer: Callable):
        self.preprocess, self.tokenizer = preprocess, tokenizer

    def __call__(self, sample: dict) -> tuple[torch.Tensor, torch.Tensor]:
        with Image.open(io.BytesIO(sample["png"])) as im:
            img = self.preprocess(im.convert("L"))
        return img, self.tokenizer([sample["txt"].decode("utf-8")])[0]


def clip_batches(urls: list[str], cfg: ClipTrainConfig, preprocess: Callable, tokenizer: Callable,
                 seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless stream of (images (B,3,S,S), tokens (B,L)) batches.

    Shards are split by node and worker, shuffled per epoch (deterministically from ``seed``),
    and samples pass a ``cfg.shuffle_buffer`` shuffle buffer that is filled completely before
    the first sample leaves it: shards written class by class (one class per shard) then still
    give mixed batches as long as the buffer spans a shard of every class. Workers are capped at
    the shard count (a worker without shards would find no samples).
    """
    ds = wds.WebDataset(urls, shardshuffle=len(urls), detshuffle=True, seed=seed,
                        nodesplitter=wds.split_by_node, workersplitter=wds.split_by_worker)
    if cfg.shuffle_buffer > 1:
        ds.append(wds.detshuffle(cfg.shuffle_buffer, initial=cfg.shuffle_buffer, seed=seed))
    ds = ds.map(_Decode(preprocess, tokenizer)).batched(cfg.batch_size, partial=False).repeat()
    workers = min(cfg.workers, len(urls))
    loader = wds.WebLoader(ds, batch_size=None, num_workers=workers,
                           persistent_workers=workers > 0)
    for images, tokens in loader:
        yield images, tokens


# ----------------------------------------------------------------------------- pretraining

def clip_train_step(model: nn.Module, loss_fn: nn.Module, optimizer: torch.optim.Optimizer,
                    images: torch.Tensor, tokens: torch.Tensor, grad_clip: float = 0.0) -> float:
    """One contrastive step (forward, loss, backward, clip, optimiser step); returns the loss."""
    model.train()
    out = model(images, tokens)
    loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    with torch.no_grad():  # as open_clip_train: keep the temperature in [1, 100]
        model.logit_scale.clamp_(0, math.log(100))
    return float(loss.item())


def _atomic_save(obj: object, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _write_config(out: Path, cfg: ClipTrainConfig, step: int, extra: dict | None = None) -> None:
    tmp = out / f".{CONFIG_NAME}.tmp"
    tmp.write_text(json.dumps({"model": cfg.model, "step": step, "config": asdict(cfg),
                               **(extra or {})}, indent=1))
    os.replace(tmp, out / CONFIG_NAME)


def pretrain_clip(shard_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                  cfg: ClipTrainConfig,
                  on_step: Callable[[int, float], None] | None = None) -> Path:
    """Contrastively train ``cfg.model`` from scratch on the image-caption shards; return model.pt.

    Resumable: every ``cfg.checkpoint_every`` steps the full state is written atomically to
    ``checkpoint.pt``; calling again with the same ``out_dir`` continues from it (after a kill)
    and returns at once if training already finished. After a resume the data stream is
    reseeded from the resume step, so no batch order is replayed (it is not the identical stream
    an uninterrupted run would have seen). ``on_step(step, loss)`` is called after each step
    (1-based). Raises ValueError if ``out_dir`` holds a run of a different model.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    model, preprocess_train, _, tokenizer = create_clip(cfg.model)  # seeded init
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr,
                                  betas=(0.9, 0.98), eps=1e-6)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer,
                                                  cosine_with_warmup(cfg.warmup, cfg.steps))
    step = 0
    ckpt_path = out / CKPT_NAME
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if state["model_name"] != cfg.model:
            raise ValueError(f"{out} holds a {state['model_name']} run, not {cfg.model}; "
                             f"use another --out or delete it.")
        model.load_state_dict(state["model"], strict=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        step = int(state["step"])
        log.info("resuming %s from step %d", out, step)
    final = out / MODEL_NAME
    if step >= cfg.steps and final.exists():
        log.info("%s already trained (%d steps)", out, step)
        return final

    def checkpoint(at: int) -> None:
        _atomic_save({"model_name": cfg.model, "step": at, "model": model.state_dict(),
                      "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                      "torch_rng": torch.get_rng_state()}, ckpt_path)
        _write_config(out, cfg, at)

    urls = shard_urls(shard_dirs, cfg.split)
    log.info("pretraining %s on %d shards for %d steps (batch %d)", cfg.model, len(urls),
             cfg.steps - step, cfg.batch_size)
    loss_fn = open_clip.ClipLoss()
    batches = clip_batches(urls, cfg, preprocess_train, tokenizer,
                           seed=derive_seed(cfg.seed, "clip-data", step) % (1 << 31))
    t0 = time.time()
    with tqdm(total=cfg.steps, initial=step, desc=f"pretrain {cfg.model}", unit="step") as bar:
        while step < cfg.steps:
            images, tokens = next(batches)
            loss = clip_train_step(model, loss_fn, optimizer, images, tokens, cfg.grad_clip)
            scheduler.step()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                checkpoint(step)
            if on_step is not None:
                on_step(step, loss)
    _atomic_save(model.state_dict(), final)
    log.info("pretraining done in %.1f s -> %s", time.time() - t0, final)
    return final


# ----------------------------------------------------------------------------- fine-tuning

def class_prompts(class_names: Sequence[str],
                  prompt_templates: dict[str, list[str]] | Sequence[str]) -> list[list[str]]:
    """Prompts per class: ``{class: [full prompts]}`` as in dataset.json, or templates with ``{}``."""
    if isinstance(prompt_templates, dict):
        return [list(prompt_templates[c]) for c in class_names]
    return [[t.format(c) for t in prompt_templates] for c in class_names]


@torch.no_grad()
def zero_shot_weights(model: nn.Module, tokenizer: Callable, class_names: Sequence[str],
                      prompt_templates: dict[str, list[str]] | Sequence[str]) -> torch.Tensor:
    """(C, D) unit-norm mean text embedding of each class's prompts."""
    model.eval()
    rows = []
    for prompts in class_prompts(class_names, prompt_templates):
        emb = nn.functional.normalize(model.encode_text(tokenizer(prompts)), dim=-1).mean(0)
        rows.append(nn.functional.normalize(emb, dim=-1))
    return torch.stack(rows)


class ClipClassifier(nn.Module):
    """CLIP image tower + linear head on L2-normalised features; input normalised (N,3,S,S).

    With ``head.weight = logit_scale * zero_shot_weights`` and zero bias it reproduces the
    zero-shot classifier exactly.
    """

    def __init__(self, clip: nn.Module, head_init: torch.Tensor, logit_scale: float):
        super().__init__()
        self.visual = clip.visual
        self.head = nn.Linear(head_init.shape[1], head_init.shape[0])
        with torch.no_grad():
            self.head.weight.copy_(head_init * logit_scale)
            self.head.bias.zero_()
        self.preprocess_cfg = dict(clip.visual.preprocess_cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(nn.functional.normalize(self.visual(x), dim=-1))


def _model_name_for(init: Path, default: str) -> str:
    cfg_file = Path(init).parent / CONFIG_NAME
    return json.loads(cfg_file.read_text())["model"] if cfg_file.exists() else default


def finetune_classifier(init: str | os.PathLike | None, train: SplitArrays,
                        class_names: Sequence[str],
                        prompt_templates: dict[str, list[str]] | Sequence[str],
                        cfg: ClipTrainConfig) -> ClipClassifier:
    """Fine-tune image tower + head on the (few) labelled real images for ``cfg.ft_steps`` steps.

    ``init``: a pretraining ``model.pt`` (model name read from its ``clip_config.json``, else
    ``cfg.model``) or None for the real-only arm (random init from ``cfg.seed``). In both arms
    the head starts as the zero-shot classifier of the (pretrained or random) text tower, and
    the step budget, batch, schedule and augmentation are identical. Batches are drawn with
    replacement; with ``cfg.ft_augment`` each image gets ``classifiers.augmentation()``.
    Returns the model in eval mode.
    """
    name = _model_name_for(Path(init), cfg.model) if init is not None else cfg.model
    seed_everything(cfg.seed)
    clip, _, _, tokenizer = create_clip(name, weights=init)
    head = zero_shot_weights(clip, tokenizer, class_names, prompt_templates)
    model = ClipClassifier(clip, head, clip.logit_scale.exp().item())
    del clip
    opt = torch.optim.AdamW(_param_groups(model, cfg.ft_weight_decay), lr=cfg.ft_lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, cosine_with_warmup(max(1, cfg.ft_steps // 10), cfg.ft_steps))
    rng = np.random.default_rng(derive_seed(cfg.seed, "finetune"))
    aug = augmentation(train.images.shape[1]) if cfg.ft_augment else None
    x_all = torch.from_numpy(np.ascontiguousarray(train.images))
    if x_all.ndim == 3:
        x_all = x_all.unsqueeze(1)  # uint8 (N,1,H,W) or (N,3,H,W) after permute below
    else:
        x_all = x_all.permute(0, 3, 1, 2)
    y_all = torch.as_tensor(train.labels, dtype=torch.long)
    model.train()
    for step in tqdm(range(cfg.ft_steps), desc="finetune", unit="step", leave=False):
        idx = torch.from_numpy(rng.integers(0, len(y_all), cfg.ft_batch))
        xb = x_all[idx]
        if aug is not None:
            xb = torch.stack([aug(img) for img in xb])
        xb = xb[:, 0] if xb.shape[1] == 1 else xb.permute(0, 2, 3, 1)
        logits = model(images_to_tensor(xb.numpy(), model))
        loss = nn.functional.cross_entropy(logits, y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


@torch.no_grad()
def predict_proba(model: nn.Module, images: np.ndarray, batch: int = 512) -> np.ndarray:
    """Softmax probabilities (N, C) of a ``ClipClassifier`` for uint8 images."""
    model.eval()
    return torch.cat([torch.softmax(model(images_to_tensor(images[i:i + batch], model)), 1)
                      for i in range(0, len(images), batch)]).numpy()


def evaluate_classifier(model: nn.Module, test: SplitArrays, class_names: Sequence[str],
                        n_bootstrap: int = 1000, seed: int = 0) -> dict:
    """``classification_metrics`` on ``test`` plus ``accuracy_ci95`` (percentile bootstrap)."""
    probs = predict_proba(model, test.images)
    m = classification_metrics(test.labels, probs, class_names)
    m["accuracy_ci95"] = list(bootstrap_ci(test.labels, probs, "accuracy", n=n_bootstrap,
                                           seed=seed))
    return m


class _ZeroShot(nn.Module):
    def __init__(self, clip: nn.Module, weights: torch.Tensor):
        super().__init__()
        self.clip, self.weights = clip, weights
        self.scale = clip.logit_scale.exp().item()
        self.visual = clip.visual  # images_to_tensor reads visual.preprocess_cfg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * nn.functional.normalize(self.clip.encode_image(x), dim=-1) @ self.weights.T


def zero_shot_eval(ckpt: str | os.PathLike, test: SplitArrays, class_names: Sequence[str],
                   prompt_templates: dict[str, list[str]] | Sequence[str],
                   model_name: str | None = None) -> dict:
    """Zero-shot metrics of a pretraining checkpoint (``model.pt``) on ``test``.

    The model name comes from ``model_name`` or the checkpoint's ``clip_config.json``.
    """
    name = model_name or _model_name_for(Path(ckpt), "")
    if not name:
        raise ValueError(f"no {CONFIG_NAME} next to {ckpt}; pass model_name")
    clip, _, _, tokenizer = create_clip(name, weights=ckpt)
    zs = _ZeroShot(clip, zero_shot_weights(clip, tokenizer, class_names, prompt_templates))
    return evaluate_classifier(zs, test, class_names)


# ----------------------------------------------------------------------------- few-shot runs

def kshot_subset(train: SplitArrays, k: int, seed: int) -> SplitArrays:
    """``k`` images per class without replacement; same subsets as ``pipelines.run``'s."""
    rng = np.random.default_rng(derive_seed("kshot", seed, k))
    idx = []
    for c in np.unique(train.labels):
        pool = np.flatnonzero(train.labels == c)
        if len(pool) < k:
            raise ValueError(f"class {c} has only {len(pool)} training images; k={k} is too many")
        idx.extend(rng.choice(pool, size=k, replace=False))
    return train.subset(idx)


def fewshot_runs(init: str | None, data_dir: str, k: int, seeds: Sequence[int],
                 cfg: ClipTrainConfig) -> list[dict]:
    """Fine-tune on k real images per class of ``data_dir`` train and evaluate on its test split,
    once per seed (the seed picks the k-shot subset and the initialisation)."""
    from ..engine.dataset import load_split
    info = DatasetInfo.load(data_dir)
    train, test = load_split(data_dir, "train"), load_split(data_dir, "test")
    results = []
    for seed in seeds:
        t0 = time.time()
        model = finetune_classifier(init, kshot_subset(train, k, seed), info.class_names,
                                    info.prompt_templates, replace(cfg, seed=seed))
        m = evaluate_classifier(model, test, info.class_names, seed=seed)
        m.update(seed=seed, k=k, init=init, seconds=round(time.time() - t0, 1))
        log.info("k=%d seed=%d init=%s accuracy %.3f macro_auc %.3f (%.0f s)", k, seed, init,
                 m["accuracy"], m["macro_auc"], m["seconds"])
        results.append(m)
    return results


def fewshot_summary(init: str | None, data_dir: str, k: int, seeds: Sequence[int],
                    cfg: ClipTrainConfig, zero_shot: bool = False) -> dict:
    """``fewshot_runs`` plus mean/std over seeds and, optionally, zero-shot metrics of ``init``
    (what ``medfake train clip --stage finetune`` prints)."""
    from ..engine.dataset import load_split
    from ..engine.metrics import mean_std
    res = fewshot_runs(init, data_dir, k, seeds, cfg)
    summary = {key: mean_std([r[key] for r in res]) for key in
               ("accuracy", "balanced_accuracy", "macro_auc", "seconds")}
    out = {"init": init, "k": k, "config": asdict(cfg), "summary": summary, "runs": res}
    if zero_shot and init:
        info = DatasetInfo.load(data_dir)
        out["zero_shot"] = zero_shot_eval(init, load_split(data_dir, "test"), info.class_names,
                                          info.prompt_templates)
    return out
