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


def _hold_lock(path, seconds: float):
    """A child process that holds ``path``'s flock (a live writer's temporary) for ``seconds``."""
    import subprocess
    import sys
    code = ("import fcntl, sys, time; f = open(sys.argv[1], 'wb'); "
            "fcntl.flock(f.fileno(), fcntl.LOCK_EX); print('held', flush=True); "
            "time.sleep(float(sys.argv[2]))")
    p = subprocess.Popen([sys.executable, "-c", code, str(path), str(seconds)],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_duplicate_launch_waits_for_the_live_writer_and_returns_the_complete_dataset(
        micro, small_world, tmp_path):
    """A second process of the same job skips the shard a live process is writing; it must not
    return a dataset without dataset.json (bench/routes.py crashed on that): it waits for the
    writer, then finishes the job itself (here the writer dies without finishing)."""
    import time
    _, hospital = small_world
    out = tmp_path / "syn"
    out.mkdir()
    holder = _hold_lock(out / ".train-000000.tar.tmp-elsewhere", 2.0)
    t0 = time.time()
    got = make_synthetic_dataset(_spec("diffusion", micro), hospital, per_class=2, seed=0,
                                 out_dir=out)
    assert time.time() - t0 >= 1.5, "returned before the live writer was done"
    holder.wait()
    info = DatasetInfo.load(got)
    assert info.verify() == []
    assert info.splits["train"]["per_class"] == {n: 2 for n in info.class_names}


def test_until_complete_waits_rebuilds_and_refuses_without_a_writer(tmp_path):
    from medfake.pipelines.generators import until_complete
    out = tmp_path / "d"
    out.mkdir()
    calls = []

    def build_after_writer():
        calls.append(1)
        if len(calls) == 2:
            (out / "dataset.json").write_text("{}")
        return out

    holder = _hold_lock(out / ".train-000001.tar.tmp-other", 1.0)
    assert until_complete(out, build_after_writer, poll_s=0.1) == out
    holder.wait()
    assert len(calls) == 2

    never = tmp_path / "never"
    never.mkdir()
    calls.clear()
    with pytest.raises(RuntimeError, match="--finalize"):
        until_complete(never, lambda: calls.append(1) or never, poll_s=0.1)
    assert len(calls) == 2   # one more build in case a writer finished just then, no more
