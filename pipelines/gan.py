"""`medfake gan train|sample`: DCGAN (one model per class) and ACGAN (one class-conditional model).

Training reads a real dataset's split (``k`` images per class via ``train_clip.kshot_subset``, the
subsets the classifier arms use, or the whole split with ``k = 0``) and writes::

    gan.json                   written last: kind, architecture, class names, one entry per
                               model ("unit": a class for DCGAN, "all" for ACGAN) with its file
                               and sha256, config, final losses
    generator_<i>.safetensors  the generator(s) (safetensors, loaded with ``safe_load``)
    grids/<class>_step<N>.png  4x4 sample grids per class during training (fixed z)
    checkpoint_<i>.pt          while a unit trains: G, D, both Adams, step (atomic rewrite)

Every step's randomness is seeded from (seed, unit, step), so a killed run re-started with the
same call resumes from the last checkpoint and ends with the weights of an uninterrupted run.

Sampling (``sample_gan``) writes the synthesis shard format with ``synth.plan_samples``'s keys
and seeds: sample ``syn_<class>_<i>`` draws z from its own seed ``derive_seed(seed, key)``, so an
image depends only on (checkpoint, key, seed); finished shards are skipped on a re-run and a
changed job on an existing output directory is refused (``synth_plan.json``, as ``medfake synth``).
Provenance per sample: generator kind, checkpoint sha256, class, seed.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..engine.data.reader import DatasetInfo, load_split
from ..engine.data.format import Sample, shard_name
from ..engine.data.writer import finalize_dataset, list_shards, write_shard
from ..engine.core.atomic import sha256_file
from ..engine.baselines.gan import GANArch, Discriminator, Generator, to_uint8
from ..engine.core.safe_load import load_checkpoint, load_weights_file, save_weights
from ..engine.core.seeding import derive_seed
from ..engine.training.accel import atomic_torch_save, claim_output_dir, resolve_device
from ..engine.synth.plan import check_plan, plan_samples
from ..engine.training.stop import TrainingStopped
from .configs.gan import GANSampleConfig, GANTrainConfig

log = logging.getLogger(__name__)
META, JOB = "gan.json", "gan_job.json"
__all__ = ["GANTrainConfig", "GANSampleConfig", "train_gan", "sample_gan", "TrainingStopped"]


def _real_images(real_dataset: str | os.PathLike, cfg: GANTrainConfig, arch: GANArch):
    """The training images as float (N, C, S, S) in [-1, 1] with labels and keys."""
    from ..engine.data.kshot import kshot_subset
    split = load_split(real_dataset, cfg.split)
    if cfg.k:
        split = kshot_subset(split, cfg.k, cfg.kshot_seed)
    x = torch.from_numpy(split.images).float() / 127.5 - 1.0
    x = x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)
    if arch.channels == 1 and x.shape[1] == 3:
        x = x.mean(1, keepdim=True)
    elif arch.channels == 3 and x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-1] != arch.image_size:
        x = F.interpolate(x, size=(arch.image_size,) * 2, mode="bilinear", antialias=True)
    return x.clamp(-1, 1).contiguous(), torch.from_numpy(split.labels), split.keys


def _save_grids(G: Generator, arch: GANArch, classes: list[tuple[int, str]], out: Path,
                step: int, cfg: GANTrainConfig, device: torch.device) -> None:
    """A 4x4 grid per class from a fixed z (eval mode, as sampling uses)."""
    from torchvision.utils import save_image
    z = torch.randn(16, arch.latent_dim, generator=torch.Generator().manual_seed(
        derive_seed(cfg.seed, "grid"))).to(device)
    G.eval()
    with torch.no_grad():
        for ci, name in classes:
            labels = torch.full((16,), ci, device=device) if arch.conditional else None
            save_image(G(z, labels).float().cpu(), out / "grids" / f"{name}_step{step:06d}.png",
                       nrow=4, normalize=True, value_range=(-1, 1))
    G.train()


def _train_unit(unit: int, classes: list[tuple[int, str]], x: torch.Tensor, y: torch.Tensor,
                arch: GANArch, cfg: GANTrainConfig, job: dict, out: Path, budget: list,
                device: torch.device) -> dict[str, Any]:
    """Train one G/D pair on (x, y) with resume; return its entry for gan.json."""
    torch.manual_seed(derive_seed(cfg.seed, "init", unit))
    G, D = Generator(arch).to(device), Discriminator(arch).to(device)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=(cfg.beta1, cfg.beta2))
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, cfg.beta2))
    ckpt_path, start, losses = out / f"checkpoint_{unit}.pt", 0, []
    if ckpt_path.is_file():
        ck = load_checkpoint(ckpt_path)
        if ck["job"] != job:
            raise ValueError(f"{ckpt_path} belongs to another job; delete it to start over")
        G.load_state_dict(ck["G"])
        D.load_state_dict(ck["D"])
        opt_g.load_state_dict(ck["opt_g"])
        opt_d.load_state_dict(ck["opt_d"])
        start, losses = ck["step"], list(ck["losses"])
        log.info("resuming %s unit %d at step %d", arch.kind, unit, start)
    bce, ce = F.binary_cross_entropy_with_logits, F.cross_entropy
    G.train()
    D.train()
    desc = f"{arch.kind} {classes[0][1] if len(classes) == 1 else 'all classes'}"
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=desc, mininterval=2.0)
    for step in bar:
        g = torch.Generator().manual_seed(derive_seed(cfg.seed, "gan", unit, step))
        idx = torch.randint(len(x), (cfg.batch_size,), generator=g)
        real, yr = x[idx], y[idx]
        if cfg.hflip:
            flip = torch.rand(len(idx), generator=g) < 0.5
            real = torch.where(flip[:, None, None, None], real.flip(-1), real)
        z = torch.randn(len(idx), arch.latent_dim, generator=g)
        yf = torch.randint(arch.n_classes, (len(idx),), generator=g)
        real, yr, z, yf = real.to(device), yr.to(device), z.to(device), yf.to(device)
        fake = G(z, yf if arch.conditional else None)
        src_r, cls_r = D(real)
        src_f, cls_f = D(fake.detach())
        loss_d = bce(src_r, torch.full_like(src_r, cfg.real_label)) + bce(src_f, torch.zeros_like(src_f))
        if arch.conditional:
            loss_d = loss_d + ce(cls_r, yr) + ce(cls_f, yf)
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        src, cls = D(fake)
        loss_g = bce(src, torch.ones_like(src)) + (ce(cls, yf) if arch.conditional else 0.0)
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        losses.append([round(loss_d.item(), 5), round(loss_g.item(), 5)])
        bar.set_postfix(loss_d=f"{loss_d.item():.3f}", loss_g=f"{loss_g.item():.3f}", refresh=False)
        done = step + 1
        if done % cfg.grid_every == 0 or done == cfg.steps:
            _save_grids(G, arch, classes, out, done, cfg, device)
        if done % cfg.checkpoint_every == 0 and done < cfg.steps:
            atomic_torch_save({"job": job, "step": done, "losses": losses, "G": G.state_dict(),
                               "D": D.state_dict(), "opt_g": opt_g.state_dict(),
                               "opt_d": opt_d.state_dict()}, ckpt_path)
        if budget[0] is not None:
            budget[0] -= 1
            if budget[0] <= 0:
                raise TrainingStopped("stopped by stop_after (simulated kill)")
    bar.close()
    path = save_weights(G.state_dict(), out / f"generator_{unit}.safetensors")
    tail = np.asarray(losses[-50:]) if losses else np.zeros((1, 2))
    return {"file": path.name, "sha256": sha256_file(path), "classes": [n for _, n in classes],
            "final_loss_d": float(tail[:, 0].mean()), "final_loss_g": float(tail[:, 1].mean())}


def train_gan(real_dataset: str | os.PathLike, out_dir: str | os.PathLike,
              cfg: GANTrainConfig | None = None, *, stop_after: int | None = None) -> Path:
    """Train the GAN(s) of ``cfg.kind`` on ``real_dataset``; return ``out_dir``.

    A finished ``out_dir`` (gan.json present, same job) is returned as is; finished units are
    kept and a unit in progress resumes from its checkpoint. ``stop_after=n`` raises
    TrainingStopped after n optimisation steps of this call, emulating a kill.
    """
    cfg = cfg or GANTrainConfig()
    info = DatasetInfo.load(real_dataset)
    out, t0 = Path(out_dir), time.time()
    conditional = cfg.kind == "acgan"
    arch = GANArch(cfg.kind, cfg.image_size, cfg.channels or info.channels, cfg.latent_dim,
                   len(info.class_names) if conditional else 1, cfg.g_features, cfg.d_features)
    job = json.loads(json.dumps({"config": {k: v for k, v in asdict(cfg).items() if k != "device"},
                                 "real_dataset_sha256": sha256_file(Path(real_dataset) / "dataset.json")}))
    if (out / META).is_file():
        claim_output_dir(out, job, JOB, "GAN training")  # refuses a different job
        log.info("GAN already trained at %s", out)
        return out
    device = resolve_device(cfg.device)
    x, y, keys = _real_images(real_dataset, cfg, arch)
    claim_output_dir(out, job, JOB, "GAN training")  # after validation: a failed call claims nothing
    (out / "grids").mkdir(exist_ok=True)
    names = info.class_names
    if conditional:
        plan = [(0, list(enumerate(names)), x, y)]
    else:
        plan = [(c, [(c, n)], x[y == c], torch.zeros(int((y == c).sum()), dtype=torch.long))
                for c, n in enumerate(names)]
    budget, units = [stop_after], {}
    for unit, classes, xu, yu in plan:
        if len(xu) == 0:
            raise ValueError(f"class {classes[0][1]!r} has no images in {real_dataset} split "
                             f"{cfg.split!r}; a per-class DCGAN needs at least one")
        weights = out / f"generator_{unit}.safetensors"
        partial = out / f".unit_{unit}.json"  # a finished unit's gan.json entry
        if weights.is_file() and partial.is_file():
            units[str(unit)] = json.loads(partial.read_text())
            continue
        units[str(unit)] = _train_unit(unit, classes, xu, yu, arch, cfg, job, out, budget, device)
        partial.write_text(json.dumps(units[str(unit)]))
        (out / f"checkpoint_{unit}.pt").unlink(missing_ok=True)
    (out / META).write_text(json.dumps({
        "format": "medfake-gan/1", "complete": True, "kind": cfg.kind, "arch": asdict(arch),
        "class_names": names, "units": units, "job": job, "train_keys": keys,
        "real_dataset": str(Path(real_dataset).resolve()), "split": cfg.split,
        "wall_seconds_this_run": round(time.time() - t0, 1)}, indent=1) + "\n")
    for unit in units:
        (out / f".unit_{unit}.json").unlink(missing_ok=True)
    log.info("%s trained: %s", cfg.kind, out)
    return out


def load_gan(gan_dir: str | os.PathLike, device: str = "cpu") -> tuple[dict, dict[int, Generator]]:
    """gan.json and the generators by class index (every class maps to the ACGAN's one model)."""
    d = Path(gan_dir)
    if not (d / META).is_file():
        raise FileNotFoundError(f"{d} holds no finished GAN ({META} missing); train one with "
                                f"`medfake gan train --real DIR --out {d}` (re-run it to resume)")
    meta = json.loads((d / META).read_text())
    arch = GANArch(**meta["arch"])
    gens: dict[int, Generator] = {}
    for unit, entry in meta["units"].items():
        G = Generator(arch)
        G.load_state_dict(load_weights_file(d / entry["file"]))
        G.to(device).eval()
        for name in entry["classes"]:
            gens[meta["class_names"].index(name)] = G
    return meta, gens


def _gan_hash(meta: dict) -> str:
    return hashlib.sha256(json.dumps([meta["arch"], sorted(
        (u["file"], u["sha256"]) for u in meta["units"].values())]).encode()).hexdigest()


def sample_gan(cfg: GANSampleConfig) -> Path:
    """Run (or resume) a sampling job; return the output dataset directory."""
    meta, gens = load_gan(cfg.gan_dir, cfg.device)
    real = DatasetInfo.load(cfg.real_dataset)
    if real.class_names != meta["class_names"]:
        raise ValueError(f"{cfg.gan_dir} was trained on classes {meta['class_names']}, but "
                         f"{cfg.real_dataset} has {real.class_names}; sample with its own dataset")
    arch = GANArch(**meta["arch"])
    size, out = cfg.image_size or real.image_size, Path(cfg.out_dir)
    job = {"generator": meta["kind"], "gan_hash": _gan_hash(meta), "per_class": cfg.per_class,
           "seed": cfg.seed, "image_size": size, "channels": real.channels,
           "samples_per_shard": cfg.samples_per_shard}
    check_plan(out, job)
    plan = plan_samples(cfg, real.class_names, real.prompt_templates)
    shards = [plan[i:i + cfg.samples_per_shard] for i in range(0, len(plan), cfg.samples_per_shard)]
    done = {s.name for s in list_shards(out, "train")}
    todo = [i for i in range(len(shards)) if shard_name("train", i) not in done]
    unit_sha = {meta["class_names"].index(n): u["sha256"] for u in meta["units"].values()
                for n in u["classes"]}
    bar = tqdm(total=sum(len(shards[i]) for i in todo), desc=f"{meta['kind']} sample", unit="img")
    for i in todo:
        samples = []
        for b in range(0, len(shards[i]), cfg.batch_size):
            batch = shards[i][b:b + cfg.batch_size]
            images = _generate(gens, arch, batch, size, real.channels, cfg.device)
            for p, img in zip(batch, images):
                meta_s = {"source": "synthetic", "generator": meta["kind"],
                          "checkpoint_hash": unit_sha[p["cls"]], "seed": p["seed"],
                          "class_name": real.class_names[p["cls"]], "prompt": p["prompt"],
                          "split": "train"}
                samples.append(Sample(p["key"], img, p["cls"], p["prompt"], meta_s))
            bar.update(len(batch))
        write_shard(out, "train", i, samples, real.class_names)
    bar.close()
    finalize_dataset(out, real.class_names, real.prompt_templates,
                     {"generator": meta["kind"], "job": job, "torch": torch.__version__,
                      "lineage": {"gan_dir": str(Path(cfg.gan_dir).resolve())}},
                     size, real.channels)
    return out


@torch.no_grad()
def _generate(gens: dict[int, Generator], arch: GANArch, batch: list[dict], size: int,
              channels: int, device: str) -> list[np.ndarray]:
    """One uint8 image (HxW or HxWx3) per planned sample, z drawn from the sample's own seed."""
    z = torch.stack([torch.randn(arch.latent_dim, generator=torch.Generator().manual_seed(p["seed"]))
                     for p in batch]).to(device)
    cls = torch.tensor([p["cls"] for p in batch], device=device)
    x = torch.empty(len(batch), arch.channels, arch.image_size, arch.image_size, device=device)
    for c in cls.unique().tolist():  # one forward per model present in the batch
        sel = cls == c
        x[sel] = gens[c](z[sel], cls[sel] if arch.conditional else None)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
    if channels == 1 and arch.channels == 3:
        x = x.mean(1, keepdim=True)
    elif channels == 3 and arch.channels == 1:
        x = x.expand(-1, 3, -1, -1)
    imgs = to_uint8(x.cpu()).numpy()
    return [im[..., 0] if channels == 1 else im for im in imgs]
