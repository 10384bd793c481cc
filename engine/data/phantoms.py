"""The embedded "phantom" world: procedural CT-like liver-lesion ROIs in two domains.

Three classes follow the liver-lesion GAN study: cyst (homogeneous hypodense, sharp margin),
metastasis (hypodense centre, irregular enhancing rim), hemangioma (peripheral nodular
enhancement). Each patient contributes 1-3 images of one lesion type with a shared parenchyma
appearance. Two domains:

* ``public``: a captioned corpus with shifted contrast/noise/blur, standing in for the web-scale
  data Stable Diffusion was pretrained on (split ``train`` only);
* ``hospital``: the target domain, split by patient into ``train`` (the k-shot pool), ``val``
  and a balanced ``test``.

Everything is a pure function of ``PhantomConfig.seed``: the same config writes byte-identical
shards.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter
from tqdm import tqdm

from ..core.seeding import derive_seed
from .phantom_config import PhantomConfig
from .format import Sample
from .writer import DatasetWriter

log = logging.getLogger(__name__)

CLASS_NAMES = ["cyst", "metastasis", "hemangioma"]
PROMPT_TEMPLATES = {
    "cyst": ["a CT image of a liver cyst", "contrast-enhanced CT, simple hepatic cyst",
             "abdominal CT showing a liver cyst"],
    "metastasis": ["a CT image of a liver metastasis", "contrast-enhanced CT, hepatic metastasis",
                   "abdominal CT showing a liver metastasis"],
    "hemangioma": ["a CT image of a liver hemangioma", "contrast-enhanced CT, hepatic hemangioma",
                   "abdominal CT showing a liver hemangioma"],
}


@dataclass(frozen=True)
class DomainStyle:
    """Acquisition appearance of a domain (all intensities in [0, 1])."""

    parenchyma: float      # mean liver intensity
    parenchyma_jitter: float
    contrast: float        # scales lesion-vs-parenchyma differences
    noise: tuple[float, float]   # per-image noise sigma range
    blur: tuple[float, float]    # per-image Gaussian blur sigma range (pixels at 32x32)


HOSPITAL = DomainStyle(parenchyma=0.58, parenchyma_jitter=0.05, contrast=1.0,
                       noise=(0.035, 0.07), blur=(0.4, 0.9))
PUBLIC = DomainStyle(parenchyma=0.48, parenchyma_jitter=0.08, contrast=0.75,
                     noise=(0.06, 0.11), blur=(0.6, 1.3))


def _lesion_mask(yy: np.ndarray, xx: np.ndarray, rng: np.random.Generator, radius: float,
                 irregularity: float) -> tuple[np.ndarray, np.ndarray]:
    """Signed normalised radius field r/R(theta) of a lobulated ellipse; returns (rho, theta)."""
    cy, cx = rng.normal(0, 0.12, size=2)
    ax = rng.uniform(0.75, 1.25)
    phi = rng.uniform(0, np.pi)
    y, x = yy - cy, xx - cx
    u = x * np.cos(phi) + y * np.sin(phi)
    v = -x * np.sin(phi) + y * np.cos(phi)
    r = np.sqrt((u / ax) ** 2 + (v * ax) ** 2)
    theta = np.arctan2(v, u)
    bound = np.ones_like(theta)
    for k in (2, 3, 5):
        bound += irregularity * rng.normal(0, 1 / k) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return r / (radius * np.clip(bound, 0.5, 1.6)), theta


def render_lesion(rng: np.random.Generator, cls: int, style: DomainStyle, size: int,
                  parenchyma: float) -> np.ndarray:
    """Render one ROI as uint8 (size, size)."""
    lin = np.linspace(-1, 1, size)
    yy, xx = np.meshgrid(lin, lin, indexing="ij")
    scale = size / 32
    texture = gaussian_filter(rng.normal(0, 1, (size, size)), 1.5 * scale)
    img = parenchyma + 0.035 * texture / (texture.std() + 1e-6)
    radius = rng.uniform(0.28, 0.55)
    c = style.contrast * rng.uniform(0.7, 1.3)
    name = CLASS_NAMES[cls]
    if name == "cyst":
        rho, _ = _lesion_mask(yy, xx, rng, radius, irregularity=0.08)
        inside = 1 / (1 + np.exp((rho - 1) * 40))          # sharp margin
        img = img - c * rng.uniform(0.25, 0.4) * inside
    elif name == "metastasis":
        rho, theta = _lesion_mask(yy, xx, rng, radius, irregularity=0.35)
        inside = 1 / (1 + np.exp((rho - 1) * 12))
        core = gaussian_filter(rng.normal(0, 1, (size, size)), 1.0 * scale)
        img = img - c * (rng.uniform(0.15, 0.3) + 0.05 * core) * inside
        width = rng.uniform(0.12, 0.25) * (1 + 0.4 * np.cos(3 * theta + rng.uniform(0, 6)))
        rim = np.exp(-((rho - 1.05) / width) ** 2)
        img = img + c * rng.uniform(0.2, 0.35) * rim
    else:  # hemangioma
        rho, theta = _lesion_mask(yy, xx, rng, radius, irregularity=0.15)
        inside = 1 / (1 + np.exp((rho - 1) * 20))
        img = img - c * rng.uniform(0.18, 0.3) * inside
        n_nodules = rng.integers(3, 7)
        angles = rng.uniform(0, 2 * np.pi, n_nodules)
        ang_dist = np.abs(np.angle(np.exp(1j * (theta[None] - angles[:, None, None]))))
        nodules = np.exp(-(ang_dist / rng.uniform(0.35, 0.6)) ** 2
                         - ((rho[None] - 0.95) / 0.22) ** 2).max(0)
        img = img + c * rng.uniform(0.35, 0.55) * nodules
    img = gaussian_filter(img, rng.uniform(*style.blur) * scale)
    img = img + rng.normal(0, rng.uniform(*style.noise), img.shape)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def _patient_groups(cfg: PhantomConfig, domain: str, split: str,
                    per_class: int) -> list[tuple[int, int]]:
    """(class, images of this patient) of every patient of ``split``, in the seeded order in
    which they are written (1-3 images each, ``per_class`` images of every class)."""
    rng = np.random.default_rng(derive_seed(cfg.seed, domain, split, "patients"))
    groups: list[tuple[int, int]] = []
    for cls in range(len(CLASS_NAMES)):
        made = 0
        while made < per_class:
            n = min(int(rng.integers(1, 4)), per_class - made)
            groups.append((cls, n))
            made += n
    return [groups[g] for g in rng.permutation(len(groups))]


def _write_domain(writer: DatasetWriter, split: str, per_class: int, style: DomainStyle,
                  cfg: PhantomConfig, domain: str, patient_counter: list[int],
                  pbar: tqdm, templates_of: dict[str, list[str]] | None = None) -> None:
    """Write ``per_class`` images of every class into ``split``, 1-3 images per patient.

    Patients of all classes are interleaved in a seeded order, so every shard holds a class mix
    (a contrastive batch drawn from a class-pure shard would have nothing to contrast).
    ``templates_of``: the captions per class (default ``PROMPT_TEMPLATES``); a hospital image is
    captioned by its class's first template, a public one by a seeded pick.
    """
    groups = _patient_groups(cfg, domain, split, per_class)
    templates_of = templates_of or PROMPT_TEMPLATES
    for cls, n_images in groups:
        name = CLASS_NAMES[cls]
        patient_counter[0] += 1
        pid = f"{domain[0].upper()}{patient_counter[0]:06d}"
        prng = np.random.default_rng(derive_seed(cfg.seed, domain, pid))
        parenchyma = style.parenchyma + prng.normal(0, style.parenchyma_jitter)
        for j in range(n_images):
            key = f"{domain}_{pid}_{j}"
            irng = np.random.default_rng(derive_seed(cfg.seed, key))
            image = render_lesion(irng, cls, style, cfg.image_size, parenchyma)
            templates = templates_of[name]
            txt = templates[int(irng.integers(len(templates)))] if domain == "public" \
                else templates[0]
            meta = {"patient_id": pid, "split": split, "source": f"phantom-{domain}",
                    "class_name": name}
            writer.add(split, Sample(key, image, cls, txt, meta))
            pbar.update(1)


def make_phantom_world(out_dir: str | Path, cfg: PhantomConfig | None = None) -> tuple[Path, Path]:
    """Write ``out_dir/public`` (the generator's corpus) and ``out_dir/hospital`` datasets;
    return both paths.

    ``cfg.world == "near"``: the public corpus is the class-captioned, style-shifted one;
    ``"general"``: a broad corpus (``phantoms_general``), the target lesions rare in it and
    captioned by appearance, and the hospital captioned by ``GENERAL_PROMPT_TEMPLATES``. The
    hospital images are the same in both worlds for the same seed and sizes."""
    cfg = cfg or PhantomConfig()
    out = Path(out_dir)
    public, hospital = out / "public", out / "hospital"
    prov = {"generator": "medfake.phantoms", "config": cfg.identity()}
    if cfg.world != "near":
        prov["world"] = cfg.world
    n_hospital = 3 * (cfg.n_train_per_class + cfg.n_val_per_class + cfg.n_test_per_class)
    counter = [0]
    if cfg.world == "near":
        templates, total = PROMPT_TEMPLATES, 3 * cfg.n_public_per_class + n_hospital
    else:
        from .phantoms_general import GENERAL_PROMPT_TEMPLATES
        templates, total = GENERAL_PROMPT_TEMPLATES, cfg.corpus_size + n_hospital
        # hospital patient ids (and so their images) as in the near world of the same config
        counter[0] = len(_patient_groups(cfg, "public", "train", cfg.n_public_per_class))
    with tqdm(total=total, desc=f"phantoms ({cfg.world})", unit="img") as pbar:
        if cfg.world == "near":
            with DatasetWriter(public, CLASS_NAMES, PROMPT_TEMPLATES, {**prov, "domain": "public"},
                               cfg.image_size, 1, cfg.samples_per_shard) as w:
                _write_domain(w, "train", cfg.n_public_per_class, PUBLIC, cfg, "public", counter,
                              pbar)
        else:
            from .phantoms_general import write_general_corpus
            write_general_corpus(public, cfg, {**prov, "domain": "public"}, pbar)
        with DatasetWriter(hospital, CLASS_NAMES, templates,
                           {**prov, "domain": "hospital"}, cfg.image_size, 1,
                           cfg.samples_per_shard) as w:
            for split, n in (("train", cfg.n_train_per_class), ("val", cfg.n_val_per_class),
                             ("test", cfg.n_test_per_class)):
                _write_domain(w, split, n, HOSPITAL, cfg, "hospital", counter, pbar, templates)
    log.info("phantom world (%s) written to %s", cfg.world, out)
    return public, hospital
