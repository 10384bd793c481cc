"""What a synthetic dataset's generator learned from: the reference of its memorization audit.

A generator can only copy what it saw. The audit therefore compares each synthetic source with
the images behind it, read from the records medfake writes as it builds them:

- ``medfake synth`` (diffusion): ``synth_plan.json`` keeps the model dir and the real dataset
  (``lineage``, outside the job's identity). The model dir's own record names what it was
  trained on: ``medfake_train.json`` (the embedded generator: its corpus, split ``train``) or
  ``medfake_dreambooth.json`` (the k-shot instance images, the prior-preservation class images
  in ``class_images/``, and, recursively, whatever the base model learned from). Conditioned
  modes (inpaint, outpaint, inpaint-outpaint) add their source images: the real train split.
- GANs: ``gan.json`` holds the real dataset and the training keys.
- classic augmentation: ``dataset.json`` holds the real dataset and the images it transformed.

A model medfake did not train (a user's Stable Diffusion checkpoint) has no record: its
references are *unknown*; the caller says so and falls back to what it has (the real train
split), labelled as such, never silently.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.data.format import SplitArrays
from ..engine.data.reader import DatasetInfo, load_split

log = logging.getLogger(__name__)

TRAIN_MARKER = "medfake_train.json"          # pipelines.train_generator.MARKER
DREAMBOOTH_MARKER = "medfake_dreambooth.json"  # pipelines.dreambooth.MARKER
CLASS_IMAGES = "class_images"                # pipelines.dreambooth.CLASS_IMAGES
GAN_META = "gan.json"                        # pipelines.gan.META


@dataclass(frozen=True)
class Reference:
    """Images a generator learned from: ``keys`` of one split of a dataset (None: all of it)."""

    dataset: str
    split: str
    role: str
    keys: tuple[str, ...] | None = None

    def describe(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "split": self.split, "role": self.role,
                "images": "all" if self.keys is None else len(self.keys)}


@dataclass(frozen=True)
class Lineage:
    """The references of one synthetic dataset; ``unknown`` says why some are not recorded."""

    references: tuple[Reference, ...]
    unknown: str | None = None


def _abs(p: str | os.PathLike) -> str:
    return str(Path(p).resolve())


def model_references(model_dir: str | os.PathLike, _depth: int = 0) -> Lineage:
    """What the diffusion model in ``model_dir`` learned from, from medfake's training records."""
    d = Path(model_dir)
    if (d / TRAIN_MARKER).is_file():
        rec = json.loads((d / TRAIN_MARKER).read_text())
        return Lineage((Reference(_abs(rec["corpus"]), "train", "generator training corpus"),))
    if (d / DREAMBOOTH_MARKER).is_file() and _depth < 8:
        rec = json.loads((d / DREAMBOOTH_MARKER).read_text())
        refs: list[Reference] = []
        unknown = None
        real = rec.get("real_dataset")
        if real:
            refs.append(Reference(_abs(real), rec.get("split", "train"),
                                  "DreamBooth instance (k-shot) images",
                                  tuple(rec.get("instance_keys") or ())))
        else:
            unknown = f"{d}/{DREAMBOOTH_MARKER} does not name its real dataset (written before " \
                      f"medfake recorded it); re-run the fine-tune to record it"
        if (d / CLASS_IMAGES / "dataset.json").is_file():
            refs.append(Reference(_abs(d / CLASS_IMAGES), "train",
                                  "DreamBooth prior-preservation class images"))
        base = model_references(rec["base_model"], _depth + 1) if rec.get("base_model") else \
            Lineage((), "the DreamBooth record does not name its base model")
        return Lineage(tuple(refs) + base.references, unknown or base.unknown)
    return Lineage((), f"{d} has no medfake training record ({TRAIN_MARKER} or "
                       f"{DREAMBOOTH_MARKER}): it was not trained by medfake, so what it learned "
                       f"from is not known here")


def dataset_lineage(synthetic_dir: str | os.PathLike) -> Lineage:
    """The references of a synthetic dataset dir, from the records written while it was built."""
    d = Path(synthetic_dir)
    prov = DatasetInfo.load(d).provenance or {}
    gen = prov.get("generator")
    if gen == "diffusion":
        lin = prov.get("job", {}).get("lineage")
        if not lin:
            return Lineage((), f"{d}/synth_plan.json does not record its model dir (written "
                               f"before medfake recorded lineage)")
        out = model_references(lin["model_dir"])
        if lin.get("conditioned"):
            src = Reference(_abs(lin["real_dataset"]), "train",
                            f"source images of {lin.get('mode', 'conditioned')} synthesis")
            out = Lineage(out.references + (src,), out.unknown)
        return out
    if gen in ("dcgan", "acgan"):
        gan_dir = (prov.get("lineage") or {}).get("gan_dir")
        meta = json.loads((Path(gan_dir) / GAN_META).read_text()) if gan_dir and \
            (Path(gan_dir) / GAN_META).is_file() else None
        if not meta or not meta.get("real_dataset"):
            return Lineage((), f"{d}: the GAN's training data is not recorded (sampled before "
                               f"medfake recorded lineage, or its gan.json is gone)")
        return Lineage((Reference(_abs(meta["real_dataset"]), meta.get("split", "train"),
                                  f"{gen} training images", tuple(meta.get("train_keys") or ())),))
    if gen == "classic":
        lin = prov.get("lineage") or {}
        if not lin.get("real_dataset"):
            return Lineage((), f"{d}: the augmented images' source is not recorded")
        return Lineage((Reference(_abs(lin["real_dataset"]), "train",
                                  "source images of classic augmentation",
                                  tuple(lin["source_keys"]) if lin.get("source_keys") else None),))
    return Lineage((), f"{d}: generator {gen!r} records no training data")


def load_references(refs: tuple[Reference, ...] | list[Reference]) -> SplitArrays:
    """All reference images as one array (each dataset split read once; duplicates kept once).

    Images of another size or channel count than the first reference are resized/converted so
    the audit compares like with like; keys are prefixed with the dataset dir's name."""
    from PIL import Image

    by_split: dict[tuple[str, str], list[Reference]] = {}
    for r in refs:
        by_split.setdefault((r.dataset, r.split), []).append(r)
    images, labels, captions, keys, metas = [], [], [], [], []
    shape = None
    for (ds, split), rs in by_split.items():
        arr = load_split(ds, split, skip_bad=True)
        want = None if any(r.keys is None for r in rs) else {k for r in rs for k in r.keys or ()}
        idx = [i for i, k in enumerate(arr.keys) if want is None or k in want]
        if want is not None and len(idx) < len(want):
            log.warning("memorization reference %s/%s: %d of %d recorded keys found", ds, split,
                        len(idx), len(want))
        for i in idx:
            img = arr.images[i]
            if shape is None:
                shape = img.shape
            elif img.shape != shape:
                pil = Image.fromarray(img)
                pil = pil.convert("L" if len(shape) == 2 else "RGB")
                img = np.asarray(pil.resize((shape[1], shape[0]), Image.BILINEAR))
            images.append(img)
            labels.append(int(arr.labels[i]))
            captions.append(arr.captions[i])
            keys.append(f"{Path(ds).name}/{arr.keys[i]}")
            metas.append(arr.metas[i])
    if not images:
        raise ValueError("the memorization reference holds no images")
    return SplitArrays(np.stack(images), np.asarray(labels, dtype=np.int64), captions, keys, metas)
