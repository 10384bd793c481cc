"""DCGAN / ACGAN: a few training steps, valid shards with provenance, same key -> same image,
resumable sampling and training."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medfake.engine.data.reader import DatasetInfo, load_split
from medfake.engine.baselines.gan import Discriminator, GANArch, Generator
from medfake.pipelines.gan import (GANSampleConfig, GANTrainConfig, TrainingStopped, sample_gan,
                                   train_gan)
from medfake.engine.synth.plan import PlanMismatchError


@pytest.mark.parametrize("size", [32, 64])
def test_networks_have_the_paper_shapes(size):
    arch = GANArch("acgan", image_size=size, channels=3, latent_dim=100, n_classes=3,
                   g_features=8, d_features=8)
    x = Generator(arch).eval()(torch.randn(2, 100), torch.tensor([0, 2]))
    assert x.shape == (2, 3, size, size) and x.abs().max() <= 1
    src, cls = Discriminator(arch)(x)
    assert src.shape == (2,) and cls.shape == (2, 3)
    with pytest.raises(ValueError, match="power of two"):
        GANArch(image_size=48)


@pytest.mark.parametrize("kind", ["dcgan", "acgan"])
def test_gan_trains_and_samples_valid_deterministic_shards(kind, small_world, tmp_path):
    _, hospital = small_world
    names = DatasetInfo.load(hospital).class_names
    out = train_gan(hospital, tmp_path / "gan", GANTrainConfig.profile("test", kind=kind, k=3))
    meta = json.loads((out / "gan.json").read_text())
    assert meta["complete"] and len(meta["units"]) == (3 if kind == "dcgan" else 1)
    assert all((out / "grids" / f"{n}_step000006.png").is_file() for n in names)
    assert len(meta["train_keys"]) == 9

    def sample(name: str, **kw):
        cfg = dict(gan_dir=str(out), real_dataset=str(hospital), out_dir=str(tmp_path / name),
                   per_class=3, samples_per_shard=4, batch_size=4)
        return sample_gan(GANSampleConfig(**{**cfg, **kw}))

    s1 = sample("s1")
    info = DatasetInfo.load(s1)
    assert info.verify() == [] and info.count("train") == 9 and info.channels == 1
    assert info.splits["train"]["per_class"] == {n: 3 for n in names}
    a = load_split(s1, "train")
    assert a.images.shape == (9, 32, 32) and a.images.dtype == np.uint8  # 16x16 GAN, resized
    assert a.images.std() > 0
    for m in a.metas:
        assert m["generator"] == kind and m["source"] == "synthetic"
        assert len(m["checkpoint_hash"]) == 64 and m["class_name"] in names and "seed" in m

    b = load_split(sample("s2"), "train")  # same key -> same image
    assert a.keys == b.keys and np.array_equal(a.images, b.images)
    c = load_split(sample("s3", seed=1), "train")
    assert not np.array_equal(a.images, c.images)

    shard = s1 / "train-000001.tar"
    original, untouched = shard.read_bytes(), (s1 / "train-000000.tar").stat().st_mtime_ns
    shard.unlink()
    sample("s1")
    assert shard.read_bytes() == original
    assert (s1 / "train-000000.tar").stat().st_mtime_ns == untouched
    with pytest.raises(PlanMismatchError, match="per_class"):
        sample("s1", per_class=4)


def test_gan_training_resumes_after_kill(small_world, tmp_path):
    _, hospital = small_world
    cfg = GANTrainConfig.profile("test", kind="dcgan", k=3, steps=5)
    ref = train_gan(hospital, tmp_path / "ref", cfg)
    run = tmp_path / "run"
    with pytest.raises(TrainingStopped):  # class 0 finishes (5 steps), class 1 stops at step 3
        train_gan(hospital, run, cfg, stop_after=8)
    assert (run / "generator_0.safetensors").is_file() and not (run / "gan.json").exists()
    assert torch.load(run / "checkpoint_1.pt", weights_only=True)["step"] == 2
    train_gan(hospital, run, cfg)
    for i in range(3):
        name = f"generator_{i}.safetensors"
        assert (ref / name).read_bytes() == (run / name).read_bytes(), name
    assert not list(run.glob("checkpoint_*.pt"))
    with pytest.raises(ValueError, match=r"different parameters \(lr_g\)"):
        train_gan(hospital, run, GANTrainConfig.profile("test", kind="dcgan", k=3, steps=5,
                                                        lr_g=1e-3))
