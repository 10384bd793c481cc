"""The phantom world: deterministic, patient-disjoint splits, balanced test, distinct domains."""
from __future__ import annotations

import numpy as np

from medfake.engine.data.reader import DatasetInfo, load_split
from medfake.engine.data.phantoms import CLASS_NAMES, PhantomConfig, make_phantom_world


def test_splits_are_patient_disjoint_and_balanced(small_world):
    public, hospital = small_world
    info = DatasetInfo.load(hospital)
    assert info.class_names == CLASS_NAMES
    assert info.splits["test"]["per_class"] == {c: 10 for c in CLASS_NAMES}
    patients = {s: {m["patient_id"] for m in load_split(hospital, s).metas}
                for s in ("train", "val", "test")}
    assert not patients["train"] & patients["test"]
    assert not patients["train"] & patients["val"]
    assert not patients["val"] & patients["test"]
    pub = load_split(public, "train")
    assert len(pub) == 120 and set(pub.captions) > {"a CT image of a liver cyst"}
    assert not {m["patient_id"] for m in pub.metas} & patients["train"]


def test_deterministic(tmp_path):
    cfg = PhantomConfig(n_public_per_class=3, n_train_per_class=3, n_val_per_class=1,
                        n_test_per_class=2, seed=7)
    a = make_phantom_world(tmp_path / "a", cfg)[1]
    b = make_phantom_world(tmp_path / "b", cfg)[1]
    assert DatasetInfo.load(a).splits == DatasetInfo.load(b).splits  # same sha256 per shard


def test_classes_and_domains_differ_as_designed(small_world):
    public, hospital = small_world
    h, p = load_split(hospital, "train"), load_split(public, "train")
    centre = h.images[:, 10:22, 10:22].mean(axis=(1, 2))
    border = np.concatenate([h.images[:, :3].reshape(len(h), -1),
                             h.images[:, -3:].reshape(len(h), -1)], 1).mean(1)
    assert (centre < border).mean() > 0.9, "lesions are hypodense relative to parenchyma"
    # enhancing periphery: metastasis/hemangioma have brighter maxima than cysts
    peak = h.images.reshape(len(h), -1).max(1)
    assert peak[h.labels == 1].mean() > peak[h.labels == 0].mean()
    # public domain is noisier (pixel-to-pixel differences larger)
    rough = lambda a: np.abs(np.diff(a.images.astype(float), axis=2)).mean()
    assert rough(p) > rough(h)


def test_image_size_is_configurable(tmp_path):
    cfg = PhantomConfig(image_size=64, n_public_per_class=1, n_train_per_class=1,
                        n_val_per_class=1, n_test_per_class=1)
    _, hospital = make_phantom_world(tmp_path, cfg)
    assert load_split(hospital, "test").images.shape[1:] == (64, 64)
