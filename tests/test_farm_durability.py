"""Durability at farm scale: directory fsync on publish, the CLIP ``latest`` pointer, model
hashes cached outside the user's model directory."""
from __future__ import annotations

import os
import stat

import pytest
from medfake.engine.core import atomic
from medfake.engine.core.errors import DatasetError


def test_every_publish_fsyncs_its_directory(tmp_path, monkeypatch):
    from medfake.engine.synth import files
    synced: list[str] = []
    real = os.fsync

    def spy(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    atomic.atomic_write_bytes(tmp_path / "a.json", b"{}")
    files.create_once(tmp_path / "b.json", b"1")
    files.replace_if_different(tmp_path / "c.json", b"2")
    tmp = tmp_path / ".d.tmp"
    tmp.write_bytes(b"3")
    assert atomic.publish_no_replace(tmp, tmp_path / "d") and not tmp.exists()
    tmp.write_bytes(b"4")
    assert not atomic.publish_no_replace(tmp, tmp_path / "d")      # never replaces
    assert (tmp_path / "d").read_bytes() == b"3"
    assert synced == [str(tmp_path)] * 4


def test_latest_pointer_is_atomic_and_a_corrupt_one_is_one_clear_error(tmp_path):
    from medfake.engine.clip.engine import CheckpointDir
    ckpt = CheckpointDir(tmp_path)
    assert ckpt.latest() is None
    (tmp_path / "step00000002").mkdir()
    ckpt.commit("step00000002", keep=2)
    assert (tmp_path / "latest").read_text() == "step00000002"
    assert ckpt.latest() == "step00000002" and sorted(os.listdir(tmp_path)) == [
        "latest", "step00000002"]
    for bad in (b"", b"\n", b"../x", b"\xff\xfe"):
        (tmp_path / "latest").write_bytes(bad)
        with pytest.raises(DatasetError, match=r"latest is empty or corrupt .*\(the newest is "
                                               r"step00000002"):
            ckpt.latest()


def test_model_hash_is_cached_outside_the_model_dir(tmp_path, monkeypatch):
    from medfake.engine.diffusion.sd_model import COMPONENTS, model_hash
    monkeypatch.setenv("MEDFAKE_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "model"
    for c in COMPONENTS:
        (model / c).mkdir(parents=True)
        (model / c / "config.json").write_text(f'{{"{c}": 1}}')
    (model / "model_index.json").write_text("{}")
    before = sorted(p.relative_to(model) for p in model.rglob("*"))
    model.chmod(0o555)                                      # a read-only, shared model dir
    try:
        h = model_hash(model)
        assert sorted(p.relative_to(model) for p in model.rglob("*")) == before
        cached = list((tmp_path / "cache" / "model_hash").glob("*.json"))
        assert len(cached) == 1 and h in cached[0].read_text()
        assert model_hash(model) == h
        os.utime(model / "unet" / "config.json", ns=(1, 1))   # any change invalidates it
        (tmp_path / "cache" / "model_hash" / cached[0].name).write_text(
            cached[0].read_text().replace(h, "0" * 64))
        assert model_hash(model) == h
    finally:
        model.chmod(0o755)
