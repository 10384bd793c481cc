"""The ``general`` world's corpus: broad, captioned, the target lesions rare and never named.

The generator's corpus stands to the task as a general pretraining corpus stands to a clinical
task (docs/worlds.md). It holds ``cfg.corpus_size`` images of thirteen kinds of content,
procedurally rendered at the world's image size in the public (shifted) acquisition style:
normal liver, liver vessels, vessels seen end-on, kidney, spleen, vertebra, lung, gallbladder,
bowel, muscle and fat, and the three target lesions (rendered by ``phantoms.render_lesion``,
exactly the near world's public lesions). Each target lesion is ``TARGET_FRACTION`` of the
corpus. Every caption describes appearance in words drawn from shared pools ("dark", "round",
"bright ring", "sharp edge" ...), so captions of other content use the same words as the
lesions' (a gallbladder is "a dark oval sac with a sharp wall"); no caption holds a class name.
Half the images, of every kind alike, are shown in another window (narrow/wide, or the lung or
bone window for those organs) and say so.

The corpus dataset's ``class_names`` are the kinds of content (never the hospital classes), its
labels the kind; ``meta["hospital_class"]`` records, for target lesions only, which hospital
class the image is (ground truth for diagnostics: neither the generator, which trains on
captions, nor the retrieval control, which reads captions, uses it).

Everything is a pure function of the config: the same config writes byte-identical shards.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter
from tqdm import tqdm

from ..core.seeding import derive_seed
from .format import Sample
from .phantom_config import PhantomConfig
from .phantoms import CLASS_NAMES, PUBLIC, render_lesion
from .writer import DatasetWriter

# Each target class's share of the corpus (1% each, 3% in all): fixed from the design argument
# in docs/worlds.md (rare, yet enough images for a generator to learn the look), never tuned.
TARGET_FRACTION = 0.01

# The hospital's captions and prompt templates in the general world: each class's radiological
# definition (the one ``render_lesion`` implements) in plain appearance words, since class
# names mean nothing to a generator trained on this corpus. The first is the hospital caption.
GENERAL_PROMPT_TEMPLATES = {
    "cyst": ["a round dark sharply bounded spot in the liver",
             "CT of the liver, a dark round area with a sharp smooth edge",
             "a well-defined dark oval spot in liver tissue"],
    "metastasis": ["a dark spot with a bright irregular ring in the liver",
                   "CT of the liver, an irregular dark area ringed by brighter tissue",
                   "a dark region with an uneven bright rim in liver tissue"],
    "hemangioma": ["bright nodules at the edge of a round dark area in the liver",
                   "CT of the liver, a round darker area with bright clumps along its border",
                   "bright spots around the rim of a dark area in liver tissue"],
}

# Caption vocabulary: {slot} pools shared by all kinds.
_POOLS = {
    "shape": ["round", "oval", "rounded", "circular"],
    "dark": ["dark", "low-density", "darker"],
    "area": ["spot", "area", "patch", "region"],
    "sharp": ["sharply bounded", "well-defined", "crisp", "smooth"],
    "edge": ["sharp", "smooth", "crisp", "well-defined"],
    "irregular": ["irregular", "uneven", "ragged", "thick"],
    "nodular": ["nodular", "patchy", "clumped", "scattered"],
    "liver": ["in the liver", "in liver tissue", "within the liver", ""],
    "few": ["a few", "several", "two or three", "some"],
}
_PREFIX = ["", "", "CT, ", "axial CT slice, ", "CT image, "]

# kind -> (corpus share of the non-target remainder, caption templates)
_KINDS: dict[str, tuple[float, list[str]]] = {
    "liver": (0.16, ["normal liver tissue", "homogeneous liver parenchyma",
                     "smooth grey liver texture", "liver, no focal spot",
                     "liver edge next to fat"]),
    "liver-vessels": (0.14, ["bright branching vessels {liver}",
                             "enhancing vessels crossing liver tissue",
                             "liver with bright tubular vessels"]),
    "vessel-dots": (0.08, ["small bright round spots {liver}",
                           "vessels seen end-on as bright dots",
                           "{few} bright {shape} dots in grey tissue"]),
    "kidney": (0.12, ["a kidney with a bright rim and a darker centre",
                      "bean-shaped kidney, bright cortex", "kidney with a {dark} sinus"]),
    "spleen": (0.08, ["homogeneous spleen with a {edge} edge",
                      "a smooth bright organ, the spleen", "spleen tissue, uniform"]),
    "vertebra": (0.10, ["a vertebra, a bright ring of bone around a grey centre",
                        "bone with a bright cortex", "spine, bright bony ring"]),
    "lung": (0.10, ["dark lung tissue with small bright dots",
                    "dark air with thin bright vessels, lung", "airy {dark} lung"]),
    "gallbladder": (0.07, ["a {dark} {shape} gallbladder with a {edge} wall",
                           "the gallbladder, a {dark} smooth sac",
                           "{dark} fluid-filled sac at the liver edge"]),
    "bowel": (0.08, ["bowel loops with bright walls",
                     "loops of bowel, bright rings with grey content",
                     "intestine with bright {irregular} walls"]),
    "muscle-fat": (0.07, ["a boundary between grey muscle and dark fat",
                          "muscle next to dark fat", "abdominal wall, muscle and fat"]),
}
# target kind -> (hospital class, caption templates: appearance only)
_TARGETS: dict[str, tuple[str, list[str]]] = {
    "lesion-round-dark": ("cyst", [
        "a {shape} {dark} {area} with a {edge} edge {liver}", "a {sharp} {shape} {dark} {area}",
        "{shape} {dark} {area} with {edge} margins {liver}", "a {dark} {shape} {area}, {sharp}"]),
    "lesion-dark-ring": ("metastasis", [
        "a {dark} {area} with a bright {irregular} ring {liver}",
        "an {irregular} {dark} {area} ringed by brighter tissue",
        "a {dark} {area} surrounded by an {irregular} bright rim",
        "a bright {irregular} ring around a darker centre {liver}"]),
    "lesion-rim-nodules": ("hemangioma", [
        "bright nodules at the edge of a {shape} {area} {liver}",
        "a {shape} darker {area} with bright clumps along its border",
        "bright spots around the rim of a {dark} {area}",
        "a {dark} {area} with {nodular} bright dots at its margin"]),
}
CORPUS_KINDS = list(_KINDS) + list(_TARGETS)
_WINDOWS = {"narrow window": 1.6, "wide window": 0.6}


def _caption(rng: np.random.Generator, templates: list[str]) -> str:
    t = templates[int(rng.integers(len(templates)))]
    filled = t.format(**{k: v[int(rng.integers(len(v)))] for k, v in _POOLS.items()})
    text = " ".join(filled.split())  # an empty {liver} leaves no double space
    text = re.sub(r"\b(a|an) (?=(\w))", lambda m: "an " if m.group(2) in "aeiou" else "a ", text)
    return _PREFIX[int(rng.integers(len(_PREFIX)))] + text


# ----------------------------------------------------------------------------- rendering


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    lin = np.linspace(-1, 1, size)
    return np.meshgrid(lin, lin, indexing="ij")


def _texture(rng: np.random.Generator, size: int, sigma: float, amp: float) -> np.ndarray:
    t = gaussian_filter(rng.normal(0, 1, (size, size)), sigma * size / 32)
    return amp * t / (t.std() + 1e-6)


def _ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float,
             phi: float) -> np.ndarray:
    """Normalised radius field (1 on the boundary) of a rotated ellipse."""
    y, x = yy - cy, xx - cx
    u = x * np.cos(phi) + y * np.sin(phi)
    v = -x * np.sin(phi) + y * np.cos(phi)
    return np.sqrt((u / rx) ** 2 + (v / ry) ** 2)


def _inside(rho: np.ndarray, sharp: float) -> np.ndarray:
    return 1 / (1 + np.exp(np.clip((rho - 1) * sharp, -50, 50)))


def _liver_base(rng: np.random.Generator, size: int) -> np.ndarray:
    return PUBLIC.parenchyma + rng.normal(0, PUBLIC.parenchyma_jitter) + _texture(rng, size, 1.5,
                                                                                 0.035)


def _segments(yy: np.ndarray, xx: np.ndarray, rng: np.random.Generator, n: int,
              width: tuple[float, float]) -> np.ndarray:
    """Max over ``n`` random branching polylines of a Gaussian tube profile."""
    out = np.zeros_like(yy)
    for _ in range(n):
        p = rng.uniform(-1, 1, 2)
        ang = rng.uniform(0, 2 * np.pi)
        w = rng.uniform(*width)
        for _ in range(int(rng.integers(2, 4))):
            ang += rng.normal(0, 0.6)
            q = p + rng.uniform(0.4, 0.9) * np.array([np.sin(ang), np.cos(ang)])
            d = q - p
            t = np.clip(((yy - p[0]) * d[0] + (xx - p[1]) * d[1]) / (d @ d + 1e-9), 0, 1)
            dist = np.hypot(yy - (p[0] + t * d[0]), xx - (p[1] + t * d[1]))
            out = np.maximum(out, np.exp(-(dist / w) ** 2))
            p = q
            w *= 0.8
    return out


def _render_kind(rng: np.random.Generator, kind: str, size: int) -> np.ndarray:
    """One image of a non-target kind of content, float in about [0, 1], before blur/noise."""
    yy, xx = _grid(size)
    if kind in ("liver", "liver-vessels", "vessel-dots", "gallbladder"):
        img = _liver_base(rng, size)
        if kind == "liver" and rng.random() < 0.5:  # the liver's edge against fat
            a = rng.uniform(0, 2 * np.pi)
            s = xx * np.cos(a) + yy * np.sin(a) + 0.2 * np.sin(3 * (yy * np.cos(a) - xx * np.sin(a)))
            img = np.where(s > rng.uniform(0.3, 0.7), 0.22 + _texture(rng, size, 1, 0.02), img)
        elif kind == "liver-vessels":
            img = img + rng.uniform(0.22, 0.35) * _segments(yy, xx, rng, int(rng.integers(1, 4)),
                                                            (0.05, 0.1))
        elif kind == "vessel-dots":
            for _ in range(int(rng.integers(1, 5))):
                r = rng.uniform(0.06, 0.13)
                rho = _ellipse(yy, xx, *rng.uniform(-0.7, 0.7, 2), r, r, 0.0)
                img = img + rng.uniform(0.2, 0.35) * _inside(rho, 8)
        elif kind == "gallbladder":
            c = rng.uniform(0.25, 0.5) * np.array([np.sin(a := rng.uniform(0, 6.3)), np.cos(a)])
            rho = _ellipse(yy, xx, c[0], c[1], rng.uniform(0.3, 0.45), rng.uniform(0.2, 0.3),
                           rng.uniform(0, np.pi))
            img = img * (1 - _inside(rho, 30)) + 0.15 * _inside(rho, 30)
            img = img + 0.12 * np.exp(-((rho - 1.02) / 0.06) ** 2)
        return img
    if kind == "kidney":
        img = 0.25 + _texture(rng, size, 1.0, 0.03)
        phi = rng.uniform(0, np.pi)
        rho = _ellipse(yy, xx, *rng.normal(0, 0.1, 2), rng.uniform(0.55, 0.75),
                       rng.uniform(0.32, 0.42), phi)
        img = img + (rng.uniform(0.65, 0.75) - 0.25) * _inside(rho, 20)
        img = img - 0.15 * _inside(rho / 0.62, 10)  # medulla
        sinus = _ellipse(yy, xx, 0.3 * np.sin(phi), 0.3 * np.cos(phi), 0.2, 0.12, phi)
        return img - 0.3 * _inside(sinus, 15)
    if kind == "spleen":
        img = 0.3 + _texture(rng, size, 1.0, 0.03)
        rho = _ellipse(yy, xx, *rng.normal(0, 0.15, 2), rng.uniform(0.6, 0.9),
                       rng.uniform(0.35, 0.55), rng.uniform(0, np.pi))
        rho = rho * (1 + 0.08 * np.cos(2 * np.arctan2(yy, xx) + rng.uniform(0, 6)))
        return img + (rng.uniform(0.6, 0.68) - 0.3) * _inside(rho, 25) + _texture(rng, size, 1.5,
                                                                                  0.015)
    if kind == "vertebra":
        img = 0.45 + _texture(rng, size, 1.2, 0.03)
        r = rng.uniform(0.4, 0.6)
        rho = _ellipse(yy, xx, *rng.normal(0, 0.1, 2), r, r * rng.uniform(1.0, 1.25), 0.0)
        inside = _inside(rho, 25)
        img = img * (1 - inside) + inside * (0.62 + _texture(rng, size, 0.6, 0.06))
        return img + rng.uniform(0.3, 0.45) * np.exp(-((rho - 0.97) / 0.08) ** 2)
    if kind == "lung":
        img = 0.06 + _texture(rng, size, 1.0, 0.015)
        img = img + rng.uniform(0.25, 0.4) * _segments(yy, xx, rng, int(rng.integers(2, 5)),
                                                       (0.02, 0.05))
        a = rng.uniform(0, 2 * np.pi)
        wall = xx * np.cos(a) + yy * np.sin(a) > rng.uniform(0.7, 0.95)
        return np.where(wall, 0.5, img)
    if kind == "bowel":
        img = 0.35 + _texture(rng, size, 1.2, 0.03)
        for _ in range(int(rng.integers(2, 5))):
            r = rng.uniform(0.18, 0.35)
            rho = _ellipse(yy, xx, *rng.uniform(-0.7, 0.7, 2), r, r * rng.uniform(0.7, 1.3),
                           rng.uniform(0, np.pi))
            inside = _inside(rho, 15)
            content = rng.choice([0.05, 0.42])  # gas or fluid
            img = img * (1 - inside) + inside * content
            img = img + rng.uniform(0.25, 0.4) * np.exp(-((rho - 1.0) / rng.uniform(0.08, 0.15))
                                                        ** 2)
        return img
    if kind == "muscle-fat":
        a = rng.uniform(0, 2 * np.pi)
        s = xx * np.cos(a) + yy * np.sin(a) + 0.15 * np.sin(4 * (yy * np.cos(a) - xx * np.sin(a)))
        striae = gaussian_filter(rng.normal(0, 1, (size, size)), (0.4 * size / 32, 2 * size / 32))
        muscle = 0.5 + 0.03 * striae / (striae.std() + 1e-6)
        return np.where(s > rng.uniform(-0.3, 0.3), muscle, 0.2 + _texture(rng, size, 1, 0.02))
    raise ValueError(f"unknown corpus kind {kind!r}")


def _finish(rng: np.random.Generator, img: np.ndarray, size: int) -> np.ndarray:
    """The public acquisition style: blur, noise."""
    img = gaussian_filter(img, rng.uniform(*PUBLIC.blur) * size / 32)
    return img + rng.normal(0, rng.uniform(*PUBLIC.noise), img.shape)


def _window(rng: np.random.Generator, img: np.ndarray, kind: str) -> tuple[np.ndarray, str]:
    """Half the images of every kind in another window, which the caption names."""
    if rng.random() >= 0.5:
        return img, ""
    if kind == "lung":
        name, gain = "lung window", 1.8
    elif kind == "vertebra":
        name, gain = "bone window", 0.7
    else:
        name = list(_WINDOWS)[int(rng.integers(len(_WINDOWS)))]
        gain = _WINDOWS[name]
    centre = float(np.median(img))
    return centre + gain * (img - centre), name


def render_corpus_image(rng: np.random.Generator, kind: str, size: int) -> tuple[np.ndarray, str]:
    """One corpus image (uint8 (size, size)) of ``kind`` and its caption."""
    if kind in _TARGETS:
        cls = CLASS_NAMES.index(_TARGETS[kind][0])
        parenchyma = PUBLIC.parenchyma + rng.normal(0, PUBLIC.parenchyma_jitter)
        img = render_lesion(rng, cls, PUBLIC, size, parenchyma).astype(np.float64) / 255
        templates = _TARGETS[kind][1]
    else:
        img = _finish(rng, _render_kind(rng, kind, size), size)
        templates = _KINDS[kind][1]
    img, window = _window(rng, img, kind)
    caption = _caption(rng, templates) + (f", {window}" if window else "")
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), caption


def kind_counts(corpus_size: int) -> dict[str, int]:
    """Images of each kind: ``TARGET_FRACTION`` of the corpus per target lesion (at least 1),
    the rest shared out by the kinds' shares (largest remainders first, ties by kind order)."""
    n_target = max(1, round(TARGET_FRACTION * corpus_size))
    rest = corpus_size - n_target * len(_TARGETS)
    if rest < len(_KINDS):
        raise ValueError(f"corpus_size {corpus_size} is too small for the general world: it "
                         f"needs at least {len(_KINDS) + len(_TARGETS)} images")
    shares = np.array([s for s, _ in _KINDS.values()])
    raw = rest * shares / shares.sum()
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[:rest - counts.sum()]:
        counts[i] += 1
    return {**{k: int(c) for k, c in zip(_KINDS, counts)}, **{k: n_target for k in _TARGETS}}


def write_general_corpus(out: Path, cfg: PhantomConfig, provenance: dict[str, Any],
                         pbar: tqdm | None = None) -> Path:
    """Write the general corpus (split ``train``) as the dataset ``out``; its
    ``prompt_templates`` are empty (it has no classes to prompt for)."""
    counts = kind_counts(cfg.corpus_size)
    order = [k for k in CORPUS_KINDS for _ in range(counts[k])]
    rng = np.random.default_rng(derive_seed(cfg.seed, "general", "order"))
    order = [order[i] for i in rng.permutation(len(order))]
    prov = {**provenance, "corpus": {"kinds": counts, "target_fraction_per_class": TARGET_FRACTION,
                                     "class_names_in_captions": False}}
    with DatasetWriter(out, CORPUS_KINDS, {}, prov, cfg.image_size, 1,
                       cfg.samples_per_shard) as w:
        for i, kind in enumerate(order):
            key = f"general_G{i:06d}"
            irng = np.random.default_rng(derive_seed(cfg.seed, key))
            image, caption = render_corpus_image(irng, kind, cfg.image_size)
            meta = {"patient_id": f"G{i:06d}", "split": "train", "source": "phantom-general",
                    "class_name": kind}
            if kind in _TARGETS:
                meta["hospital_class"] = _TARGETS[kind][0]
            w.add("train", Sample(key, image, CORPUS_KINDS.index(kind), caption, meta))
            if pbar is not None:
                pbar.update(1)
    return out
