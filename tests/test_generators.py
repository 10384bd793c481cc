"""Interchangeable generators: every kind yields a valid synthetic dataset through one call."""
from __future__ import annotations

import numpy as np
import pytest

from medfake.engine.data.reader import DatasetInfo, load_split
from medfake.pipelines.generators import GENERATOR_KINDS, GeneratorSpec, make_synthetic_dataset
from medfake.engine.baselines.classic import ClassicAugment, classic_transform
from medfake.engine.diffusion.sd_model import init_model
from medfake.engine.data.kshot import kshot_subset

GAN_TRAIN = dict(image_size=16, g_features=8, d_features=8, latent_dim=16, steps=3, batch_size=8)
DB_TRAIN = dict(num_class_images=1, class_image_steps=2, steps=2, batch_size=2)


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    return str(init_model("micro", tmp_path_factory.mktemp("gen") / "micro", seed=0))


def _spec(kind: str, micro: str) -> dict:
    return {"diffusion": dict(kind=kind, model=micro, sample={"steps": 2}),
            "dreambooth": dict(kind=kind, model=micro, k=2, train=DB_TRAIN, sample={"steps": 2}),
            "dcgan": dict(kind=kind, k=2, train=GAN_TRAIN),
            "acgan": dict(kind=kind, k=2, train=GAN_TRAIN),
            "classic": dict(kind=kind, k=2)}[kind]


@pytest.mark.parametrize("kind", GENERATOR_KINDS)
def test_each_kind_yields_a_valid_dataset(kind, micro, small_world, tmp_path):
    _, hospital = small_world
    real = DatasetInfo.load(hospital)
    out = make_synthetic_dataset(_spec(kind, micro), hospital, per_class=2, seed=0,
                                 out_dir=tmp_path / "syn")
    info = DatasetInfo.load(out)
    assert info.class_names == real.class_names and info.channels == real.channels
    assert info.splits["train"]["per_class"] == {n: 2 for n in real.class_names}
    assert info.verify() == []
    arr = load_split(out, "train")
    assert arr.images.shape == (6, 32, 32) and arr.images.dtype == np.uint8
    assert [m["class_name"] for m in arr.metas] == [real.class_names[c] for c in arr.labels]
    assert all(m["source"] == "synthetic" and "seed" in m for m in arr.metas)
    expected = {"dreambooth": "diffusion"}.get(kind, kind)
    assert {m["generator"] for m in arr.metas} == {expected}
    stamp = (out / "train-000000.tar").stat().st_mtime_ns
    make_synthetic_dataset(_spec(kind, micro), hospital, 2, 0, tmp_path / "syn")  # resumes: no-op
    assert (out / "train-000000.tar").stat().st_mtime_ns == stamp
    _check_lineage(kind, out, hospital)


def _check_lineage(kind: str, out, hospital) -> None:
    """Each kind records what its generator learned from (the memorization audit's reference)."""
    from medfake.pipelines.lineage import dataset_lineage
    lin = dataset_lineage(out)
    by_role = {r.role: r for r in lin.references}
    real = str(hospital.resolve())
    if kind == "diffusion":  # a model medfake did not train: said, not guessed
        assert lin.references == () and "no medfake training record" in lin.unknown
        return
    if kind == "dreambooth":
        inst = by_role["DreamBooth instance (k-shot) images"]
        assert inst.dataset == real and len(inst.keys) == 6
        assert by_role["DreamBooth prior-preservation class images"].dataset.endswith(
            "class_images")
        assert "no medfake training record" in lin.unknown  # its base (micro) has none
        return
    (ref,) = lin.references
    assert ref.dataset == real and ref.split == "train" and lin.unknown is None
    assert 0 < len(ref.keys) <= 6  # k = 2 per class


def test_classic_augments_the_kshot_images_deterministically(small_world, tmp_path):
    _, hospital = small_world
    out = make_synthetic_dataset({"kind": "classic", "k": 3, "kshot_seed": 1}, hospital, 4, 0,
                                 tmp_path / "a")
    arr = load_split(out, "train")
    pool = kshot_subset(load_split(hospital, "train"), 3, 1)
    assert {m["source_key"] for m in arr.metas} == set(pool.keys)
    src = {k: img for k, img in zip(pool.keys, pool.images)}
    assert any(not np.array_equal(img, src[m["source_key"]]) for img, m in zip(arr.images, arr.metas))
    again = load_split(make_synthetic_dataset({"kind": "classic", "k": 3, "kshot_seed": 1},
                                              hospital, 4, 0, tmp_path / "b"), "train")
    assert np.array_equal(arr.images, again.images)
    img, params = classic_transform(pool.images[0], np.random.default_rng(0),
                                    ClassicAugment(hflip=False, vflip=False, rot90=False,
                                                   max_rotation=0, crop_pad=0, brightness=0,
                                                   contrast=0, gamma=0))
    assert np.abs(img.astype(int) - pool.images[0]).max() <= 1 and params["rot90"] == 0


def test_spec_errors_are_clear(small_world, tmp_path):
    _, hospital = small_world
    with pytest.raises(ValueError, match="unknown generator kind 'vae'"):
        GeneratorSpec(kind="vae")
    with pytest.raises(ValueError, match="unknown key"):
        GeneratorSpec.from_dict({"kind": "classic", "steps": 3})
    with pytest.raises(ValueError, match="needs model"):
        make_synthetic_dataset({"kind": "diffusion"}, hospital, 1, 0, tmp_path / "x")
