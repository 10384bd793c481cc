"""Train the embedded text-to-image generator (a tiny Stable Diffusion) on a captioned corpus.

Two stages on one process: (1) the VAE (reconstruction MSE + small KL, images in [-1, 1],
grayscale replicated to RGB), after which ``vae.config.scaling_factor`` is set to 1/std of the
latents; (2) the UNet, text-conditioned through the frozen randomly initialised text encoder,
with classifier-free-guidance dropout (empty caption with probability ``cfg_dropout``),
Min-SNR loss weighting and an EMA of its weights. The result is a stock diffusers SD dir.

Resume contract: a checkpoint (``out_dir/checkpoint.pt``, written atomically) holds models,
optimisers, EMA and step; every step's randomness is seeded from (seed, stage, step), so a
killed run re-started with the same call continues from the last checkpoint and ends with the
same weights as an uninterrupted run. ``out_dir/medfake_train.json`` with ``complete: true``
is written last and marks a finished model.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..engine.core.atomic import atomic_write_bytes, fsync_dir, is_disk_full
from ..engine.core.errors import DiskFullError
from ..engine.core.paths import cache_dir
from ..engine.core.safe_load import load_checkpoint
from ..engine.core.seeding import derive_seed
from ..engine.data.reader import DatasetInfo, load_split
from ..engine.diffusion.sd_model import build_components, preset_config, save_components
from ..engine.training.stop import TrainingStopped
from .configs.train_generator import GeneratorTrainConfig

log = logging.getLogger(__name__)
MARKER = "medfake_train.json"
CHECKPOINT = "checkpoint.pt"


def _load_corpus(corpus_dir: str | os.PathLike, size: int) -> tuple[torch.Tensor, list[str]]:
    """Corpus train split as float (N, 3, size, size) in [-1, 1] plus captions."""
    split = load_split(corpus_dir, "train", skip_bad=True)  # bad samples: counted, warned, skipped
    x = torch.from_numpy(split.images).float() / 127.5 - 1.0
    x = x.mean(-1) if x.ndim == 4 else x  # RGB corpora are reduced to grayscale
    x = x[:, None]
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True).clamp(-1, 1)
    return x.expand(-1, 3, -1, -1).contiguous(), split.captions


def _step_gen(cfg: GeneratorTrainConfig, stage: str, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(cfg.seed, stage, step))


def _maybe_flip(x: torch.Tensor, g: torch.Generator, on: bool) -> torch.Tensor:
    if not on:
        return x
    flip = torch.rand(x.shape[0], generator=g) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def _save_ckpt(out: Path, state: dict[str, Any]) -> None:
    """Write the resume checkpoint atomically (tmp + fsync + rename).

    On a full disk raise ``DiskFullError`` with the tmp file removed and the previous
    checkpoint untouched, so re-running after freeing space resumes from it.
    """
    final, tmp = out / CHECKPOINT, out / f".{CHECKPOINT}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:  # a Python file object: a full disk raises OSError(ENOSPC)
            torch.save({k: v for k, v in state.items() if k != "_budget"}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        fsync_dir(out)
    except OSError as e:
        if is_disk_full(e):
            prev = "the previous checkpoint is intact" if final.exists() else "no checkpoint yet"
            raise DiskFullError(
                f"disk full while writing the generator checkpoint in {out} (stage "
                f"{state.get('stage')}, step {state.get('step')}); {prev}. Free space and re-run "
                f"the same command to resume.") from e
        raise
    finally:
        tmp.unlink(missing_ok=True)


def _load_ckpt(out: Path) -> dict[str, Any]:
    """The resume checkpoint, read with ``torch.load(weights_only=True)`` (no code runs)."""
    return load_checkpoint(out / CHECKPOINT)


def _lr_lambda(warmup: int):
    return lambda step: min(1.0, (step + 1) / max(1, warmup))


def _train_vae(vae, x: torch.Tensor, cfg: GeneratorTrainConfig, out: Path, state: dict) -> None:
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0, foreach=True)
    if state.get("vae_opt"):
        opt.load_state_dict(state["vae_opt"])
    vae.train()
    start = state["step"] if state["stage"] == "vae" else 0
    bar = tqdm(range(start, cfg.vae_steps), initial=start, total=cfg.vae_steps, desc="vae",
               mininterval=2.0)
    for step in bar:
        g = _step_gen(cfg, "vae", step)
        batch = _maybe_flip(x[torch.randint(len(x), (cfg.vae_batch,), generator=g)], g, cfg.hflip)
        post = vae.encode(batch).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)
        rec = vae.decode(z).sample
        mse = F.mse_loss(rec, batch)
        kl = 0.5 * (post.mean.pow(2) + post.var - 1.0 - post.logvar).mean()
        loss = mse + cfg.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        state["losses"]["vae"].append(mse.item())
        bar.set_postfix(mse=f"{mse.item():.4f}", kl=f"{kl.item():.2f}", refresh=False)
        if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.vae_steps:
            _save_ckpt(out, {**state, "stage": "vae", "step": step + 1,
                             "vae": vae.state_dict(), "vae_opt": opt.state_dict()})
        _check_stop(state)
    vae.eval()


@torch.no_grad()
def _encode_all(vae, x: torch.Tensor, hflip: bool) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Posterior (mean, std) of every image (and its mirror), and the reconstruction MSE."""
    xs = torch.cat([x, x.flip(-1)]) if hflip else x
    means, stds, err = [], [], 0.0
    for i in range(0, len(xs), 256):
        post = vae.encode(xs[i:i + 256]).latent_dist
        means.append(post.mean)
        stds.append(post.std)
        if i < min(len(x), 1024):  # the error estimate needs no more
            err += F.mse_loss(vae.decode(post.mean).sample.clamp(-1, 1), xs[i:i + 256],
                              reduction="sum").item()
    return torch.cat(means), torch.cat(stds), err / x[:1024].numel()


def _snr_weight(scheduler, t: torch.Tensor, gamma: float | None) -> torch.Tensor:
    if gamma is None:
        return torch.ones_like(t, dtype=torch.float32)
    ac = scheduler.alphas_cumprod[t]
    snr = ac / (1 - ac)
    return torch.clamp(snr, max=gamma) / snr  # epsilon-prediction Min-SNR weight


def _train_unet(comp, lat_mean, lat_std, caption_idx, text_emb, cfg: GeneratorTrainConfig,
                out: Path, state: dict) -> None:
    from diffusers import DDPMScheduler

    unet, sf = comp.unet, state["scaling_factor"]
    noise_sched = DDPMScheduler.from_config(comp.scheduler.config)
    ema = state.get("ema") or {k: v.detach().clone() for k, v in unet.state_dict().items()}
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.unet_lr, weight_decay=1e-2, foreach=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.warmup_steps))
    start = state["step"] if state["stage"] == "unet" else 0
    if state.get("unet_opt"):
        opt.load_state_dict(state["unet_opt"])
        sched.load_state_dict(state["unet_sched"])
    unet.train()
    n_cap = text_emb.shape[0] - 1  # last row is the empty caption
    bar = tqdm(range(start, cfg.unet_steps), initial=start, total=cfg.unet_steps, desc="unet",
               mininterval=2.0)
    for step in bar:
        g = _step_gen(cfg, "unet", step)
        idx = torch.randint(len(lat_mean), (cfg.unet_batch,), generator=g)
        z0 = (lat_mean[idx] + lat_std[idx] * torch.randn(lat_mean[idx].shape, generator=g)) * sf
        noise = torch.randn(z0.shape, generator=g)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (len(idx),), generator=g)
        cap = caption_idx[idx % len(caption_idx)]
        cap = torch.where(torch.rand(len(idx), generator=g) < cfg.cfg_dropout, n_cap, cap)
        pred = unet(noise_sched.add_noise(z0, noise, t), t, text_emb[cap]).sample
        per = F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))
        loss = (per * _snr_weight(noise_sched, t, cfg.snr_gamma)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))
            for k, v in unet.state_dict().items():
                ema[k].lerp_(v, 1 - decay) if v.is_floating_point() else ema[k].copy_(v)
        state["losses"]["unet"].append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.unet_steps:
            _save_ckpt(out, {**state, "stage": "unet", "step": step + 1, "unet": unet.state_dict(),
                             "unet_opt": opt.state_dict(), "unet_sched": sched.state_dict(),
                             "ema": ema})
        _check_stop(state)
    unet.load_state_dict(ema)
    unet.eval()


def _check_stop(state: dict) -> None:
    if state.get("_budget") is not None:
        state["_budget"] -= 1
        if state["_budget"] <= 0:
            raise TrainingStopped("stopped by stop_after (simulated kill)")


def train_generator(corpus_dir: str | os.PathLike, out_dir: str | os.PathLike,
                    cfg: GeneratorTrainConfig | None = None, *, stop_after: int | None = None) -> Path:
    """Train VAE then UNet on ``corpus_dir`` (split ``train``); write a diffusers dir to ``out_dir``.

    Re-running the same call after a kill resumes from ``out_dir/checkpoint.pt``; a finished
    ``out_dir`` (marker present, same config) is returned as is. A checkpoint or finished model
    from a different config is refused (ValueError). ``stop_after=n`` raises TrainingStopped after n optimisation
    steps in this call without saving, emulating a kill (for tests and time-sliced runs).
    """
    cfg = cfg or GeneratorTrainConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    marker = out / MARKER
    if marker.is_file():
        if json.loads(marker.read_text()).get("config") != asdict(cfg):
            raise ValueError(f"{out} holds a generator trained with a different config; "
                             f"choose another out_dir.")
        log.info("generator already trained at %s", out)
        return out
    size = cfg.image_size or preset_config(cfg.preset)["image_size"]
    t0, cpu0 = time.time(), time.process_time()
    x, captions = _load_corpus(corpus_dir, size)
    comp = build_components(cfg.preset, cfg.seed)
    state: dict[str, Any] = {"config": asdict(cfg), "stage": "vae", "step": 0,
                             "losses": {"vae": [], "unet": []}, "scaling_factor": 1.0}
    if (out / CHECKPOINT).is_file():
        ckpt = _load_ckpt(out)
        if ckpt["config"] != asdict(cfg):
            raise ValueError(f"{out / CHECKPOINT} was written by a different config; use another "
                             f"out_dir or delete the checkpoint to start over.")
        state.update(ckpt)
        comp.vae.load_state_dict(ckpt["vae"])
        if "unet" in ckpt:
            comp.unet.load_state_dict(ckpt["unet"])
        log.info("resuming generator training at stage %s step %d", state["stage"], state["step"])
    state["_budget"] = stop_after
    t_run = time.time()
    if state["stage"] == "vae":
        _train_vae(comp.vae, x, cfg, out, state)
    comp.vae.requires_grad_(False)
    lat_mean, lat_std, recon_mse = _encode_all(comp.vae, x, cfg.hflip)
    if state["stage"] == "vae":  # measured once, then fixed for the whole UNet stage
        state["scaling_factor"] = float(1.0 / lat_mean.std())
        state.update(stage="unet", step=0, vae_opt=None, vae=comp.vae.state_dict())
        _save_ckpt(out, state)
    comp.vae.register_to_config(scaling_factor=state["scaling_factor"])
    t_vae = time.time() - t_run
    with torch.no_grad():
        uniq = sorted(set(captions))
        ids = comp.tokenizer(uniq + [""], padding="max_length", truncation=True,
                             max_length=comp.tokenizer.model_max_length, return_tensors="pt")
        text_emb = comp.text_encoder(ids.input_ids)[0]
    caption_idx = torch.tensor([uniq.index(c) for c in captions])
    _train_unet(comp, lat_mean, lat_std, caption_idx, text_emb, cfg, out, state)
    save_components(comp, out)
    losses = state["losses"]
    summary = {"complete": True, "config": asdict(cfg), "corpus": str(corpus_dir),
               "corpus_sha256": _corpus_digest(corpus_dir), "image_size": size,
               "scaling_factor": state["scaling_factor"], "vae_recon_mse": recon_mse,
               "vae_recon_rmse_gray": float(np.sqrt(recon_mse)) * 127.5,
               "final_vae_mse": float(np.mean(losses["vae"][-50:])) if losses["vae"] else None,
               "final_unet_loss": float(np.mean(losses["unet"][-100:])),
               "wall_seconds_this_run": time.time() - t0,
               "cpu_seconds_this_run": time.process_time() - cpu0, "vae_stage_seconds_this_run": t_vae,
               "torch_threads": torch.get_num_threads()}
    atomic_write_bytes(marker, json.dumps(summary, indent=1).encode())  # marker first; then ckpt
    (out / CHECKPOINT).unlink(missing_ok=True)
    log.info("generator trained (this run %.0f s): %s", time.time() - t0, out)
    return out


def _corpus_digest(corpus_dir: str | os.PathLike) -> str:
    return hashlib.sha256((Path(corpus_dir) / "dataset.json").read_bytes()).hexdigest()


def cached_generator(corpus_dir: str | os.PathLike, cfg: GeneratorTrainConfig | None = None) -> Path:
    """A trained generator for (corpus, cfg) from the medfake cache, training it only if missing.

    Training happens in ``generators/.<key>.partial`` (resumable after a kill) and is renamed to
    ``generators/<key>`` only when complete, so the final name never holds a half model.
    """
    cfg = cfg or GeneratorTrainConfig()
    DatasetInfo.load(corpus_dir)  # clear error for a bad corpus before hashing
    key = hashlib.sha256((_corpus_digest(corpus_dir) + json.dumps(asdict(cfg), sort_keys=True))
                         .encode()).hexdigest()[:20]
    root = cache_dir("generators")
    final = root / key
    if (final / MARKER).is_file():
        return final
    partial = root / f".{key}.partial"
    train_generator(corpus_dir, partial, cfg)
    if final.exists():  # an incomplete leftover from a foreign writer; never served
        shutil.rmtree(final)
    os.replace(partial, final)
    fsync_dir(root)
    return final
