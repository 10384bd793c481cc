"""Safe loading: safetensors by default, pickles only with --trust-pickle (and then
weights_only=True, so a malicious pickle still cannot run code); unsafe tar members refused."""
from __future__ import annotations

import io
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from medfake.engine.core.errors import DatasetError
from medfake.engine.core.safe_load import (
    UnsafeWeightsError,
    load_weights_file,
    save_weights,
)
from medfake.engine.data.format import Sample
from medfake.engine.data.reader import SkipLog, iter_samples, iter_tar_samples
from medfake.engine.data.writer import write_shard
from medfake.engine.diffusion.sd_model import init_model, load_components
from safetensors.torch import load_file

WEIGHTS = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model",
           "text_encoder": "model"}


class _Evil:
    """Unpickling this touches a marker file (stands in for arbitrary code)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """(safetensors dir, the same model with only pickled .bin weights)."""
    root = tmp_path_factory.mktemp("models")
    safe = init_model("micro", root / "safe", seed=0)
    pickled = root / "pickled"
    shutil.copytree(safe, pickled)
    for comp, stem in WEIGHTS.items():
        st = pickled / comp / f"{stem}.safetensors"
        name = "pytorch_model.bin" if comp == "text_encoder" else f"{stem}.bin"
        torch.save(load_file(st), pickled / comp / name)
        st.unlink()
    return safe, pickled


def test_pickled_model_dir_needs_trust(model_dirs, monkeypatch):
    safe, pickled = model_dirs
    monkeypatch.delenv("MEDFAKE_TRUST_PICKLE", raising=False)
    with pytest.raises(UnsafeWeightsError, match="only pickled weights.*--trust-code"):
        load_components(pickled)
    trusted = load_components(pickled, trust_pickle=True)
    ref = load_components(safe)
    for a, b in zip(trusted.unet.state_dict().values(), ref.unet.state_dict().values()):
        assert torch.equal(a, b)
    monkeypatch.setenv("MEDFAKE_TRUST_PICKLE", "1")  # what the CLI's --trust-pickle sets
    assert load_components(pickled).text_encoder is not None


def test_safetensors_win_and_a_malicious_bin_never_runs(model_dirs, tmp_path, monkeypatch):
    safe, _ = model_dirs
    monkeypatch.delenv("MEDFAKE_TRUST_PICKLE", raising=False)
    d = tmp_path / "mixed"
    shutil.copytree(safe, d)
    marker = tmp_path / "pwned"
    torch.save({"w": _Evil(marker)}, d / "unet" / "diffusion_pytorch_model.bin")
    load_components(d)  # loads the safetensors, never opens the pickle
    assert not marker.exists()

    for suffix in (".bin", ".pt", ".ckpt"):
        evil = tmp_path / f"evil{suffix}"
        torch.save({"w": _Evil(marker)}, evil)
        with pytest.raises(UnsafeWeightsError, match="--trust-code"):
            load_weights_file(evil)
        with pytest.raises(Exception, match="[Ww]eights only load failed|Unsupported"):
            load_weights_file(evil, trust_pickle=True)  # weights_only=True refuses the object
        assert not marker.exists()


def test_clip_load_weights(tmp_path, monkeypatch):
    from medfake.engine.clip.model import create_clip, load_weights

    monkeypatch.delenv("MEDFAKE_TRUST_PICKLE", raising=False)
    model = create_clip("medfake-micro")[0]
    sd = {k: v + 1 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    save_weights(sd, tmp_path / "w.safetensors")
    torch.save({"state_dict": sd}, tmp_path / "old_run_model.pt")
    fresh = create_clip("medfake-micro")[0]
    load_weights(fresh, tmp_path / "w.safetensors")
    key = next(k for k, v in sd.items() if v.is_floating_point())
    assert torch.equal(fresh.state_dict()[key], sd[key])
    with pytest.raises(UnsafeWeightsError, match="pickled weights file"):
        load_weights(create_clip("medfake-micro")[0], tmp_path / "old_run_model.pt")
    other = create_clip("medfake-micro")[0]
    load_weights(other, tmp_path / "old_run_model.pt", trust_pickle=True)
    assert torch.equal(other.state_dict()[key], sd[key])
    monkeypatch.setenv("MEDFAKE_TRUST_PICKLE", "1")
    load_weights(create_clip("medfake-micro")[0], tmp_path / "old_run_model.pt")


def test_cli_trust_code_flag_and_deprecated_alias(monkeypatch, caplog):
    from medfake.pipelines.cli import build_parser
    from medfake.pipelines.cli.options import trust_code

    a = build_parser().parse_args(["synth", "--model", "m", "--real", "r", "--out", "o"])
    trust_code(a)
    assert "MEDFAKE_TRUST_CODE" not in os.environ
    for argv in (["synth", "--model", "m", "--real", "r", "--out", "o", "--trust-code"],
                 ["train", "clip", "--stage", "finetune", "--real", "r", "--init", "x.pt",
                  "--trust-pickle"],
                 ["eval", "quality", "--real", "r", "--synthetic", "s", "--out", "o",
                  "--trust-code"],
                 ["export", "clip", "ck", "--out", "o", "--trust-code"],
                 ["model", "convert", "x.ckpt", "--config", "c", "--out", "o", "--trust-pickle"]):
        monkeypatch.delenv("MEDFAKE_TRUST_CODE", raising=False)
        caplog.clear()
        trust_code(build_parser().parse_args(argv))
        assert os.environ["MEDFAKE_TRUST_CODE"] == "1"
        assert ("deprecated" in caplog.text) == ("--trust-pickle" in argv)
    monkeypatch.delenv("MEDFAKE_TRUST_CODE")
    monkeypatch.setenv("MEDFAKE_TRUST_PICKLE", "1")  # the old variable is still honoured
    from medfake.engine.core.trust import code_trusted
    assert code_trusted() and not code_trusted(False)


def _unsafe_member(kind: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo({"abs": "/tmp/x.png", "dotdot": "../x.png"}.get(kind, "x.png"))
    if kind == "symlink":
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    elif kind == "hardlink":
        info.type, info.linkname = tarfile.LNKTYPE, "a.png"
    elif kind == "chardev":
        info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    elif kind == "fifo":
        info.type = tarfile.FIFOTYPE
    elif kind == "dir":
        info.type = tarfile.DIRTYPE
    return info


@pytest.mark.parametrize("kind", ["abs", "dotdot", "symlink", "hardlink", "chardev", "fifo", "dir"])
def test_unsafe_tar_members_are_refused(tmp_path, kind):
    img = np.zeros((8, 8), dtype=np.uint8)
    write_shard(tmp_path, "train", 0, [Sample("a", img, 0, "t", {})], ["c"])
    shard = tmp_path / "train-000000.tar"
    with tarfile.open(shard, "a") as tar:
        info = _unsafe_member(kind)
        data = b"payload" if info.isfile() else b""
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data) if data else None)
        cls = tarfile.TarInfo(info.name.rsplit(".", 1)[0] + ".cls")  # make it look complete
        cls.size = 1
        tar.addfile(cls, io.BytesIO(b"0"))
    with pytest.raises(DatasetError, match="refusing"):
        list(iter_tar_samples(str(shard)))
    skips = SkipLog()
    good = list(iter_samples([shard], skips, summarize=False))
    assert [s.key for s in good] == ["a"] and skips.counts["unsafe_member"] == 1
    # nothing was extracted
    assert sorted(os.listdir(tmp_path)) == ["train-000000.json", "train-000000.tar"]
