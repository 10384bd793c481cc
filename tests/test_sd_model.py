"""Tiny Stable Diffusion presets, offline loading, and generator training (resume, cache)."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline
from PIL import Image
from safetensors.torch import load_file

from medfake.engine.data.writer import DatasetWriter
from medfake.engine.data.format import Sample
from medfake.engine.diffusion.sd_model import (ModelDirError, SDComponents, build_clip_tokenizer,
                                               init_model, list_presets, load_components,
                                               model_hash)
from medfake.pipelines import train_generator as tg
from medfake.pipelines.train_generator import (GeneratorTrainConfig, cached_generator,
                                               train_generator)
from medfake.engine.training.stop import TrainingStopped

CLASSES = ["cyst", "metastasis", "hemangioma"]
# Token ids of the SD 1.x CLIP tokenizer for this caption.
CYST_IDS = [49406, 320, 1122, 2867, 539, 320, 12639, 1470, 545, 49407]


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDFAKE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # Micro models gain little from a 2nd thread, and on a shared 2-core box two OpenMP
    # threads per process slow training down ~10x.
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """48 random captioned 32x32 images, each class with its own mean intensity."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    templates = {c: [f"a CT image of a liver {c}"] for c in CLASSES}
    with DatasetWriter(root, CLASSES, templates, {"test": True}, 32, 1, 20) as w:
        for i in range(48):
            c = i % 3
            img = np.clip(rng.normal(60 + 60 * c, 20, (32, 32)), 0, 255).astype(np.uint8)
            w.add("train", Sample(f"s{i:03d}", img, c, templates[CLASSES[c]][0]))
    return root


def test_presets_listed_and_unknown_rejected(tmp_path):
    assert {"micro", "tiny", "tiny-inpaint"} <= set(list_presets())
    with pytest.raises(ValueError, match="available: .*tiny"):
        init_model("huge", tmp_path / "m")


@pytest.mark.parametrize("preset", ["micro", "tiny", "tiny-inpaint"])
def test_init_model_loads_in_stock_pipeline(preset, tmp_path):
    d = init_model(preset, tmp_path / preset, seed=1)
    index = json.loads((d / "model_index.json").read_text())
    assert index["safety_checker"] == [None, None] and index["requires_safety_checker"] is False
    assert (d / "tokenizer" / "vocab.json").is_file() and (d / "tokenizer" / "merges.txt").is_file()
    kw = dict(num_inference_steps=2, height=32, width=32, output_type="np")
    if preset.endswith("inpaint"):
        pipe = StableDiffusionInpaintPipeline.from_pretrained(d, local_files_only=True)
        out = pipe("a CT image of a liver cyst", image=Image.new("RGB", (32, 32)),
                   mask_image=Image.new("L", (32, 32), 255), **kw)
    else:
        pipe = StableDiffusionPipeline.from_pretrained(d, local_files_only=True)
        out = pipe("a CT image of a liver cyst", **kw)
    assert out.images.shape == (1, 32, 32, 3) and np.isfinite(out.images).all()


def test_load_components_roundtrip_and_hash(tmp_path):
    d = init_model("micro", tmp_path / "m")
    comp = load_components(d)
    assert isinstance(comp, SDComponents) and comp.model_dir == d
    saved = load_file(d / "unet" / "diffusion_pytorch_model.safetensors")
    for k, v in comp.unet.state_dict().items():
        assert torch.equal(v, saved[k])
    h = model_hash(d)
    assert h == model_hash(d) and len(h) == 64
    cfg = d / "scheduler" / "scheduler_config.json"
    cfg.write_text(cfg.read_text().replace('"beta_end": 0.012', '"beta_end": 0.013'))
    assert model_hash(d) != h


def test_load_components_errors_name_the_fix(tmp_path):
    with pytest.raises(ModelDirError, match="does not exist"):
        load_components(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelDirError, match="no model_index.json"):
        load_components(tmp_path / "empty")
    d = init_model("micro", tmp_path / "m")
    shutil.rmtree(d / "vae")
    with pytest.raises(ModelDirError, match="lacks component folder.*vae"):
        load_components(d)
    assert issubclass(ModelDirError, ValueError)


def test_tokenizer_offline(tmp_path):
    tok = build_clip_tokenizer(32)
    assert tok("a CT image of a liver cyst").input_ids == CYST_IDS
    d = init_model("micro", tmp_path / "m")
    # The classic slow-tokenizer files alone reproduce the same ids.
    (d / "tokenizer" / "tokenizer.json").unlink()
    comp = load_components(d)
    ids = comp.tokenizer("a CT image of a liver cyst", padding="max_length",
                         max_length=comp.tokenizer.model_max_length).input_ids
    assert ids[:len(CYST_IDS)] == CYST_IDS and len(ids) == 32


def test_train_resume_matches_uninterrupted_and_cache(corpus, tmp_path, monkeypatch):
    cfg = GeneratorTrainConfig.profile("test")
    out = tmp_path / "gen"
    # Killed in the UNet stage 5 steps after its checkpoint at step 20.
    with pytest.raises(TrainingStopped):
        train_generator(corpus, out, cfg, stop_after=cfg.vae_steps + 25)
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert (ckpt["stage"], ckpt["step"]) == ("unet", 20)
    assert not (out / "model_index.json").exists()
    with pytest.raises(ValueError, match="different config"):
        train_generator(corpus, out, GeneratorTrainConfig.profile("test", seed=1))
    resumed = train_generator(corpus, out, cfg)
    info = json.loads((resumed / "medfake_train.json").read_text())
    assert info["complete"] and not (out / "checkpoint.pt").exists()
    assert np.isfinite(info["final_unet_loss"]) and info["scaling_factor"] > 0

    cached = cached_generator(corpus, cfg)  # trains uninterrupted, in the cache
    assert cached.parent.name == "generators" and not list(cached.parent.glob(".*partial"))
    for comp in ("unet", "vae"):
        a = load_file(resumed / comp / "diffusion_pytorch_model.safetensors")
        b = load_file(cached / comp / "diffusion_pytorch_model.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a), f"{comp} differs after resume"

    monkeypatch.setattr(tg, "train_generator", lambda *a, **k: pytest.fail("retrained"))
    assert cached_generator(corpus, cfg) == cached
    pipe = StableDiffusionPipeline.from_pretrained(cached, local_files_only=True)
    assert pipe.vae.config.scaling_factor == pytest.approx(info["scaling_factor"])
    img = pipe("a CT image of a liver cyst", num_inference_steps=2, output_type="np").images
    assert img.shape == (1, 32, 32, 3)
    assert os.environ["MEDFAKE_CACHE"] in str(cached)
